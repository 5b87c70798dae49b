"""The DNS layer: zone files answer offline, the live resolver maps DNS states to typed errors."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from edrules.auth.resolver import (
    DnsPythonResolver,
    NXDomain,
    PermError,
    Resolver,
    TempError,
    ZoneResolver,
    default_resolver,
)
from edrules.errors import EdrulesError

ZONES = Path(__file__).parent / "zones"

ZONE = """\
$ORIGIN example.com.
@             IN MX  10 mx.example.com.
@             IN TXT "v=spf1 mx -all"
mx            IN A   192.0.2.1
mx            IN AAAA 2001:db8::1
www           IN CNAME mx
loop1         IN CNAME loop2
loop2         IN CNAME loop1
*.wild        IN TXT "wild" "card"
deep.a.b      IN A   192.0.2.9
$ORIGIN example.org.
@             IN TXT "second zone"
1.2.0.192.in-addr.arpa. IN PTR mx.example.com.
"""


@pytest.fixture(autouse=True)
def _no_live_dns(monkeypatch):
    monkeypatch.setenv("EDRULES_DNS", "offline")


@pytest.fixture(scope="module")
def zone() -> ZoneResolver:
    return ZoneResolver.from_text(ZONE)


def test_zone_resolver_answers_every_record_type_across_origins(zone):
    assert isinstance(zone, Resolver)
    assert zone.txt("example.com") == ["v=spf1 mx -all"]
    assert zone.mx("EXAMPLE.com.") == [(10, "mx.example.com")]
    assert zone.a("mx.example.com") == ["192.0.2.1"]
    assert zone.aaaa("mx.example.com") == ["2001:db8::1"]
    assert zone.ptr("192.0.2.1") == ["mx.example.com"]
    assert zone.txt("example.org") == ["second zone"]


def test_zone_resolver_raises_nxdomain_for_names_it_does_not_hold_instead_of_asking_the_network(zone):
    with pytest.raises(NXDomain):
        zone.txt("gmail.com")
    with pytest.raises(NXDomain):
        zone.a("nothing.example.com")


def test_existing_name_without_the_type_and_empty_non_terminal_are_nodata(zone):
    assert zone.a("example.org") == []
    assert zone.a("a.b.example.com") == []  # only deep.a.b exists below it


def test_cnames_are_followed_and_loops_are_a_permanent_error(zone):
    assert zone.a("www.example.com") == ["192.0.2.1"]
    with pytest.raises(PermError):
        zone.a("loop1.example.com")


def test_wildcards_answer_names_below_them_with_joined_strings(zone):
    assert zone.txt("anything.wild.example.com") == ["wildcard"]


def test_tempfail_names_raise_temperror_for_types_they_do_not_hold():
    z = ZoneResolver.from_text(ZONE, tempfail=[("example.com", "*")])
    with pytest.raises(TempError):
        z.a("example.com")
    assert z.txt("example.com") == ["v=spf1 mx -all"]


def test_several_zone_files_load_into_one_resolver(tmp_path):
    a = tmp_path / "a.zone"
    a.write_text("$ORIGIN a.test.\n@ IN A 192.0.2.1\n")
    b = tmp_path / "b.zone"
    b.write_text("$ORIGIN b.test.\n@ IN A 192.0.2.2\n")
    z = ZoneResolver.from_file(a, b)
    assert z.a("a.test") == ["192.0.2.1"] and z.a("b.test") == ["192.0.2.2"]


def test_a_bad_zone_file_is_an_edrules_error_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.zone"
    bad.write_text("$ORIGIN x.test.\nok IN A 192.0.2.1\nbroken IN TXT \"unterminated\n")
    with pytest.raises(EdrulesError) as err:
        ZoneResolver.from_file(bad)
    assert err.value.location.file == str(bad)
    assert err.value.location.line == 3
    assert "bad.zone:3" in str(err.value)


def test_a_missing_zone_file_is_an_edrules_error(tmp_path):
    with pytest.raises(EdrulesError, match="cannot read zone file"):
        ZoneResolver.from_file(tmp_path / "absent.zone")


def test_live_dns_is_refused_when_edrules_dns_is_offline():
    with pytest.raises(EdrulesError, match="EDRULES_DNS=offline"):
        default_resolver()
    with pytest.raises(EdrulesError, match="EDRULES_DNS=offline"):
        DnsPythonResolver()


# -- the production resolver against a real DNS server on loopback -------------------------


class _LoopbackDns:
    """A tiny authoritative server on 127.0.0.1 serving a ZoneResolver's data over UDP.
    `servfail.test` answers SERVFAIL and `silent.test` never answers (a timeout)."""

    def __init__(self, zone: ZoneResolver):
        self.zone = zone
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            query = dns.message.from_wire(data)
            q = query.question[0]
            name = q.name.to_text(omit_final_dot=True).lower()
            if name.endswith("silent.test"):
                continue
            resp = dns.message.make_response(query)
            resp.flags |= dns.flags.AA
            if name.endswith("servfail.test"):
                resp.set_rcode(dns.rcode.SERVFAIL)
            else:
                node = self.zone._node(name)
                if node is None:
                    resp.set_rcode(dns.rcode.NXDOMAIN)
                else:
                    rdatas = node.get(dns.rdatatype.to_text(q.rdtype), [])
                    if rdatas:
                        resp.answer.append(dns.rrset.from_rdata_list(q.name, 60, rdatas))
            self.sock.sendto(resp.to_wire(), addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def loopback(monkeypatch, zone):
    monkeypatch.delenv("EDRULES_DNS")
    server = _LoopbackDns(zone)
    yield server
    server.close()


def _live(server: _LoopbackDns) -> DnsPythonResolver:
    r = DnsPythonResolver(timeout=0.3, lifetime=0.6, nameservers=["127.0.0.1"])
    r._resolver.port = server.port
    r._resolver.cache = None  # each test sees the server's current answer
    return r


def test_live_resolver_maps_answers_nodata_and_nxdomain(loopback):
    r = _live(loopback)
    assert r.txt("example.com") == ["v=spf1 mx -all"]
    assert r.mx("example.com") == [(10, "mx.example.com")]
    assert r.a("example.org") == []
    with pytest.raises(NXDomain):
        r.a("nope.example.net")


def test_live_resolver_maps_servfail_and_timeouts_to_temperror(loopback):
    r = _live(loopback)
    with pytest.raises(TempError):
        r.txt("servfail.test")
    with pytest.raises(TempError):
        r.txt("silent.test")


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edrules.auth.resolver import DnsError  # noqa: E402


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=300))
def test_any_name_gives_records_or_a_typed_dns_error(zone, name):
    for lookup in (zone.txt, zone.a, zone.aaaa, zone.mx, zone.ptr):
        try:
            assert isinstance(lookup(name), list)
        except DnsError:
            pass


# -- ordinary zone files (issue 8 item 7) ------------------------------------------------------

BIND_ZONE = """\
$ORIGIN example.com.
$TTL 3600
@       IN SOA  ns1.example.com. hostmaster.example.com. (
                2026010101 ; serial
                7200 3600 1209600 3600 )
        IN NS   ns1
        IN MX   10 mail
ns1     IN A    192.0.2.1
mail    IN A    192.0.2.2
@       IN TXT  "v=spf1 mx -all"
_dmarc  IN TXT  "v=DMARC1; p=reject; rua=mailto:d@example.com"
$ORIGIN example.net.
@       IN SOA  ns1.example.com. hostmaster.example.com. 1 2 3 4 5
@       IN TXT  "second zone with its own SOA"
"""


def test_an_ordinary_bind_zone_file_with_origin_and_an_soa_at_the_apex_loads(tmp_path):
    """dnspython's Zone rejected it ("non-origin SOA") because edrules' origin is the root."""
    path = tmp_path / "example.com.zone"
    path.write_text(BIND_ZONE)
    zone = ZoneResolver.from_file(path)
    assert zone.mx("example.com") == [(10, "mail.example.com")]
    assert zone.txt("_dmarc.example.com") == ["v=DMARC1; p=reject; rua=mailto:d@example.com"]
    assert zone.txt("example.net") == ["second zone with its own SOA"]
    assert zone.a("mail.example.com") == ["192.0.2.2"]


def test_a_binary_zone_file_is_a_located_one_line_error(tmp_path):
    path = tmp_path / "binary.zone"
    path.write_bytes(b"example.com. IN TXT \"ok\"\n\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(EdrulesError) as err:
        ZoneResolver.from_file(path)
    assert str(err.value) == f"bad zone file: not UTF-8 text (byte 25 is 0x89) in {path}:2"
    nul = tmp_path / "nul.zone"
    nul.write_bytes(b"; fine\n\x00\x01\x02")
    with pytest.raises(EdrulesError, match=r"binary data .* in .*nul.zone:2$"):
        ZoneResolver.from_file(nul)


def test_a_fifo_or_device_is_refused_instead_of_read_forever(tmp_path):
    import os

    fifo = tmp_path / "pipe.zone"
    os.mkfifo(fifo)
    with pytest.raises(EdrulesError, match="not a regular file"):
        ZoneResolver.from_file(fifo)
    with pytest.raises(EdrulesError, match="not a regular file"):
        ZoneResolver.from_file("/dev/zero")


def test_include_directives_are_refused_with_the_line(tmp_path):
    path = tmp_path / "inc.zone"
    path.write_text("$ORIGIN example.com.\n$INCLUDE /etc/hostname\n")
    with pytest.raises(EdrulesError, match=r"inc.zone:2$"):
        ZoneResolver.from_file(path)

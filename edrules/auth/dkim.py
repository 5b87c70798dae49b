"""DKIM verification and signing (RFC 6376, RFC 8463 Ed25519) through dkimpy and a Resolver."""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from functools import lru_cache

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from edrules.auth.resolver import DnsError, NXDomain, PermError, Resolver, TempError, txt_to_bytes
from edrules.domains import normalize_domain, org_domain
from edrules.errors import EdrulesError
from edrules.facts import AuthResult

# RFC 8301: verifiers MUST NOT accept RSA keys shorter than 1024 bits.
MIN_RSA_BITS = 1024

_quiet = logging.getLogger("edrules.auth.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


@dataclass(frozen=True, slots=True)
class DkimOutcome:
    """One DKIM-Signature's result, in the words of RFC 8601."""

    d: str | None
    s: str | None
    result: AuthResult
    reason: str
    algorithm: str | None = None
    key_bits: int | None = None
    i: str | None = None
    b: str | None = None  # first 8 characters of b=, to tell signatures apart (RFC 6008)

    @property
    def org(self) -> str | None:
        return org_domain(self.d)


class _KeyProblem(Exception):
    """Raised out of dkimpy's dnsfunc so missing/broken keys are not reported as a bad signature."""

    def __init__(self, result: AuthResult, reason: str):
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A parsed DKIM key record (what dns-check reports, and what verification uses)."""

    name: str
    text: str
    key_type: str  # 'rsa' | 'ed25519' | other as published
    bits: int | None
    testing: bool
    revoked: bool
    problem: str | None  # why the record is unusable, None if usable
    strict: bool = False  # t=s: i= must use exactly the d= domain (RFC 6376 3.6.1)
    services: tuple[str, ...] = ("*",)  # s= as published (RFC 6376 3.6.1)
    hashes: tuple[str, ...] | None = None  # h= as published; None: all hash algorithms
    public_key: bytes = b""  # p= without white space (base64)

    def for_dkimpy(self) -> bytes:
        """The record as dkimpy should see it: only the tags it reads, values already checked.

        dkimpy compares s= to one service name and, for any other (`email:web`, `web`), hands
        verification a key of None, which raised AttributeError from verify_dkim(): the record
        is the sender's to write, so edrules applies s=, h= and t= itself (RFC 6376 3.6.1)."""
        return b"v=DKIM1; k=" + self.key_type.encode() + b"; p=" + self.public_key


def _flags(tags: dict[bytes, bytes], name: bytes) -> tuple[str, ...]:
    raw = tags.get(name, b"").decode("ascii", "replace")
    return tuple(f.strip().lower() for f in raw.split(":") if f.strip())


@lru_cache(maxsize=4096)
def parse_key_record(name: str, text: str) -> KeyRecord:
    """Parse `v=DKIM1; k=...; p=...` with dkimpy's own parser, plus key size and flags.

    Never raises: the record is written by whoever controls the signing domain, so every
    problem (RFC 6376 3.6.1) is a `problem` value that makes the signature permerror.
    Cached: a gateway sees the same few thousand keys all day, and RSA key parsing is a
    third of a verification's cost."""
    raw = txt_to_bytes(text)
    tags: dict[bytes, bytes] = {}
    try:
        tags = dkimpy.util.parse_tag_value(raw)
    except dkimpy.util.InvalidTagValueList as exc:
        return KeyRecord(name, text, "?", None, False, False, f"malformed key record: {exc}")
    key_type = tags.get(b"k", b"rsa").decode("ascii", "replace").strip().lower()
    flags = _flags(tags, b"t")
    testing, strict = "y" in flags, "s" in flags
    services = _flags(tags, b"s") if b"s" in tags else ("*",)
    hashes = _flags(tags, b"h") if b"h" in tags else None
    p = re.sub(rb"\s+", b"", tags.get(b"p", b""))

    def bad(problem: str, revoked: bool = False) -> KeyRecord:
        return KeyRecord(name, text, key_type, None, testing, revoked, problem, strict, services, hashes, p)

    if b"v" in tags and tags[b"v"].strip() != b"DKIM1":
        # RFC 6376 3.6.1: records with any other v= value MUST be discarded.
        return bad(f"not a DKIM1 key record (v={tags[b'v'].decode('ascii', 'replace')})")
    if not {"email", "*"} & set(services):
        # RFC 6376 3.6.1: unknown service types are ignored; without email or * the key is
        # not for email, and a signature made with it cannot verify.
        return bad(f"key is not for email (s={':'.join(services) or '(empty)'}; RFC 6376 3.6.1)")
    if b"p" not in tags:
        return bad("bad key record: no p= tag")
    if not p:
        return bad("key revoked (empty p=)", revoked=True)
    if key_type not in ("rsa", "ed25519"):
        return bad(f"bad key record: unknown key type k={key_type}")
    probe = b"v=DKIM1; k=" + key_type.encode() + b"; p=" + p
    try:
        _pk, bits, ktag, _tls = dkimpy.evaluate_pk(name.encode(), probe)
    except Exception as exc:  # noqa: BLE001 - sender-written key bytes reach asn1/nacl parsers,
        # whose failures are not all DKIMException; each one means "unusable key", never a crash.
        return bad(f"bad key record: {exc or type(exc).__name__}")
    if ktag == b"ed25519":
        bits = 256
    return KeyRecord(name, text, ktag.decode(), bits, testing, False, None, strict, services, hashes, p)


def usable_key(qname: str, records: list[str]) -> KeyRecord | str:
    """The key record dkimpy may use at `qname`, or why there is none.

    RFC 6376 3.6.2.2: several records are undefined; the first usable one is taken."""
    if not records:
        return f"no key published at {qname}"
    keys = [parse_key_record(qname, text) for text in records]
    for key in keys:
        if key.problem is None:
            return key
    return keys[0].problem or "bad key"


def _dnsfunc(resolver: Resolver, seen: dict):
    """dkimpy's `dnsfunc` backed by the Resolver, turning DNS states into DKIM results.

    The key used is left in `seen["key"]` so the caller can apply its t= and h= tags."""

    def lookup(name: bytes, timeout: float = 5) -> bytes:
        qname = name.decode("ascii", "replace").rstrip(".")
        try:
            records = resolver.txt(qname)
        except NXDomain:
            raise _KeyProblem(AuthResult.PERMERROR, f"no key published at {qname}") from None
        except PermError as exc:
            raise _KeyProblem(AuthResult.PERMERROR, f"key lookup failed: {exc}") from None
        except (TempError, DnsError) as exc:
            raise _KeyProblem(AuthResult.TEMPERROR, f"key lookup failed: {exc}") from None
        key = usable_key(qname, records)
        if isinstance(key, str):
            raise _KeyProblem(AuthResult.PERMERROR, key)
        seen["key"] = key
        return key.for_dkimpy()

    return lookup


def _tag(sig: dict, name: bytes) -> str | None:
    v = sig.get(name)
    return re.sub(r"\s+", "", v.decode("ascii", "replace")) if v is not None else None


def verify_dkim(message: bytes, resolver: Resolver) -> list[DkimOutcome]:
    """Verify every DKIM-Signature, top to bottom. A message without any gives []."""
    if b"dkim-signature" not in message[:header_end(message)].lower():
        return []  # cheap exit, and unsigned mail with a broken header block is not a DKIM error
    try:
        d = dkimpy.DKIM(message, logger=_quiet, minkey=MIN_RSA_BITS)
    except (dkimpy.MessageFormatError, IndexError) as exc:
        # IndexError: dkimpy's parser on a header block that starts with a continuation line
        return [DkimOutcome(None, None, AuthResult.PERMERROR, f"unparsable message header: {exc}")]
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    return [_verify_one(d, idx, resolver) for idx in range(count)]


def header_end(message: bytes) -> int:
    """Offset of the blank line ending the header block (CRLF or LF), or len(message)."""
    ends = [i for i in (message.find(b"\r\n\r\n"), message.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else len(message)


# RFC 8301 3.1: rsa-sha1 MUST NOT be used for signing or verifying.
_REFUSED_ALGORITHMS = {"rsa-sha1": "rsa-sha1 is not accepted (RFC 8301 3.1: verifiers MUST NOT use it)"}


def _verify_one(d: dkimpy.DKIM, idx: int, resolver: Resolver) -> DkimOutcome:
    sig: dict = {}
    raw = [v for n, v in d.headers if n.lower() == b"dkim-signature"][idx]
    try:
        sig = dkimpy.util.parse_tag_value(raw)
    except dkimpy.util.InvalidTagValueList:
        pass
    dom = normalize_domain(_tag(sig, b"d"))
    sel = _tag(sig, b"s")
    alg = _tag(sig, b"a")
    ident = _tag(sig, b"i")
    b8 = (_tag(sig, b"b") or "")[:8] or None

    def out(result: AuthResult, reason: str) -> DkimOutcome:
        return DkimOutcome(dom, sel, result, reason, alg, getattr(d, "keysize", None), ident, b8)

    refused = _REFUSED_ALGORITHMS.get((alg or "").lower())
    if refused:
        return DkimOutcome(dom, sel, AuthResult.PERMERROR, refused, alg, None, ident, b8)
    d.keysize = None
    seen: dict = {}
    try:
        ok = d.verify(idx, dnsfunc=_dnsfunc(resolver, seen))
    except _KeyProblem as exc:
        return out(exc.result, exc.reason)
    except dkimpy.ValidationError as exc:
        # dkimpy raises this for a body hash mismatch (a failed check: fail) and for
        # malformed or expired signature fields (unverifiable: permerror, RFC 8601 2.7.1).
        text = str(exc)
        result = AuthResult.FAIL if "body hash mismatch" in text else AuthResult.PERMERROR
        return out(result, text)
    except dkimpy.KeyFormatError as exc:
        return out(AuthResult.PERMERROR, str(exc))
    except dkimpy.DKIMException as exc:
        return out(AuthResult.PERMERROR, str(exc))
    except Exception as exc:  # noqa: BLE001 - the signature and key are the sender's to write;
        # a parser failure dkimpy does not wrap must fail this signature, not the gateway.
        return out(AuthResult.PERMERROR, f"unverifiable signature ({type(exc).__name__}: {exc})")
    key: KeyRecord | None = seen.get("key")
    if key is not None:
        problem = _key_rejects(key, alg, dom, ident)
        if problem:
            return out(AuthResult.PERMERROR, problem)
    if ok:
        return out(AuthResult.PASS, "signature verified")
    return out(AuthResult.FAIL, "signature did not verify")


def _key_rejects(key: KeyRecord, alg: str | None, d: str | None, i: str | None) -> str | None:
    """Key-record tags dkimpy does not apply (RFC 6376 3.6.1): h= and t=s."""
    hash_alg = (alg or "").lower().rpartition("-")[2]
    if key.hashes is not None and hash_alg not in key.hashes:
        return f"key allows only h={':'.join(key.hashes)}, signature uses {hash_alg} (RFC 6376 3.6.1)"
    if key.strict and i and normalize_domain(i.rpartition("@")[2]) != d:
        return f"key has t=s: i={i} must use exactly d={d} (RFC 6376 3.6.1)"
    return None


def _ed25519_seed_b64(private_key: bytes) -> bytes:
    """dkimpy wants the raw 32-byte Ed25519 seed in base64; accept PEM (PKCS#8) too."""
    if b"-----BEGIN" not in private_key:
        return private_key.strip()
    key = serialization.load_pem_private_key(private_key, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise EdrulesError("ed25519-sha256 needs an Ed25519 private key")
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    return base64.b64encode(seed)


def sign_dkim(
    message: bytes,
    selector: str,
    domain: str,
    private_key_pem: bytes | str,
    algorithm: str = "rsa-sha256",
    headers: list[str] | None = None,
) -> bytes:
    """Return the `DKIM-Signature: ...\\r\\n` header line for `message` (relaxed/relaxed)."""
    if algorithm not in ("rsa-sha256", "ed25519-sha256"):
        raise EdrulesError(f"unsupported DKIM algorithm {algorithm!r} (rsa-sha256 or ed25519-sha256)")
    key = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
    if algorithm == "ed25519-sha256":
        key = _ed25519_seed_b64(key)
    try:
        return dkimpy.sign(
            message,
            selector.encode(),
            domain.encode(),
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=algorithm.encode(),
            include_headers=[h.encode() for h in headers] if headers else None,
            logger=_quiet,
        )
    except dkimpy.DKIMException as exc:
        raise EdrulesError(f"cannot sign: {exc}") from None


def public_key_record(private_key_pem: bytes | str, algorithm: str = "rsa-sha256") -> str:
    """The `v=DKIM1; k=...; p=...` TXT value that publishes the key matching a private key."""
    key_bytes = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
    if algorithm == "ed25519-sha256" and b"-----BEGIN" not in key_bytes:
        priv = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(key_bytes))
    else:
        priv = serialization.load_pem_private_key(key_bytes, password=None)
    pub = priv.public_key()
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode()
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()

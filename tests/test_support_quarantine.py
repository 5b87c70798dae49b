"""Quarantine report logic over the real gateway store: who sees what, release exactly once, trust, bulk, malware."""

from __future__ import annotations

import pytest

from support_env import TENANT, SmtpSink, add_for, copy_state, demo_db, populated_state

from edrules.server.principal import Principal, can_access
from edrules.support import quarantine_view as qv

MARTIN = Principal("martin.kral@northwind-traders.cz", "user", frozenset({TENANT}))
EVA = Principal("eva.horakova@northwind-traders.cz", "user", frozenset({TENANT}))
ADMIN = Principal("admin@northwind-traders.cz", "domain_admin", frozenset({TENANT}))
OTHER_ADMIN = Principal("admin@other-customer.test", "domain_admin", frozenset({"other-customer.test"}))
PROVIDER = Principal("ops@provider.test", "provider", frozenset({TENANT, "other-customer.test"}))


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return demo_db(tmp_path_factory.getbasetemp())


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


@pytest.fixture(scope="module")
def template(tmp_path_factory, db):
    return populated_state(tmp_path_factory.getbasetemp(), db)


@pytest.fixture
def site(tmp_path, template, sink):
    return copy_state(template, tmp_path / "state", next_hop=f"127.0.0.1:{sink.port}")


def q(**kw) -> qv.Query:
    return qv.Query(**{"page_size": 100, **kw})


def test_a_user_sees_only_their_own_mailbox_and_an_admin_only_their_domain(site):
    store = site.store()
    mine = qv.list_page(store, MARTIN, q())
    assert mine.total > 0 and {i.recipient for i in mine.items} == {MARTIN.address}
    domain = qv.list_page(store, ADMIN, q())
    assert domain.total == 331 and len({i.recipient for i in domain.items}) > 1
    assert qv.list_page(store, OTHER_ADMIN, q()).total == 0
    # An admin asking for another domain's mailbox gets nothing, not an error that confirms it exists.
    assert qv.list_page(store, OTHER_ADMIN, q(recipient=MARTIN.address)).total == 0
    assert qv.list_page(store, ADMIN, q(recipient=MARTIN.address)).total == mine.total


def test_another_users_item_reads_like_a_missing_one_and_cannot_be_released_trusted_or_deleted(site, sink):
    store = site.store()
    evas = qv.list_page(store, EVA, q()).items[0]
    with pytest.raises(qv.NotAllowed, match="no quarantined message"):
        qv.get_item(store, MARTIN, evas.id)
    with pytest.raises(qv.NotAllowed):
        qv.detail(site, store, MARTIN, evas.id)
    for action in ("release", "trust", "delete"):
        [out] = qv.bulk(site, store, MARTIN, action, [evas.id], how="test")
        assert not out.ok and "no quarantined message" in out.message
    assert store.get(evas.id).state == "quarantined" and sink.messages == []
    assert not can_access(OTHER_ADMIN, evas.recipient)


def test_release_reaches_the_smtp_sink_exactly_once_with_the_signed_release_header(site, sink):
    store = site.store()
    item = qv.list_page(store, MARTIN, q(category="forgery")).items[0]
    first = qv.release_one(site, store, MARTIN, item.id, how="test")
    second = qv.release_one(site, store, MARTIN, item.id, how="test")
    assert first.ok and not second.ok and "already released" in second.message
    assert len(sink.to(MARTIN.address)) == 1
    assert sink.to(MARTIN.address)[0].startswith(b"X-EDRules-Release: ")
    assert store.get(item.id).state == "released" and store.get(item.id).released_by == MARTIN.address


def test_malware_is_never_self_released_but_the_domain_admin_may(site, sink):
    store = site.store()
    malware = qv.list_page(store, ADMIN, q(category="malware")).items[0]
    owner = Principal(malware.recipient, "user", frozenset({TENANT}))
    out = qv.release_one(site, store, owner, malware.id, how="test")
    assert not out.ok and "malware is never self-released" in out.message
    assert sink.messages == []
    assert qv.release_one(site, store, ADMIN, malware.id, how="test").ok
    assert len(sink.to(malware.recipient)) == 1


def test_trust_sender_adds_a_pair_via_the_authenticated_network_and_the_preview_says_so(site):
    store = site.store()
    otp = [i for i in qv.list_page(store, MARTIN, q(search="someotpsite")).items if i.category == "forgery"][0]
    pv = qv.trust_preview(site, otp)
    assert (pv.sender, pv.via, pv.scope) == ("donotreply@someotpsite.cz", "amazonses", f"user:{MARTIN.address}")
    assert "authenticates through the amazonses network" in pv.lets_through
    assert qv.trust_blast_radius(site, otp, pv) == {"newly_delivered": 15, "forged": 0, "by_label": {"ham": 15},
                                                    "dataset": "demo"}
    out = qv.trust_one(site, store, MARTIN, otp.id, how="test")
    assert out.ok and "via amazonses" in out.message
    [entry] = site.overrides().entries()
    assert entry.value == "donotreply@someotpsite.cz" and entry.via.value == "amazonses"
    assert str(entry.scope) == f"user:{MARTIN.address}"
    # The next OTP message for Martin is delivered under the merged policy; a forged one is not.
    d = qv.detail(site, store, MARTIN, otp.id)
    assert str(d.verdict.action) == "deliver" and d.verdict.category == "allow"
    assert any(a.action == "trusted" for a in store.audit_log(item_id=otp.id))


def test_search_filter_sort_and_paging_cover_the_whole_list_once(site):
    store = site.store()
    pages, seen = None, []
    page = 1
    while True:
        p = qv.list_page(store, ADMIN, qv.Query(page=page, page_size=50, order="oldest first"))
        pages = p.pages
        seen += [i.id for i in p.items]
        if page >= p.pages:
            break
        page += 1
    assert pages == 7 and len(seen) == len(set(seen)) == 331
    times = [store.get(i).quarantined_at for i in seen]
    assert times == sorted(times)
    spam = qv.list_page(store, ADMIN, q(category="spam"))
    assert spam.total == 155 and {i.category for i in spam.items} == {"spam"}
    hits = qv.list_page(store, ADMIN, q(search="someotpsite"))
    assert hits.total > 0 and all("someotpsite" in (i.header_from or "") for i in hits.items)
    # Past the last page: the last page, not an empty one.
    assert qv.list_page(store, ADMIN, qv.Query(page=99, page_size=100)).page == 4


def test_bulk_delete_reports_each_item_and_skips_what_is_not_yours(site):
    store = site.store()
    mine = [i.id for i in qv.list_page(store, MARTIN, q(category="spam")).items[:3]]
    evas = qv.list_page(store, EVA, q()).items[0].id
    outs = qv.bulk(site, store, MARTIN, "delete", [*mine, evas], how="test")
    assert [o.ok for o in outs] == [True, True, True, False]
    assert all(store.get(i).state == "deleted" for i in mine) and store.get(evas).state == "quarantined"


def test_a_provider_sees_all_its_customers_domains(site):
    store = site.store()
    raw = store.raw(qv.list_page(store, ADMIN, q()).items[0].id)
    other = add_for(site, raw, "bob@other-customer.test")
    assert qv.list_page(store, PROVIDER, q()).total == 332
    assert qv.get_item(store, OTHER_ADMIN, other.id).recipient == "bob@other-customer.test"
    with pytest.raises(qv.NotAllowed):
        qv.get_item(store, ADMIN, other.id)


def test_the_trust_preview_measures_that_a_parcel_pair_via_ses_would_also_let_phishing_in(site):
    store = site.store()
    parcel = next(i for i in qv.list_page(store, EVA, q(search="parcelzone")).items if i.category == "forgery")
    pv = qv.trust_preview(site, parcel)
    radius = qv.trust_blast_radius(site, parcel, pv)
    assert pv.via == "amazonses" and radius["by_label"].get("phishing") == 3 and radius["forged"] == 3

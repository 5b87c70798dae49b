"""The demo site: the tenant's mail through the gateway runtime fills the quarantine once; demo sign-ins exist."""

from __future__ import annotations

from support_env import ROOT, TENANT, demo_db

from edrules.pack import build_pack, generate_keypair, write_pack
from edrules.rules.parse import parse_rules_file
from edrules.server.accounts import Accounts
from edrules.support.demo_site import DEMO_ACCOUNTS, prepare_demo_site
from edrules.support.site import load_site


def test_the_demo_site_is_filled_through_the_gateway_once_and_has_its_accounts(tmp_path_factory, tmp_path):
    db = demo_db(tmp_path_factory.getbasetemp())
    keys = tmp_path / "keys"
    generate_keypair(keys)
    rules = ROOT / "data" / "rules" / "current.yaml"
    write_pack(build_pack(parse_rules_file(rules), source_bytes=rules.read_bytes(),
                          private_key_path=keys / "edrules-pack.key"), tmp_path / "current.json")
    lines: list[str] = []
    first = prepare_demo_site(tmp_path / "state", db=db, pack=tmp_path / "current.json", keys=keys,
                              tenant=ROOT / "data" / "demo-tenant", echo=lines.append)
    site = load_site(tmp_path / "state")
    items = site.store().list(limit=None)
    assert first["held"] == len(items) > 100
    assert {i.category for i in items} >= {"forgery", "spam"} and all(i.pack_name == "northwind-current" for i in items)
    assert site.current_policy(TENANT).name == "northwind-current"
    again = prepare_demo_site(tmp_path / "state", db=db, pack=tmp_path / "current.json", keys=keys,
                              tenant=ROOT / "data" / "demo-tenant", echo=lines.append)
    assert again == first and len(site.store().list(limit=None)) == len(items)  # idempotent
    accounts = Accounts(tmp_path / "state")
    for address, role, _domains, _pw in DEMO_ACCOUNTS:
        assert accounts.get(address).role == role
    assert any("sign in as admin@northwind-traders.cz" in line for line in lines)

"""Generated traffic of one tenant (messages + recipients in the ingest schema) and a 100k-entry
policy that hits it, for the SQL-backend benchmark. Deterministic: same rows for the same size.

The traffic is made inside DuckDB from `range()` and `hash()` so 100M recipient rows take minutes,
not hours. Shape of a tenant's year (10k users in three domains, ~3.1 recipients per message
because of distribution lists):
  65% direct mail from a sender organisation (SPF, DKIM and DMARC pass, aligned), each organisation from up to 8 client IPs;
  20% brands sending through a bulk provider (envelope and DKIM at the provider, half also brand-signed);
  10% spoofs (header From of a real sender, envelope elsewhere, DMARC fail, a third under p=reject);
   5% bounces with the null sender (HELO stands in).
Categories: 0.2% malware, 1.8% phishing, 10% spam, the rest ham. 10% of clients are IPv6.
msg_key is 16 hex digits (a 64-bit bijection of the row number) rather than ingest's 64-digit
sha256: keys stay unique, and the benchmark does not measure hashing 48 idle characters.
"""

from __future__ import annotations

import ipaddress
import random
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from edrules.catalog import load_catalog
from edrules.derive import DERIVED_COLUMNS, DERIVED_TYPES, derive
from edrules.facts import MessageFacts
from edrules.rules.model import (
    BulkPolicy,
    Entry,
    EntryKind,
    FromPolicy,
    ListKind,
    Policy,
    ProviderDef,
    Scope,
    ScopeKind,
    Via,
    ViaKind,
)
from edrules.schema import DKIM_STRUCT

SENDERS = 200_000  # sender organisations s<N>.com
USERS = 10_000
TENANT_DOMAINS = ("corp.example", "corp-eu.example", "corp-us.example")
PROVIDERS = (  # (name, envelope domain, DKIM domain) as in the bundled catalog
    ("amazonses", "amazonses.com", "amazonses.com"),
    ("sendgrid", "sendgrid.net", "sendgrid.net"),
    ("mailgun", "mailgun.org", "mailgun.org"),
    ("mailchimp", "mcsv.net", "mcsv.net"),
)
MEAN_RECIPIENTS = 3.07  # of the recipient-count mix in _MESSAGES_SQL
YEAR_START = "2025-01-01"


def ipv4_of(sd: int, host: int) -> str:
    """Client address of sender organisation `sd` (one /24 per organisation); mirrors the SQL."""
    return f"{11 + sd % 200}.{(sd // 200) % 256}.{(sd // 51200) % 256}.{host}"


def ipv6_net_of(sd: int) -> str:
    """The /64 of sender organisation `sd`'s IPv6 clients; mirrors the SQL."""
    return f"2001:db8:{sd >> 16:x}:{sd & 0xFFFF:x}::/64"


# h(k) = an independent 64-bit hash of (row, k); every random choice below reads one of them.
_MESSAGES_SQL = f"""
WITH base AS (
  SELECT i,
         hash(i, 1) AS h1, hash(i, 2) AS h2, hash(i, 3) AS h3, hash(i, 4) AS h4, hash(i, 5) AS h5
  FROM range($lo, $hi) t(i)
), shaped AS (
  SELECT *,
    h1 % 100 AS kind_n,
    h2 % {SENDERS} AS sd,
    (h3 % 4)::INT AS prov,
    CASE WHEN h1 % 100 < 65 THEN 'direct' WHEN h1 % 100 < 85 THEN 'bulk'
         WHEN h1 % 100 < 95 THEN 'spoof' ELSE 'bounce' END AS kind,
    's' || (h2 % {SENDERS}) || '.com' AS org,
    ['info', 'news', 'noreply', 'billing'][(h4 % 4)::INT + 1] AS local
  FROM base
), facts AS (
  SELECT *,
    local || '@' || org AS header_from,
    CASE kind
      WHEN 'direct' THEN CASE WHEN h4 % 2 = 0 THEN 'bounce@bounce.' || org ELSE local || '@' || org END
      WHEN 'bulk' THEN 'b' || (h5 % 100000) || '@' || ['amazonses.com', 'sendgrid.net', 'mailgun.org', 'mcsv.net'][prov + 1]
      WHEN 'spoof' THEN 'x' || (h5 % 1000) || '@r' || (h3 % 50000) || '.net'
      ELSE '' END AS envelope_from,
    CASE WHEN h5 % 10 = 0
         THEN '2001:db8:' || printf('%x', sd // 65536) || ':' || printf('%x', sd % 65536) || '::' || printf('%x', h4 % 8 + 1)
         ELSE (11 + sd % 200) || '.' || ((sd // 200) % 256) || '.' || ((sd // 51200) % 256) || '.' || (h4 % 8 + 1)
    END AS client_ip
  FROM shaped
)
SELECT
  lower(printf('%016x', ((i::HUGEINT * 11400714819323198485) % 18446744073709551616)::UBIGINT)) AS msg_key,
  $dataset AS dataset,
  NULL::VARCHAR AS source,
  TIMESTAMP '{YEAR_START}' + to_microseconds((i::HUGEINT * 31536000000000 // $total)::BIGINT) AS received_at,
  NULL::VARCHAR AS message_id,
  NULL::VARCHAR AS subject,
  header_from,
  org AS header_from_domain,
  org AS header_from_org,
  NULL::VARCHAR AS from_display,
  FALSE AS from_invalid,
  [header_from] AS from_mailboxes,
  NULL::VARCHAR AS reply_to,
  envelope_from,
  nullif(split_part(envelope_from, '@', 2), '') AS envelope_from_domain,
  CASE kind WHEN 'direct' THEN org WHEN 'bounce' THEN NULL
       ELSE array_to_string(string_split(split_part(envelope_from, '@', 2), '.')[-2:], '.') END AS envelope_from_org,
  client_ip,
  CASE kind WHEN 'bounce' THEN 'mx' || (h3 % 100) || '.isp' || (h5 % 1000) || '.net' ELSE 'mail.' || org END AS helo,
  CASE kind WHEN 'bounce' THEN 'isp' || (h5 % 1000) || '.net' ELSE org END AS helo_org,
  CASE kind WHEN 'spoof' THEN ['none', 'fail', 'softfail'][(h3 % 3)::INT + 1] ELSE 'pass' END AS spf,
  nullif(split_part(envelope_from, '@', 2), '') AS spf_domain,
  (CASE kind
    WHEN 'direct' THEN [{{'d': org, 's': 's1', 'result': 'pass', 'org': org}}]
    WHEN 'bulk' THEN CASE WHEN h4 % 2 = 0
      THEN [{{'d': ['amazonses.com', 'sendgrid.net', 'mailgun.org', 'mcsv.net'][prov + 1], 's': 'p1', 'result': 'pass',
              'org': ['amazonses.com', 'sendgrid.net', 'mailgun.org', 'mcsv.net'][prov + 1]}},
            {{'d': org, 's': 's1', 'result': 'pass', 'org': org}}]
      ELSE [{{'d': ['amazonses.com', 'sendgrid.net', 'mailgun.org', 'mcsv.net'][prov + 1], 's': 'p1', 'result': 'pass',
              'org': ['amazonses.com', 'sendgrid.net', 'mailgun.org', 'mcsv.net'][prov + 1]}}] END
    ELSE [] END)::{DKIM_STRUCT}[] AS dkim,
  CASE kind WHEN 'direct' THEN 'pass' WHEN 'spoof' THEN 'fail'
       WHEN 'bulk' THEN CASE WHEN h4 % 2 = 0 THEN 'pass' ELSE 'fail' END ELSE 'none' END AS dmarc,
  CASE WHEN kind = 'spoof' OR kind = 'bulk' THEN ['none', 'none', 'reject'][(h5 % 3)::INT + 1] ELSE 'none' END AS dmarc_policy,
  'mx.corp.example' AS authserv_id,
  CASE kind WHEN 'bulk' THEN ['amazonses', 'sendgrid', 'mailgun', 'mailchimp'][prov + 1] END AS bulk_provider,
  NULL::VARCHAR AS list_unsubscribe,
  CASE WHEN h5 % 1000 < 2 THEN 'malware' WHEN h5 % 1000 < 20 THEN 'phishing'
       WHEN h5 % 1000 < 120 THEN 'spam' ELSE 'ham' END AS category,
  (h3 % 1000) / 100.0 AS score,
  (2000 + h4 % 60000)::BIGINT AS size,
  NULL::VARCHAR AS quarantine_state,
  -- recipient count: 70% one, 20% two or three, 9% four to ten, 1% a list of 50-199
  CASE WHEN h1 // 100 % 1000 < 700 THEN 1 WHEN h1 // 100 % 1000 < 900 THEN 2 + h3 % 2
       WHEN h1 // 100 % 1000 < 990 THEN 4 + h3 % 7 ELSE 50 + h3 % 150 END AS n_rcpt,
  i
FROM facts
"""

_RECIPIENTS_SQL = f"""
SELECT dataset, msg_key, 'u' || u || '@' || d AS recipient, d AS recipient_domain, 'envelope' AS recipient_source
FROM (
  SELECT dataset, msg_key, hash(i, r) % {USERS} AS u,
         ['{TENANT_DOMAINS[0]}', '{TENANT_DOMAINS[1]}', '{TENANT_DOMAINS[2]}'][(hash(i, r) % {USERS} % 3)::INT + 1] AS d
  FROM (SELECT dataset, msg_key, i, unnest(range(n_rcpt::BIGINT)) AS r FROM _gen_messages)
)
"""


_WITH_DERIVED = """SELECT m.* EXCLUDE (n_rcpt, i), x.* EXCLUDE (i)
FROM _gen_messages m JOIN _gen_derived x USING (i) ORDER BY m.i"""


def _add_derived(con: duckdb.DuckDBPyConnection, batch: int = 100_000) -> None:
    """_gen_derived(i, derived columns...): computed by edrules.derive.derive for every
    generated message, exactly as ingest computes them (never re-derived in SQL here)."""
    types = {"VARCHAR": pa.string(), "BOOLEAN": pa.bool_(), "VARCHAR[]": pa.list_(pa.string())}
    schema = pa.schema([("i", pa.int64())] + [(c, types[DERIVED_TYPES[c]]) for c in DERIVED_COLUMNS])
    reader = con.execute("SELECT * EXCLUDE (n_rcpt) FROM _gen_messages").to_arrow_reader(batch)
    tables = []
    for rb in reader:
        rows = rb.to_pylist()
        values = [derive(MessageFacts.from_row(r)).values() for r in rows]
        cols = [[r["i"] for r in rows]] + [list(col) for col in zip(*values)] if values else \
            [[] for _ in schema.names]
        tables.append(pa.Table.from_arrays([pa.array(c, t) for c, t in zip(cols, schema.types)], schema=schema))
    derived = pa.concat_tables(tables) if tables else schema.empty_table()
    con.register("_gen_derived_arrow", derived)
    con.execute("CREATE OR REPLACE TEMP TABLE _gen_derived AS SELECT * FROM _gen_derived_arrow")
    con.unregister("_gen_derived_arrow")


def messages_for(rows: int) -> int:
    return max(1, round(rows / MEAN_RECIPIENTS))


def generate_tables(con: duckdb.DuckDBPyConnection, rows: int, *, dataset: str = "bench") -> tuple[int, int]:
    """Fill `messages` and `recipients` (edrules.schema) with about `rows` recipient rows."""
    from edrules.schema import ensure_schema

    ensure_schema(con)
    n = messages_for(rows)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _gen_messages AS {_MESSAGES_SQL}",
                {"lo": 0, "hi": n, "total": n, "dataset": dataset})
    _add_derived(con)
    con.execute(f"INSERT INTO messages BY NAME {_WITH_DERIVED}")
    con.execute(f"INSERT INTO recipients {_RECIPIENTS_SQL}")
    con.execute("DROP TABLE _gen_messages")
    con.execute("DROP TABLE _gen_derived")
    return _counts(con, "messages", "recipients")


def generate_parquet(out: Path, rows: int, *, dataset: str = "year", parts: int = 8) -> tuple[int, int]:
    """Write messages/part-*.parquet and recipients/part-*.parquet under `out` in `parts` slices,
    so generation never holds the year in memory."""
    n = messages_for(rows)
    (out / "messages").mkdir(parents=True, exist_ok=True)
    (out / "recipients").mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    step = -(-n // parts)
    for p in range(parts):
        lo, hi = p * step, min(n, (p + 1) * step)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _gen_messages AS {_MESSAGES_SQL}",
                    {"lo": lo, "hi": hi, "total": n, "dataset": dataset})
        _add_derived(con)
        con.execute(f"COPY ({_WITH_DERIVED}) TO $f (FORMAT parquet)",
                    {"f": str(out / "messages" / f"part-{p:02d}.parquet")})
        con.execute(f"COPY ({_RECIPIENTS_SQL}) TO $f (FORMAT parquet)",
                    {"f": str(out / "recipients" / f"part-{p:02d}.parquet")})
    con.execute("DROP TABLE _gen_messages")
    con.execute(f"CREATE VIEW messages AS SELECT * FROM read_parquet('{out}/messages/*.parquet')")
    con.execute(f"CREATE VIEW recipients AS SELECT * FROM read_parquet('{out}/recipients/*.parquet')")
    counts = _counts(con, "messages", "recipients")
    con.close()
    return counts


def _counts(con, messages: str, recipients: str) -> tuple[int, int]:
    m = con.execute(f"SELECT count(*) FROM {messages}").fetchall()[0][0]
    r = con.execute(f"SELECT count(*) FROM {recipients}").fetchall()[0][0]
    return m, r


def benchmark_policy(entries: int = 100_000, *, seed: int = 7, today: date = date(2026, 1, 1)) -> Policy:
    """A pack of about `entries` entries of every kind, a few percent of which hit the traffic:
    block senders and domains, allow domains with and without subdomains, v4 and v6 CIDRs,
    provider/domain/CIDR pairs, user and domain scopes, expired entries."""
    rnd = random.Random(seed)
    cat = load_catalog()
    providers = {n: ProviderDef(n, cat.providers[n].envelope_suffixes, cat.providers[n].dkim_domains)
                 for n, *_ in PROVIDERS}
    block: list[Entry] = []
    allow: list[Entry] = []
    share = {"block_sender": 0.35, "block_domain": 0.10, "allow_domain": 0.25, "cidr": 0.15,
             "pair": 0.05, "scoped": 0.05, "expired": 0.05}
    k = 0

    def sd() -> int:  # most entries name organisations that never write to this tenant
        return rnd.randrange(SENDERS) if rnd.random() < 0.05 else SENDERS + rnd.randrange(10 * SENDERS)

    def add(lst: ListKind, kind: EntryKind, value: str, **kw) -> None:
        nonlocal k
        k += 1
        (block if lst is ListKind.BLOCK else allow).append(Entry(f"e{k}", lst, kind, value, **kw))

    for _ in range(int(entries * share["block_sender"])):
        add(ListKind.BLOCK, EntryKind.SENDER, f"{rnd.choice(['info', 'news', 'noreply', 'billing'])}@s{sd()}.com")
    for _ in range(int(entries * share["block_domain"])):
        add(ListKind.BLOCK, EntryKind.DOMAIN, f"r{rnd.randrange(500_000)}.net", subdomains=rnd.random() < 0.5)
    for _ in range(int(entries * share["allow_domain"])):
        add(ListKind.ALLOW, EntryKind.DOMAIN, f"s{sd()}.com", subdomains=rnd.random() < 0.5)
    for _ in range(int(entries * share["cidr"])):
        s = sd()
        lst = ListKind.BLOCK if rnd.random() < 0.5 else ListKind.ALLOW
        if rnd.random() < 0.8:
            add(lst, EntryKind.IP, _v4_net(s, rnd.choice([24, 24, 32, 16]), rnd))
        else:
            add(lst, EntryKind.IP, ipv6_net_of(s))
    for _ in range(int(entries * share["pair"])):
        s = sd()
        via = rnd.choice([Via(ViaKind.PROVIDER, rnd.choice([p[0] for p in PROVIDERS])),
                          Via(ViaKind.DOMAIN, rnd.choice([p[1] for p in PROVIDERS])),
                          Via(ViaKind.CIDR, _v4_net(s, 16, rnd))])
        add(ListKind.ALLOW, EntryKind.DOMAIN, f"s{s}.com", via=via)
    for _ in range(int(entries * share["scoped"])):
        u = rnd.randrange(USERS)
        scope = (Scope(ScopeKind.USER, f"u{u}@{TENANT_DOMAINS[u % 3]}") if rnd.random() < 0.7
                 else Scope(ScopeKind.DOMAIN, rnd.choice(TENANT_DOMAINS)))
        add(ListKind.ALLOW, EntryKind.DOMAIN, f"s{sd()}.com", subdomains=True, scope=scope)
    for _ in range(int(entries * share["expired"])):
        add(ListKind.BLOCK, EntryKind.DOMAIN, f"s{sd()}.com", expires=today - timedelta(days=rnd.randrange(1, 400)))
    return Policy(
        name=f"bench-{entries}",
        from_policy=FromPolicy.STRICT,
        bulk_mailers={"amazonses": BulkPolicy.ALLOW, "sendgrid": BulkPolicy.BLOCK},
        allow=tuple(allow), block=tuple(block), providers=providers,
    )


def _v4_net(sd: int, plen: int, rnd: random.Random) -> str:
    """A CIDR around organisation `sd`'s clients; organisations beyond SENDERS live in 211/8 and
    up, where the traffic has no clients."""
    host = rnd.randrange(1, 255)
    if sd < SENDERS:
        addr = ipv4_of(sd, host)
    else:
        x = sd - SENDERS
        addr = f"{211 + x % 40}.{(x // 40) % 256}.{(x // 10240) % 256}.{host}"
    return str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))

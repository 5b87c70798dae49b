"""Turn one raw message (or pasted header block) into MessageFacts, trusting only our side's headers."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Iterable, Sequence

from edrules.catalog import load_catalog
from edrules.domains import address_domain, domain_syntax_ok, normalize_address, normalize_domain, org_domain
from edrules.errors import EdrulesError, Location
from edrules.facts import DkimSignatureResult, MessageFacts
from edrules.ingest.authheaders import (
    NO_AUTHSERV_ID,
    AuthResults,
    MethodResult,
    ReceivedSpf,
    dmarc_policy,
    parse_authentication_results,
    parse_received_spf,
)
from edrules.ingest.headers import HeaderBlock, decode_words, mailbox_syntax_ok, mailboxes, split_header_block
from edrules.ingest.readers import mbox_sender
from edrules.ingest.received import Hop, is_ip_literal, normalize_ip, parse_date, received_fields
from edrules.ingest.trust import TrustConfig, edge_hop

CATEGORY_ALIASES = {"clean": "ham", "ham": "ham", "spam": "spam", "phishing": "phishing", "malware": "malware"}
_FROM_FIELD = re.compile(rb"From[ \t]*:")
_RSPAMD_SPAM = {"reject", "add header", "rewrite subject", "soft reject"}


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str  # normalised; '' when none could be found
    domain: str | None
    source: str  # envelope | delivered-to | x-original-to | to-cc | none


@dataclass(frozen=True, slots=True)
class ExtractedMessage:
    facts: MessageFacts
    hops: tuple[Hop, ...]
    headers: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]
    recipient_rows: tuple[Recipient, ...]


def normalize_category(value: str | None, where: Location | None = None) -> str | None:
    """malware | phishing | spam | ham ('clean' accepted) or None; anything else is an error."""
    if value is None or not str(value).strip():
        return None
    c = CATEGORY_ALIASES.get(str(value).strip().lower())
    if c is None:
        raise EdrulesError(
            f"unknown category {value!r} (use malware, phishing, spam, ham or clean)", where
        )
    return c


def _top_id(value: str) -> str:
    """Authserv-id of an A-R value without a full parse (cheap: only trusted ones are parsed)."""
    head = value.split(";", 1)[0].strip()
    if "=" in head.split("(", 1)[0]:
        return NO_AUTHSERV_ID
    return head.split()[0].lower() if head.split() else ""


def _dkim_domain(r: MethodResult) -> str | None:
    d = r.props.get("header.d")
    if not d:
        i = r.props.get("header.i", "")
        d = i.rpartition("@")[2] if i else None
    return normalize_domain(d) if d else None


def _mail_from(value: str | None) -> tuple[str | None, str | None]:
    """(address or None, domain) of an smtp.mailfrom / envelope-from value."""
    if value is None:
        return None, None
    v = value.strip().strip("<>").strip()
    if v == "":
        return "", None
    if "@" in v:
        a = normalize_address(v)
        return a, address_domain(a)
    return None, normalize_domain(v)


def facts_from_bytes(
    raw: bytes,
    *,
    source: str = "",
    dataset: str = "default",
    trust: TrustConfig | None = None,
    envelope_from: str | None = None,
    recipients: Sequence[str] | None = None,
    client_ip: str | None = None,
    helo: str | None = None,
    label: str | None = None,
    mbox_from: str | None = None,
    paste: bool = False,
) -> ExtractedMessage:
    """Facts of one message. Explicit envelope_from / recipients / client_ip / helo are what
    the MTA knows and always win over headers; mbox_from is the sender of an mbox `From ` line.
    paste=True reads a header block pasted from a ticket: a From field whose folding was lost
    in the paste is repaired (in mail, such a From is one no MTA or DMARC verifier saw, so it
    is from_invalid).
    With trust.auto_detect and no authserv_ids, the ids heading this message's auth headers
    are trusted (ingest_paths instead detects them once per dataset)."""
    trust = trust or TrustConfig()
    return extract(
        raw,
        source=source,
        dataset=dataset,
        trust=trust,
        detect_per_message=trust.auto_detect and not trust.authserv_ids,
        envelope_from=envelope_from,
        recipients=recipients,
        client_ip=client_ip,
        helo=helo,
        label=label,
        mbox_from=mbox_from,
        paste=paste,
    )


def top_auth_ids(block: HeaderBlock) -> set[str]:
    """Authserv-id of the top-most A-R and receiver of the top-most Received-SPF."""
    ar, receiver = _top_ids(block)
    return {i for i in (ar, receiver) if i}


def _top_ids(block: HeaderBlock) -> tuple[str | None, str | None]:
    ar = block.first("authentication-results")
    ar_id = (_top_id(ar) or None) if ar is not None else None
    spf = block.first("received-spf")
    parsed = parse_received_spf(spf) if spf is not None else None
    return ar_id, parsed.receiver if parsed else None


def _detected_trust(block: HeaderBlock, trust: TrustConfig) -> TrustConfig:
    """Per-message detection: the top-most A-R's id, and the top-most Received-SPF's receiver
    as a receiver only. A gateway that stamps A-R but no Received-SPF leaves the top-most
    Received-SPF to the sender, whose receiver must not make its own A-R believed."""
    ar_id, receiver = _top_ids(block)
    ids = {ar_id} if ar_id else set()
    receivers = {receiver} if receiver and receiver != ar_id else set()
    return replace(trust, authserv_ids=frozenset(ids), receiver_ids=frozenset(receivers))


def extract(
    raw: bytes,
    *,
    source: str,
    dataset: str,
    trust: TrustConfig,
    detect_per_message: bool,
    envelope_from: str | None = None,
    recipients: Sequence[str] | None = None,
    client_ip: str | None = None,
    helo: str | None = None,
    label: str | None = None,
    mbox_from: str | None = None,
    category: str | None = None,
    score: float | None = None,
    received_at: datetime | None = None,
    quarantine_state: str | None = None,
    msg_key: str | None = None,
    paste: bool = False,
) -> ExtractedMessage:
    """facts_from_bytes for the pipeline: trust ids already decided (or detected here when
    detect_per_message), plus what a quarantine CSV row adds (category, score, time, state)."""
    if raw[:5] == b"From " and not _FROM_FIELD.match(raw):
        # A message saved with its mbox From_ line (or BSMTP DATA that kept it).
        first, _, raw = raw.partition(b"\n")
        words = first.split()
        if mbox_from is None and len(words) > 1:
            mbox_from = mbox_sender(words[1])
    block = split_header_block(raw)
    if not block.fields:
        raise EdrulesError("no header fields found (not a message)", Location(source or None, 1))
    warnings = list(block.warnings)
    fields = block.fields
    if detect_per_message:
        trust = _detected_trust(block, trust)

    received = block.get_all("received")
    parts = [received_fields(v) for _, v in received]
    untrusted = [Hop(n, pos, *parts[n], raw=v) for n, (pos, v) in enumerate(received)]
    edge = edge_hop(untrusted, trust)
    hops = tuple(Hop(n, pos, *parts[n], raw=v, trusted=True) if edge is not None and n <= edge else untrusted[n]
                 for n, (pos, v) in enumerate(received))
    # Auth headers count only above the first Received field an outsider could have written.
    limit = hops[edge + 1].position if edge is not None and edge + 1 < len(hops) else len(fields)

    # Our side's fields sit above the edge hop's own Received field (some just below it).
    edge_pos = hops[edge].position if edge is not None else len(fields)
    repairs_from = None if paste else edge_pos  # see _as_delivered
    auth = _trusted_auth(block, edge_pos, limit, trust, warnings, repairs_from)
    env_from, env_domain = _envelope(block, envelope_from, mbox_from, auth, edge_pos, repairs_from)
    ip, helo_name, ptr = _client(client_ip, helo, hops[edge] if edge is not None else None, auth.spf_header)
    helo_org = None if not helo_name or is_ip_literal(helo_name) else org_domain(helo_name)
    header_from, from_domain, from_display, from_invalid = _header_from(block, paste)
    boxes = from_mailboxes(header_from, (v for _, v in block.get_all("from")))
    if auth.spf is not None and not _spf_for_envelope(auth.spf_domain, env_from, env_domain, helo_name):
        warnings.append(f"spf-not-for-envelope:{auth.spf_domain or '-'}")
        auth.spf = None
    if auth.dmarc is not None and None not in (auth.dmarc_from, from_domain) and auth.dmarc_from != from_domain:
        # A DMARC verdict about another From domain says nothing about this From.
        warnings.append(f"dmarc-for-other-from:{auth.dmarc_from}")
        auth.dmarc = auth.policy = None
    reply_boxes = mailboxes(block.first("reply-to") or "")
    reply_to = normalize_address(reply_boxes[0][1]) if reply_boxes else None
    rcpts = _recipients(block, recipients)

    # category / score: explicit > scanner headers on our side > label
    cat = normalize_category(category, Location(source or None, field="category"))
    sc = score
    if cat is None:
        cat, header_score = _scanner_verdict(block, limit) if edge is not None else (None, None)
        sc = sc if sc is not None else header_score
    if cat is None:
        cat = normalize_category(label, Location(field="label"))

    # DKIM counts for the provider only with a trusted pass: anyone can write a signature.
    provider = load_catalog().identify(
        env_domain, [d.d for d in auth.dkim if d.result == "pass" and d.d], helo_name, ptr
    )
    when = received_at
    if when is None and hops:
        when = hops[0].received_at
    if when is None:
        when = parse_date(block.first("date"))
    facts = MessageFacts(
        msg_key=msg_key or hashlib.sha256(raw).hexdigest(),
        dataset=dataset,
        source=source,
        received_at=when,
        message_id=(block.first("message-id") or "").strip() or None,
        subject=decode_words(block.first("subject")),
        header_from=header_from,
        header_from_domain=from_domain,
        header_from_org=org_domain(from_domain) if from_domain else None,
        from_display=from_display,
        from_invalid=from_invalid,
        from_mailboxes=boxes,
        reply_to=reply_to,
        envelope_from=env_from,
        envelope_from_domain=env_domain,
        envelope_from_org=org_domain(env_domain) if env_domain else None,
        client_ip=ip,
        helo=helo_name,
        helo_org=helo_org,
        spf=auth.spf,
        spf_domain=auth.spf_domain,
        dkim=tuple(auth.dkim),
        dmarc=auth.dmarc,
        dmarc_policy=auth.policy,
        authserv_id=auth.authserv,
        bulk_provider=provider,
        list_unsubscribe=block.first("list-unsubscribe"),
        category=cat,
        score=sc,
        size=len(raw),
        quarantine_state=quarantine_state,
        recipients=tuple(r.address for r in rcpts),
    )
    return ExtractedMessage(facts, hops, fields, tuple(warnings), rcpts)


@dataclass(slots=True)
class _Auth:
    spf: str | None = None
    spf_domain: str | None = None
    dkim: list[DkimSignatureResult] = field(default_factory=list)
    dmarc: str | None = None
    policy: str | None = None
    authserv: str | None = None
    ar_mailfrom: str | None = None
    spf_header: ReceivedSpf | None = None
    dmarc_from: str | None = None  # header.from= of the DMARC result: the domain it is about
    helo_only: bool = False  # the SPF result names the HELO and no MAIL FROM at all


def _as_delivered(block: HeaderBlock, pos: int, value: str, edge_pos: int | None) -> str:
    """A field below the edge hop's Received field as the gateway delivered it: a lost-fold
    line joined onto it (HeaderBlock.original) is the sender's first line, under the
    gateway's own last field; joined, the sender would append words (`; dmarc=pass`) to it.
    Above the edge, a repair is the paste's (the seed's A-R folds with no-break spaces);
    edge_pos None (paste mode) keeps every repair."""
    return block.original.get(pos, value) if edge_pos is not None and pos > edge_pos else value


def _trusted_auth(block: HeaderBlock, edge_pos: int, limit: int, trust: TrustConfig,
                  warnings: list[str], repairs_from: int | None) -> _Auth:
    """Results of the Authentication-Results / Received-SPF fields our side wrote; per method
    the top-most such field that carries it wins, SPF falls back to Received-SPF.

    A trusted field counts above the edge hop's own Received field (`edge_pos`). Between that
    field and the next one down (`limit`) sit the gateway's results when it writes them below
    its Received field (Gmail does) and, after them, whatever the sender wrote: there only the
    top-most A-R of each authserv-id counts, and a Received-SPF only when it is the top-most
    one and no trusted A-R sits above it. Anything lower is the sender's."""
    chosen: dict[str, tuple[AuthResults, list[MethodResult]]] = {}
    out = _Auth()
    seen_ids: set[str] = set()
    first_trusted_ar: int | None = None
    for pos, value in block.get_all("authentication-results"):
        if pos >= limit:
            break
        value = _as_delivered(block, pos, value, repairs_from)
        aid = _top_id(value)
        top_of_id = aid not in seen_ids
        seen_ids.add(aid)
        if not trust.trusts_id(aid):
            continue
        if first_trusted_ar is None:
            first_trusted_ar = pos
        if pos > edge_pos and not top_of_id:
            warnings.append(f"ignored-authentication-results:{pos}")
            continue
        ar = parse_authentication_results(value, pos)
        if ar is None:
            warnings.append(f"unparsable-authentication-results:{pos}")
            continue
        by_method: dict[str, list[MethodResult]] = {}
        for r in ar.results:
            by_method.setdefault(r.method, []).append(r)
        for method, rs in by_method.items():
            chosen.setdefault(method, (ar, rs))
    for n, (pos, value) in enumerate(block.get_all("received-spf")):
        if pos >= limit:
            break
        if pos > edge_pos and (n > 0 or (first_trusted_ar is not None and first_trusted_ar < pos)):
            break  # below the edge field and not the gateway's: the sender's
        parsed = parse_received_spf(_as_delivered(block, pos, value, repairs_from), pos)
        if parsed and trust.trusts_receiver(parsed.receiver):
            out.spf_header = parsed
            break
    if "spf" in chosen:
        ar, rs = chosen["spf"]
        out.authserv = ar.authserv_id
        out.spf = rs[0].result
        # smtp.mfrom: the RFC 5451 name, still written by some verifiers
        out.ar_mailfrom = rs[0].props.get("smtp.mailfrom", rs[0].props.get("smtp.mfrom"))
        _, out.spf_domain = _mail_from(out.ar_mailfrom)
        if not out.spf_domain and rs[0].props.get("smtp.helo"):
            out.spf_domain = normalize_domain(rs[0].props["smtp.helo"])
            out.helo_only = out.ar_mailfrom is None
    elif out.spf_header is not None:
        out.spf = out.spf_header.result
        _, out.spf_domain = _mail_from(out.spf_header.envelope_from)
        if not out.spf_domain and out.spf_header.helo:
            out.spf_domain = normalize_domain(out.spf_header.helo)
            out.helo_only = out.spf_header.envelope_from is None
    if "dkim" in chosen:
        ar, rs = chosen["dkim"]
        out.authserv = out.authserv or ar.authserv_id
        for r in rs:
            d = _dkim_domain(r)
            out.dkim.append(DkimSignatureResult(d=d, s=r.props.get("header.s") or None,
                                                result=r.result or "permerror", org=org_domain(d)))
    if "dmarc" in chosen:
        ar, rs = chosen["dmarc"]
        out.authserv = out.authserv or ar.authserv_id
        out.dmarc = rs[0].result
        out.policy = dmarc_policy(rs[0])
        hf = rs[0].props.get("header.from")
        out.dmarc_from = normalize_domain(hf.rpartition("@")[2]) if hf else None
    if out.authserv is None and out.spf_header is not None:
        out.authserv = out.spf_header.receiver
    return out


def _envelope(block: HeaderBlock, explicit: str | None, mbox_from: str | None, auth: _Auth,
              edge_pos: int, repairs_from: int | None) -> tuple[str | None, str | None]:
    """Envelope sender: explicit > Return-Path > mbox From_ line > Received-SPF > smtp.mailfrom.
    A Return-Path below the edge hop's own Received field (`edge_pos`) may be the sender's: it
    is believed only when the trusted Received-SPF `envelope-from=` or A-R `smtp.mailfrom`
    names the same address (the same domain when it names only a domain; or both the null
    sender); an SPF result for the HELO, or one naming no identity, vouches for no
    Return-Path but the null sender's."""
    if explicit is not None:
        candidates = [explicit]
    else:
        trusted = [auth.spf_header.envelope_from if auth.spf_header else None, auth.ar_mailfrom]
        rps = block.get_all("return-path")
        rp = _as_delivered(block, rps[0][0], rps[0][1], repairs_from) if rps else None
        if rp is not None and rps[0][0] > edge_pos:
            known = set().union(*(_env_key(t) for t in trusted if t is not None))
            if auth.helo_only:
                # Microsoft 365 checks the HELO for a null sender and writes `Return-Path: <>`
                # far down. Believing it makes the HELO the identity, which SPF checked.
                known.add("<>")
            if not _rp_keys(rp) & known:
                rp = None
        candidates = [rp, mbox_from, *trusted]
    for cand in candidates:
        if cand is None:
            continue
        a, d = _mail_from(cand)
        if a is not None or d is not None:
            if a and "@" not in a:
                return None, None  # a local part alone tells rules nothing reliable
            return a, d
    return None, None


def _spf_for_envelope(spf_domain: str | None, env_from: str | None, env_domain: str | None,
                      helo: str | None) -> bool:
    """An SPF result describes the envelope sender only when it was checked for that
    identity: the MAIL FROM domain, or the HELO name for the null sender (RFC 7208 2.4)."""
    if spf_domain is None:
        return False
    if env_from == "":
        return spf_domain == helo
    return env_domain is not None and spf_domain == env_domain


def _env_key(value: str) -> set:
    """What a MAIL FROM value names, to compare a Return-Path with the trusted one: '<>' for
    the null sender; else the address and ('@', domain). A trusted bare domain
    (smtp.mailfrom=example.org) gives only ('@', domain), which any address there matches;
    a trusted address matches only itself."""
    a, d = _mail_from(value)
    if a == "":
        return {"<>"}
    out: set = {a} if a else set()
    if d and not a:
        out.add(("@", d))
    return out


def _rp_keys(value: str) -> set:
    a, d = _mail_from(value)
    if a == "":
        return {"<>"}
    return ({a} if a else set()) | ({("@", d)} if d else set())


def _client(client_ip: str | None, helo: str | None, edge: Hop | None, spf_header: ReceivedSpf | None
            ) -> tuple[str | None, str | None, str | None]:
    """(client IP, HELO, PTR): explicit > Received field of the first trusted relay > Received-SPF."""
    ip = normalize_ip(client_ip) if client_ip else None
    name = (normalize_ip(helo) or helo.strip().strip("[]").rstrip(".").lower()) if helo else None
    ptr = None
    if edge is not None:
        if client_ip is None:
            ip, ptr = edge.from_ip, edge.from_rdns
        if helo is None:
            name = edge.from_host
    if spf_header is not None:
        if ip is None and client_ip is None:
            ip = normalize_ip(spf_header.client_ip)
        if name is None and helo is None and spf_header.helo:
            name = normalize_ip(spf_header.helo) or normalize_domain(spf_header.helo)
    if name and not is_ip_literal(name):
        name = normalize_domain(name)
    return ip, name, ptr


def _idna_disguised(addr: str, domain: str) -> bool:
    """A non-ASCII From domain whose A-label form is not simply its encoding: IDNA 2003
    mapping dropped or folded characters (zero-width space, fullwidth letters, ideographic
    dots), so the name DMARC checked differs from the one rules would read."""
    raw = addr.strip().strip("<>").strip().rpartition("@")[2].strip().rstrip(".").lower()
    if raw.isascii():
        return False
    try:
        return domain.encode("ascii").decode("idna") != raw
    except UnicodeError:
        return True


def _header_from(block: HeaderBlock, paste: bool = False) -> tuple[str | None, str | None, str | None, bool]:
    """(address, domain, display, invalid) of the single mailbox of the single From field.
    Anything a DMARC verifier would not read as exactly this address is invalid rather than
    mapped onto a valid one (docs/datasets.md, from_invalid)."""
    found = block.get_all("from")
    if len(found) != 1:
        return None, None, None, True
    pos, value = found[0]
    if not paste and pos in block.original:
        # Repaired folding: an MTA saw a broken From and a stray line, not this address.
        return None, None, None, True
    if not mailbox_syntax_ok(value):
        return None, None, None, True
    boxes = mailboxes(value)
    if len(boxes) != 1:
        return None, None, None, True
    display, addr = boxes[0]
    if decode_words(addr) != addr:
        # RFC 2047 forbids encoded-words in an addr-spec: DMARC sees no such address, while a
        # decoding mail client shows the decoded one. Malformed, never that address.
        return None, None, None, True
    local, at, raw_domain = addr.strip().rpartition("@")
    if not at or not local or not domain_syntax_ok(raw_domain):
        return None, None, None, True
    a = normalize_address(addr)
    domain = address_domain(a)
    if not a or not a.partition("@")[0] or not domain:
        return None, None, None, True
    if _idna_disguised(addr, domain):
        return None, None, None, True
    return a, domain, decode_words(display) or None, False


def from_mailboxes(header_from: str | None, from_values: Iterable[str]) -> tuple[str, ...]:
    """MessageFacts.from_mailboxes: (header_from,) for a valid From; for a malformed one every
    address a lenient reading of every From field value finds that normalises to an address
    with a host-name domain, in order, deduplicated (block entries match them: a malformed From
    must not hide a blocked sender). An encoded-word address is never decoded into one.
    Shared by ingest, quarantine-CSV rows and `edrules upgrade` (from the `headers` table)."""
    if header_from is not None:
        return (header_from,)
    found: dict[str, None] = {}
    for value in from_values:
        for _, addr in mailboxes(value):
            a = _lenient_address(addr)
            if a is not None:
                found.setdefault(a)
    return tuple(found)


def from_cell(value: str) -> tuple[str | None, str | None, str | None, bool, tuple[str, ...]]:
    """(address, domain, display, invalid, mailboxes) of a From value given on its own (a
    quarantine CSV's header_from cell), read exactly as a message's single From field."""
    block = split_header_block(("From: " + " ".join(value.split())).encode("utf-8", "replace"))
    address, domain, display, invalid = _header_from(block)
    return address, domain, display, invalid, from_mailboxes(address, (v for _, v in block.get_all("from")))


def _lenient_address(addr: str) -> str | None:
    if "=?" in addr and decode_words(addr) != " ".join(addr.split()):
        return None  # an encoded-word (RFC 2047 forbids them in an addr-spec): no address
    local, at, raw_domain = addr.strip().rpartition("@")
    if not at or not local.strip() or not domain_syntax_ok(raw_domain):
        return None
    a = normalize_address(addr)
    domain = address_domain(a)
    # A non-ASCII label IDNA could not encode stays as written: not a name anyone can block.
    if not domain or not domain.isascii() or not domain_syntax_ok(domain):
        return None
    return a


def _recipients(block: HeaderBlock, explicit: Sequence[str] | None) -> tuple[Recipient, ...]:
    def rows(addrs, src):
        out, seen = [], set()
        for a in addrs:
            n = normalize_address(a)
            if n and n not in seen:
                seen.add(n)
                out.append(Recipient(n, address_domain(n), src))
        return out

    if explicit:
        got = rows(explicit, "envelope")
        if got:
            return tuple(got)
    # X-Original-To is the RCPT TO before alias expansion (what the gateway saw and what
    # per-recipient scopes mean); Delivered-To is the mailbox after expansion.
    for lname in ("x-original-to", "delivered-to"):
        v = block.first(lname)
        if v:
            got = rows([a for _, a in mailboxes(v)] or [v], lname)
            if got:
                return tuple(got)
    addrs = [a for lname in ("to", "cc") for _, v in block.get_all(lname) for _, a in mailboxes(v)]
    got = rows(addrs, "to-cc")
    return tuple(got) if got else (Recipient("", None, "none"),)


_SCANNER_FIELDS = ("x-spam-flag", "x-spam-status", "x-spam-score", "x-rspamd-action", "x-rspamd-score")


def _scanner_verdict(block: HeaderBlock, limit: int) -> tuple[str | None, float | None]:
    """Positive verdicts of scanners on our side (SpamAssassin, rspamd), above `limit`.
    A 'not spam' stamp sets nothing, so a dataset label still applies."""
    cat = None
    score = None
    found = sorted(
        (pos, lname, value)
        for lname in _SCANNER_FIELDS
        for pos, value in block.get_all(lname)
        if pos < limit
    )
    for _, lname, value in found:
        v = value.strip().lower()
        if lname == "x-spam-flag" and v.startswith("yes"):
            cat = cat or "spam"
        elif lname == "x-spam-status":
            if v.startswith("yes"):
                cat = cat or "spam"
            score = score if score is not None else _number_after(v, ("score=", "hits="))
        elif lname == "x-spam-score" and score is None:
            score = _number_after(v, ("",))
        elif lname == "x-rspamd-action" and v in _RSPAMD_SPAM:
            cat = cat or "spam"
        elif lname == "x-rspamd-score" and score is None:
            score = _number_after(v, ("",))
    return cat, score


def _number_after(text: str, keys: tuple[str, ...]) -> float | None:
    for k in keys:
        i = text.find(k)
        if i < 0:
            continue
        tok = text[i + len(k):].split(None, 1)[0] if text[i + len(k):].split() else ""
        tok = tok.rstrip(",;")
        try:
            return float(tok)
        except ValueError:
            continue
    return None

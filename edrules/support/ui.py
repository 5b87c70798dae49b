"""ipywidgets pages of the support dashboards; the notebooks in dashboards/ only call these.

Every page starts from the Principal `edrules serve` installed in the kernel for the request
that opened it (edrules.server.principal.current_principal); with none, the page says so and
shows nothing. Actions run here in the kernel, as that principal, through quarantine_view
(which asks can_access for every item) and the gateway runtime. Elements a test or a reader
looks for carry an `edr-*` class or a data-key attribute.
"""

from __future__ import annotations

import html
import io
from typing import Any, Callable

import ipywidgets as w

from edrules.errors import EdrulesError
from edrules.support import quarantine_view as qv

CSS = """
<style>
.edr-page{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;max-width:1180px}
.edr-top{background:#17324d;color:#fff;padding:.55rem 1rem;border-radius:6px;display:flex;gap:1.1rem;align-items:center}
.edr-top a{color:#fff;text-decoration:none}.edr-top a.cur{font-weight:700;border-bottom:2px solid #8fb8e8}
.edr-top .who{margin-left:auto;color:#c9d6e3}.edr-top .brand{font-weight:700}
.edr-card{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:.7rem 1rem;margin:.5rem 0}
.edr-muted{color:#5b6675;font-size:.9em}.edr-err{background:#fdecea;color:#8a1c1c;border:1px solid #f5c2c0;padding:.6rem .9rem;border-radius:5px}
.edr-ok{background:#e8f4ea;color:#1e5b2a;border:1px solid #bfe0c6;padding:.6rem .9rem;border-radius:5px}
.edr-warn{background:#fff6e0;color:#6b4b00;border:1px solid #f0d58c;padding:.6rem .9rem;border-radius:5px}
.edr-badge{display:inline-block;border-radius:999px;padding:0 .55rem;font-size:.82em;color:#fff;background:#6b7785}
.edr-badge.malware{background:#6b3fa0}.edr-badge.phishing{background:#b33a3a}.edr-badge.spam{background:#e08a2c}
.edr-badge.forgery{background:#c0392b}.edr-badge.block{background:#444}.edr-badge.bulk{background:#2f6db3}
.edr-badge.deliver{background:#4c9a5a}.edr-badge.quarantine{background:#e08a2c}.edr-badge.reject{background:#b33a3a}
.edr-badge.released{background:#4c9a5a}.edr-badge.ok{background:#4c9a5a}.edr-badge.info{background:#2f6db3}
.edr-badge.warning{background:#e08a2c}.edr-badge.error{background:#b33a3a}.edr-badge.deleted{background:#9a9a9a}
table.edr-t{border-collapse:collapse;width:100%}table.edr-t td,table.edr-t th{border-bottom:1px solid #e3e7ed;padding:.3rem .45rem;text-align:left;vertical-align:top;font-size:.92em}
table.edr-t th{color:#5b6675;font-size:.8em;text-transform:uppercase}
.edr-count{font-size:1.6em;font-weight:700;display:block}.edr-num{display:inline-block;min-width:130px;margin-right:1rem}
.edr-row{border-bottom:1px solid #eef1f5}.edr-plain{font-size:1.02em;line-height:1.5}
.edr-steps .lm-TabBar-tab{flex:0 0 auto!important;max-width:none!important;min-width:0!important}
pre.edr-pre{white-space:pre-wrap;font-size:.82em;background:#f6f8fa;padding:.5rem;border-radius:4px;max-height:320px;overflow:auto}
</style>
"""

PAGES = (("quarantine", "Quarantine", "quarantine.ipynb"), ("analyzer", "Header analyzer", "analyzer.ipynb"),
         ("wizard", "Security policy", "wizard.ipynb"), ("traffic", "Traffic", "traffic.ipynb"))
# Voila serves a page at <base>voila/render/<name>.ipynb: sibling pages and the server's own
# pages (account, sign out) are reached relative to it, so a base URL prefix keeps working.
ACCOUNT_URL = "../../account"
HOME_URL = "../../"


def e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def badge(text: str) -> str:
    return f'<span class="edr-badge {e(text)}">{e(text)}</span>'


def table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="edr-t {cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def top_bar(principal: Any, current: str) -> w.HTML:
    links = []
    for key, label, nb in PAGES:
        if key in ("wizard", "traffic") and getattr(principal, "role", "user") not in qv.ADMIN_ROLES:
            continue
        links.append(f'<a class="{"cur" if key == current else ""}" href="{nb}">{e(label)}</a>')
    who = (f'{e(principal.address)} ({e(getattr(principal, "label", principal.role))})' if principal else "not signed in")
    bar = w.HTML(CSS + f'<div class="edr-top"><span class="brand">edrules</span>{"".join(links)}'
                       f'<span class="who">{who}</span><a class="edr-account" href="{ACCOUNT_URL}">Account &amp; MFA</a>'
                       f'<a href="{HOME_URL}">All dashboards</a></div>')
    bar.add_class("edr-nav")
    return bar


def _page(principal: Any, current: str, children: list[w.Widget]) -> w.VBox:
    box = w.VBox([top_bar(principal, current), *children])
    box.add_class("edr-page")
    return box


def signed_out_page(current: str) -> w.VBox:
    return _page(None, current, [w.HTML('<p class="edr-err">You are not signed in. '
                                        f'<a href="{HOME_URL}login">Sign in</a> to see this page.</p>')])


def _context():
    from edrules.server.principal import current_principal
    from edrules.support.site import load_site

    return current_principal(), load_site()


def _error_html(exc: Exception) -> str:
    return f'<p class="edr-err" role="alert">{e(exc)}</p>'


def _guard(out: w.HTML, fn: Callable[[], None]) -> None:
    """Run an action; a refusal or bad input shows as one line, never a traceback."""
    try:
        fn()
    except EdrulesError as exc:
        out.value = _error_html(exc)


# == quarantine =================================================================================


class QuarantinePage:
    def __init__(self, site: Any, principal: Any, *, store: Any = None):
        self.site, self.principal = site, principal
        self.store = store or site.store()
        self.selected: set[str] = set()
        p = principal
        cats = ["all", "forgery", "spam", "phishing", "malware", "block", "bulk"]
        self.state = w.Dropdown(options=["quarantined", "released", "deleted", "any"], value="quarantined",
                                description="state", layout=w.Layout(width="210px"))
        self.category = w.Dropdown(options=cats, value="all", description="category", layout=w.Layout(width="210px"))
        self.search = w.Text(placeholder="sender, subject or recipient", description="search",
                             continuous_update=False, layout=w.Layout(width="330px"))
        self.search.add_class("edr-search")
        self.order = w.Dropdown(options=list(qv.ORDERS), value="newest first", description="sort",
                                layout=w.Layout(width="260px"))
        self.page_size = w.Dropdown(options=list(qv.PAGE_SIZES), value=10, description="per page",
                                    layout=w.Layout(width="170px"))
        self.mailbox = w.Text(placeholder="one mailbox (optional)", description="mailbox", continuous_update=False,
                              layout=w.Layout(width="330px"))
        self.prev, self.next = w.Button(description="‹ previous"), w.Button(description="next ›")
        self.prev.add_class("edr-prev")
        self.next.add_class("edr-next")
        self.pageinfo = w.HTML()
        self.pageinfo.add_class("edr-pageinfo")
        self.rows = w.VBox()
        self.rows.add_class("edr-rows")
        self.select_all = w.Checkbox(description="select all on this page", indent=False)
        self.bulk_action = w.Dropdown(options=["release", "trust", "delete"], value="release",
                                      layout=w.Layout(width="120px"))
        self.bulk_go = w.Button(description="apply to selected", button_style="warning")
        self.bulk_go.add_class("edr-bulk")
        self.out = w.HTML()
        self.out.add_class("edr-outcome")
        self.detail = w.VBox()
        self.detail.add_class("edr-detail")
        self._page = 1
        for c in (self.state, self.category, self.order, self.page_size, self.search, self.mailbox):
            c.observe(lambda _ch: self.refresh(page=1), names="value")
        self.prev.on_click(lambda _b: self.refresh(page=self._page - 1))
        self.next.on_click(lambda _b: self.refresh(page=self._page + 1))
        self.select_all.observe(self._select_all, names="value")
        self.bulk_go.on_click(lambda _b: self._bulk())
        filters = [self.state, self.category, self.order, self.page_size]
        second = [self.search] + ([self.mailbox] if p.role in qv.ADMIN_ROLES else [])
        banner = []
        if p.role in qv.ADMIN_ROLES:
            from edrules.support.wizard import needs_wizard

            pending = [d for d in qv.admin_domains(p, site) if needs_wizard(site, d)]
            if pending:
                b = w.HTML(f'<p class="edr-warn edr-first-login">Welcome. {e(", ".join(pending))} has no security policy '
                           f'set up yet: <a href="wizard.ipynb">run the Default Security Policy wizard</a> first.</p>')
                banner.append(b)
        scope = ("your mailbox " + p.address if p.role == "user" else "mail for " + ", ".join(sorted(p.domains)))
        self.widget = _page(p, "quarantine", [
            *banner,
            w.HTML(f"<h2>Quarantine</h2><p class='edr-muted'>Messages the gateway held for {e(scope)}. "
                   "Release sends a message on to its recipient once; Trust sender adds the narrowest safe allow "
                   "entry for you; malware can only be released by a domain admin or the service provider.</p>"),
            w.HBox(filters), w.HBox(second),
            w.HBox([self.select_all, self.bulk_action, self.bulk_go]),
            self.rows, w.HBox([self.prev, self.pageinfo, self.next]), self.out, self.detail,
        ])
        self.refresh()

    # -- list ------------------------------------------------------------------------------

    def query(self, page: int) -> qv.Query:
        return qv.Query(state=None if self.state.value == "any" else self.state.value,
                        category=None if self.category.value == "all" else self.category.value,
                        search=self.search.value, order=self.order.value, page=page,
                        page_size=int(self.page_size.value), recipient=self.mailbox.value.strip().lower() or None)

    def refresh(self, page: int | None = None) -> None:
        page = self._page if page is None else page
        try:
            result = qv.list_page(self.store, self.principal, self.query(page))
        except EdrulesError as exc:
            self.out.value = _error_html(exc)
            return
        self._page = result.page
        self.selected &= {i.id for i in result.items}
        self.pageinfo.value = (f'<span class="edr-muted">&nbsp;page <b data-key="page">{result.page}</b> of '
                               f'<b data-key="pages">{result.pages}</b> · <b data-key="total">{result.total}</b> '
                               f'messages&nbsp;</span>')
        self.prev.disabled, self.next.disabled = result.page <= 1, result.page >= result.pages
        rows = [w.HTML('<div class="edr-muted" style="display:flex;gap:.6rem"><span style="width:28px"></span>'
                       '<b style="width:140px">quarantined</b><b style="width:230px">recipient</b>'
                       '<b style="width:250px">from</b><b style="width:290px">subject</b><b>why</b></div>')]
        if not result.items:
            rows.append(w.HTML('<p class="edr-muted edr-empty">Nothing here with these filters.</p>'))
        for item in result.items:
            rows.append(self._row(item))
        self.rows.children = rows

    def _row(self, item: Any) -> w.HBox:
        box = w.Checkbox(value=item.id in self.selected, indent=False, layout=w.Layout(width="28px"))
        box.observe(lambda ch, i=item.id: (self.selected.add(i) if ch["new"] else self.selected.discard(i)), names="value")
        when = item.quarantined_at.strftime("%Y-%m-%d %H:%M") if item.quarantined_at else "-"
        state = "" if item.state == "quarantined" else " " + badge(item.state)
        summary = w.HTML(
            f'<div style="display:flex;gap:.6rem" data-id="{e(item.id)}"><span style="width:140px">{e(when)}</span>'
            f'<span style="width:230px">{e(qv.short(item.recipient, 32))}</span>'
            f'<span style="width:250px">{e(qv.short(item.header_from or item.envelope_from, 34))}</span>'
            f'<span style="width:290px">{e(qv.short(item.subject, 42))}</span>'
            f'<span>{badge(item.category)}{state}</span></div>')
        open_ = w.Button(description="open", layout=w.Layout(width="70px"))
        open_.add_class("edr-open")
        open_.on_click(lambda _b, i=item.id: self.show(i))
        row = w.HBox([box, summary, open_])
        row.add_class("edr-row")
        row.add_class(f"edr-item-{item.id}")
        return row

    def _select_all(self, change: dict) -> None:
        for child in self.rows.children:
            if isinstance(child, w.HBox) and isinstance(child.children[0], w.Checkbox):
                child.children[0].value = bool(change["new"])

    def _bulk(self) -> None:
        ids = sorted(self.selected)
        if not ids:
            self.out.value = '<p class="edr-warn">Select messages first.</p>'
            return
        outcomes = qv.bulk(self.site, self.store, self.principal, self.bulk_action.value, ids, how="dashboard-bulk")
        ok = sum(o.ok for o in outcomes)
        lines = "".join(f"<li>{e(o.item_id[:12])}…: {'✔' if o.ok else '✘'} {e(o.message)}</li>" for o in outcomes)
        cls = "edr-ok" if ok == len(outcomes) else "edr-warn"
        self.out.value = (f'<div class="{cls} edr-bulk-result"><b>{e(self.bulk_action.value)}: {ok} of '
                          f'{len(outcomes)} done</b><ul>{lines}</ul></div>')
        self.selected.clear()
        self.select_all.value = False
        self.refresh()

    # -- detail ----------------------------------------------------------------------------

    def show(self, item_id: str) -> None:
        try:
            d = qv.detail(self.site, self.store, self.principal, item_id)
        except EdrulesError as exc:
            self.detail.children = [w.HTML(_error_html(exc))]
            return
        it, v = d.item, d.verdict
        facts = [
            ("recipient", e(it.recipient)), ("header From", e(it.header_from)), ("envelope sender", e(it.envelope_from)),
            ("subject", e(it.subject)), ("client IP / HELO", f"{e(it.client_ip)} / {e(it.helo)}"),
            ("quarantined", e(it.quarantined_at) + f" by pack {e(it.pack_name)} {e(it.pack_version or '')}"),
            ("category", badge(it.category)), ("reason", e(it.reason)), ("rule", f"<code>{e(it.rule_id)}</code>"),
            ("state", badge(it.state) + (f" by {e(it.released_by)} at {e(it.released_at)}" if it.released_by else "")),
        ]
        verdict = ""
        if v is not None:
            trace = "".join(f"<li><code>{e(t.step)}</code>: {e(t.detail)}</li>" for t in v.trace)
            verdict = (f'<h4>Verdict today under {e(d.current_pack)}: {badge(str(v.action))} {badge(v.category)}</h4>'
                       f'<p class="edr-plain">{e(d.plain)}</p><p class="edr-muted">trace:</p><ul class="edr-trace">{trace}</ul>')
        headers = "\n".join(f"{k}: {val}" for k, val in d.headers)
        info = w.HTML(
            f'<div class="edr-card"><h3>{e(it.subject or "(no subject)")}</h3>'
            + table(["", ""], [[f"<b>{k}</b>", val] for k, val in facts]) + verdict
            + f'<details><summary>all headers ({len(d.headers)})</summary><pre class="edr-pre edr-headers">{e(headers)}</pre></details>'
            + f'<details><summary>text preview</summary><pre class="edr-pre">{e(d.body_preview)}</pre></details></div>')
        msg = w.HTML()
        msg.add_class("edr-detail-outcome")
        release = w.Button(description="Release", button_style="success", icon="paper-plane")
        release.add_class("edr-release")
        refusal = qv.release_refusal(self.principal, it)
        if refusal:
            release.disabled = True
            msg.value = f'<p class="edr-warn">{e(refusal)}</p>'
        trust = w.Button(description="Trust sender…", icon="check")
        trust.add_class("edr-trust")
        trust.disabled = qv.trust_refusal(self.principal, it) is not None
        delete = w.Button(description="Delete", button_style="danger", icon="trash")
        delete.add_class("edr-delete")
        delete.disabled = it.state == "deleted"
        confirm = w.VBox()

        def after(o) -> None:
            # Re-read the item so its state badge matches what just happened, then say it.
            self.refresh()
            self.show(it.id)
            self.detail.children[-1].value = f'<p class="{"edr-ok" if o.ok else "edr-err"}">{e(o.message)}</p>'

        def do_release(_b):
            release.disabled = True
            after(qv.release_one(self.site, self.store, self.principal, it.id, how="dashboard"))

        def do_trust(_b):
            try:
                pv = qv.trust_preview(self.site, it)
            except EdrulesError as exc:
                msg.value = _error_html(exc)
                return
            radius = qv.trust_blast_radius(self.site, it, pv)
            if radius is None:
                history = '<p class="edr-muted">No history dataset for this domain: the effect cannot be measured.</p>'
            else:
                labels = ", ".join(f"{k} {v}" for k, v in sorted(radius["by_label"].items())) or "nothing"
                bad = radius["forged"] + radius["by_label"].get("phishing", 0) + radius["by_label"].get("malware", 0)
                history = (f'<p class="{"edr-err" if bad else "edr-ok"} edr-trust-history">On your history ({e(radius["dataset"])}) '
                           f'this entry would have delivered <b data-key="trust-newly-delivered">{radius["newly_delivered"]}</b> '
                           f'more messages ({e(labels)}); forged From among them: <b data-key="trust-forged">{radius["forged"]}</b>.'
                           + (" Think twice: this sender's address is also used by attackers on the same network." if bad else "")
                           + "</p>")
            add = w.Button(description="Add this entry", button_style="primary")
            add.add_class("edr-trust-confirm")

            def really(_b2):
                o = qv.trust_one(self.site, self.store, self.principal, it.id, how="dashboard")
                msg.value = f'<p class="{"edr-ok" if o.ok else "edr-err"}">{e(o.message)}</p>'
                confirm.children = []

            add.on_click(really)
            confirm.children = [w.HTML(
                f'<div class="edr-card edr-trust-preview"><b>Entry:</b> <code>allow sender {e(pv.sender)} via {e(pv.via)} '
                f'[{e(pv.scope)}]</b></code><p class="edr-muted">{e(pv.why)}</p><p><b>Lets through:</b> {e(pv.lets_through)}</p>'
                f'<p><b>Still checked:</b> {e(pv.still_checked)}</p>{history}</div>'), add]

        def do_delete(_b):
            delete.disabled = True
            o = qv.delete_one(self.store, self.principal, it.id, how="dashboard")
            self.refresh()
            msg.value = f'<p class="{"edr-ok" if o.ok else "edr-err"}">{e(o.message)}</p>'
            self.detail.children = [w.HTML(f'<div class="edr-card">{e(it.subject or "(no subject)")}: deleted</div>'), msg]

        release.on_click(do_release)
        trust.on_click(do_trust)
        delete.on_click(do_delete)
        self.detail.children = [info, w.HBox([release, trust, delete]), confirm, msg]


def quarantine_page() -> w.VBox:
    principal, site = _context()
    if principal is None:
        return signed_out_page("quarantine")
    return QuarantinePage(site, principal).widget


# == header analyzer ============================================================================


class AnalyzerPage:
    def __init__(self, site: Any, principal: Any):
        from edrules.support.analyzer import MAX_UPLOAD_BYTES

        self.site, self.principal = site, principal
        domains = qv.visible_domains(principal, site)
        self.domain = w.Dropdown(options=domains, value=domains[0] if domains else None, description="domain",
                                 layout=w.Layout(width="360px"))
        self.text = w.Textarea(placeholder="Paste the message's headers here (from the ticket or the mail client's "
                                           "'show original')", layout=w.Layout(width="100%", height="200px"))
        self.text.add_class("edr-paste")
        self.upload = w.FileUpload(accept=".eml,.txt,message/rfc822", multiple=False, description="upload .eml")
        self.upload.add_class("edr-upload")
        self.go = w.Button(description="Analyze", button_style="primary", icon="search")
        self.go.add_class("edr-analyze")
        self.result = w.VBox()
        self.result.add_class("edr-result")
        self.status = w.HTML()
        self.status.add_class("edr-status")
        self.go.on_click(lambda _b: self.run())
        self.upload.observe(lambda _ch: self.run(from_upload=True), names="value")
        self.max_upload = MAX_UPLOAD_BYTES
        self.widget = _page(principal, "analyzer", [
            w.HTML("<h2>Header analyzer</h2><p class='edr-muted'>Why was this message quarantined? Paste its headers "
                   "or upload the .eml: the facts, each recipient's verdict under the domain's current pack, what "
                   "that means in plain words, and the safe fixes ranked by what they would let in.</p>"),
            self.domain, self.text, w.HBox([self.go, self.upload]), self.status, self.result])

    def run(self, from_upload: bool = False) -> None:
        from edrules.support.analyzer import analyze_for_domain

        data, source = self.text.value.encode("utf-8", errors="surrogateescape"), "pasted headers"
        if from_upload or (not self.text.value.strip() and self.upload.value):
            if not self.upload.value:
                return
            f = self.upload.value[0]
            data, source = bytes(f["content"]), f.get("name") or "upload"
        self.status.value = '<p class="edr-muted">analyzing…</p>'
        try:
            a = analyze_for_domain(data, self.site, self.domain.value, source=source)
        except EdrulesError as exc:
            self.status.value = _error_html(exc)
            self.result.children = []
            return
        self.status.value = ""
        self.result.children = self.render(a)

    def render(self, a: Any) -> list[w.Widget]:
        facts = table(["fact", "value"], [[e(k), e(v)] for k, v in a.fact_rows()], "edr-facts")
        warn = "".join(f"<li>{e(x)}</li>" for x in a.explanation.warnings)
        parts = [w.HTML(f'<div class="edr-card"><h3>Facts</h3>{facts}'
                        + (f'<p class="edr-muted">notes on the input:</p><ul class="edr-muted">{warn}</ul>' if warn else "")
                        + "</div>")]
        if not a.answers:
            parts.append(w.HTML('<p class="edr-warn">No recipient found in these headers (no To or Cc): nothing to decide.</p>'))
        for ans in a.answers:
            v = ans.verdict
            trace = "".join(f"<li><code>{e(t.step)}</code>: {e(t.detail)}</li>" for t in v.trace)
            alts = ", ".join(f"{m}: {badge(x)}" for m, x in ans.alternatives.items())
            parts.append(w.HTML(
                f'<div class="edr-card edr-answer" data-recipient="{e(v.recipient)}"><h3>{e(v.recipient)}: {badge(str(v.action))} '
                f'{badge(v.category)}</h3><p class="edr-plain edr-explanation">{e(ans.plain)}</p>'
                f'<p class="edr-muted">pack {e(a.policy_name)} (From-policy {e(a.from_policy)}) · rule <code>{e(v.rule_id)}</code>'
                f' · {e(ans.sentence)}</p><p class="edr-muted">same message under each From-policy: {alts}</p>'
                f'<details><summary>trace</summary><ul class="edr-trace">{trace}</ul></details></div>'))
        parts.append(self._suggestions(a))
        return parts

    def _suggestions(self, a: Any) -> w.Widget:
        if a.suggestions is None:
            return w.HTML(f'<div class="edr-card edr-suggestions"><h3>Safe fixes</h3><p class="edr-muted">{e(a.suggestion_note)}</p></div>')
        t = a.suggestions.table.head(10)
        rec = a.recommended
        rows = [[str(r["rank"]), e(r["kind"]), e(r["scope"]), f"<code>{e(qv.short(r['change'], 90))}</code>",
                 f'{r["delivers"]}/{r["targets"]}', str(r["new_other"]), str(r["new_forged"]),
                 "✔" if r["safe"] else "✘", "✔" if r["durable"] else "one-off"] for _, r in t.iterrows()]
        head = (f'<p class="edr-ok edr-recommended"><b>Recommended:</b> <code>{e(rec.change)}</code> — delivers '
                f'{rec.delivers} of {rec.targets}, lets in {rec.new_other} other messages, {rec.new_forged} forged.</p>'
                if rec else '<p class="edr-warn">No safe durable fix: ask an analyst.</p>')
        html_ = w.HTML(f'<div class="edr-card edr-suggestions"><h3>Safe fixes, ranked</h3>{head}'
                       f'<p class="edr-muted">{e(a.suggestion_note)}</p>'
                       + table(["rank", "kind", "scope", "change", "delivers", "other mail let in", "forged", "safe", "lasts"], rows)
                       + "</div>")
        out = w.Output()
        out.add_class("edr-figure")
        with out:
            import matplotlib.pyplot as plt
            from IPython.display import display

            from edrules.workbench.plots import plot_suggestions

            fig = plot_suggestions(a.suggestions, title="Blast radius on the domain's history")
            display(fig)
            plt.close(fig)
        return w.VBox([html_, out])


def analyzer_page() -> w.VBox:
    principal, site = _context()
    if principal is None:
        return signed_out_page("analyzer")
    return AnalyzerPage(site, principal).widget


# == wizard =====================================================================================


MODE_HELP = {
    "strict": "The envelope sender is the identity. A From that differs from it is a forgery (safest; breaks "
              "brands sending through Amazon SES, Mailchimp ...).",
    "aligned": "The From is trusted when DMARC-aligned SPF or DKIM passes. Fixes brands on bulk networks "
               "without trusting forgeable headers (recommended).",
    "relaxed": "The From is trusted as written. Lets forged From lines through: check the what-if.",
}


class WizardPage:
    def __init__(self, site: Any, principal: Any):
        from edrules.support import wizard as wz

        self.wz, self.site, self.principal = wz, site, principal
        domains = qv.admin_domains(principal, site)
        self.domain = w.Dropdown(options=domains, value=domains[0] if domains else None, description="domain",
                                 layout=w.Layout(width="360px"))
        self.numbers = None
        self.out = w.HTML()
        self.out.add_class("edr-apply-outcome")
        self.tabs = w.Tab()
        self.tabs.add_class("edr-steps")
        self.body = w.VBox([self.tabs])
        self.intro = w.HTML()
        self.domain.observe(lambda _c: self.load(), names="value")
        self.widget = _page(principal, "wizard", [
            w.HTML("<h2>Default Security Policy wizard</h2>"), self.intro, self.domain, self.body, self.out])
        if domains:
            self.load()
        else:
            self.body.children = [w.HTML('<p class="edr-err">Only a domain admin or the service provider may change a '
                                         'domain\'s policy.</p>')]

    # -- building the steps ------------------------------------------------------------------

    def load(self) -> None:
        wz, d = self.wz, self.domain.value
        s = wz.load_settings(self.site, d)
        self.loaded = s
        self.numbers = None
        self.out.value = ""
        self.intro.value = (f'<p class="edr-warn edr-first-login">{e(d)} has not been set up yet: these are the current '
                            'defaults. Walk through the steps, measure the change on your mail, then apply.</p>'
                            if not s.configured else
                            f'<p class="edr-muted">Current settings of {e(d)} are loaded. Change any step, measure, apply.</p>')
        self.action = {c: w.Dropdown(options=wz.action_choices(c), value=s.actions.get(c, "quarantine"), description=c,
                                     layout=w.Layout(width="300px")) for c in wz.CATEGORIES}
        self.retention = {c: w.BoundedIntText(value=s.retention_days.get(c, 30), min=0, max=36500, description=c,
                                              layout=w.Layout(width="220px")) for c in wz.CATEGORIES}
        self.freq = w.ToggleButtons(options=list(wz.REPORT_FREQUENCIES), value=s.report.frequency, description="digest")
        self.hour = w.BoundedIntText(value=s.report.hour, min=0, max=23, description="hour (UTC)")
        self.weekday = w.Dropdown(options=list(wz.WEEKDAYS), value=s.report.weekday, description="weekday")
        self.mode = w.ToggleButtons(options=list(wz.FROM_POLICIES), value=s.from_policy, description="From-policy")
        self.mode.add_class("edr-from-policy")
        self.mode_help = w.HTML()
        self.mode.observe(lambda _c: self._mode_help(), names="value")
        self._mode_help()
        self.bulk = {p: w.Dropdown(options=list(wz.BULK_POLICIES), value=v, description=p,
                                   layout=w.Layout(width="300px")) for p, v in sorted(s.bulk_mailers.items())}
        self.relays = w.Textarea(value="\n".join(s.inbound_relays), placeholder="one IP or CIDR per line",
                                 layout=w.Layout(width="420px", height="90px"))
        self.enforce = w.Checkbox(value=s.inbound_enforce, description="reject mail that did not come through these relays",
                                  indent=False)
        self.dns_out = w.HTML()
        self.dns_out.add_class("edr-dns")
        dns_go = w.Button(description="Run dns-check", icon="globe", layout=w.Layout(width="180px"))
        dns_go.add_class("edr-dns-check")
        dns_go.on_click(lambda _b: self.dns())
        measure = w.Button(description="Measure on my history", button_style="info", icon="bar-chart",
                           layout=w.Layout(width="230px"))
        measure.add_class("edr-measure")
        measure.on_click(lambda _b: self.measure())
        self.apply_btn = w.Button(description="Apply", button_style="success", icon="check", disabled=True)
        self.apply_btn.add_class("edr-apply")
        self.apply_btn.on_click(lambda _b: self.apply())
        self.review = w.HTML('<p class="edr-muted">Measure first: Apply is enabled once you have seen what the change '
                             'does to your history.</p>')
        self.review.add_class("edr-review")
        self.plot = w.Output()
        for ctl in self._controls():
            ctl.observe(lambda _c: self._changed(), names="value")
        steps = [
            w.VBox([w.HTML("<p>What happens to mail in each category.</p>"), *self.action.values()]),
            w.VBox([w.HTML("<p>Days the quarantine keeps each category before purging it.</p>"), *self.retention.values()]),
            w.VBox([w.HTML("<p>When users get their quarantine digest (with Quick Release links).</p>"),
                    self.freq, self.hour, self.weekday]),
            w.VBox([self.mode, self.mode_help]),
            w.VBox([w.HTML("<p>Per bulk-mail network: <b>scan</b> (normal checks), <b>allow</b> (never a forgery "
                           "when the network authenticated it), <b>block</b>.</p>"), *self.bulk.values()]),
            w.VBox([w.HTML("<p>If your MX points at a cloud filter, list its relays; enforcing rejects mail that "
                           "bypasses it.</p>"), self.relays, self.enforce]),
            w.VBox([w.HTML("<p>MX, SPF, DKIM and DMARC of the domain, and the records to publish.</p>"), dns_go, self.dns_out]),
            w.VBox([measure, self.review, self.plot, self.apply_btn]),
        ]
        self.tabs.children = steps
        for i, title in enumerate(wz.STEPS):
            self.tabs.set_title(i, f"{i + 1}. {title}")

    def _controls(self) -> list[w.Widget]:
        return [*self.action.values(), *self.retention.values(), self.freq, self.hour, self.weekday, self.mode,
                *self.bulk.values(), self.relays, self.enforce]

    def _mode_help(self) -> None:
        self.mode_help.value = f'<p class="edr-muted">{e(MODE_HELP[self.mode.value])}</p>'

    def _changed(self) -> None:
        # A measurement is only valid for the settings it measured.
        self.numbers = None
        self.apply_btn.disabled = True

    def settings(self):
        wz = self.wz
        return wz.WizardSettings(
            actions={c: d.value for c, d in self.action.items()},
            retention_days={c: int(b.value) for c, b in self.retention.items()},
            report=wz.ReportSchedule(self.freq.value, int(self.hour.value), self.weekday.value),
            from_policy=self.mode.value, bulk_mailers={p: d.value for p, d in self.bulk.items()},
            inbound_relays=tuple(x.strip() for x in self.relays.value.splitlines() if x.strip()),
            inbound_enforce=bool(self.enforce.value), configured=self.loaded.configured)

    # -- actions -----------------------------------------------------------------------------

    def dns(self) -> None:
        try:
            rep = self.wz.dns_report(self.site, self.domain.value)
        except EdrulesError as exc:
            self.dns_out.value = _error_html(exc)
            return
        rows = [[badge(str(f.severity)),
                 e(f.area), e(f.message), f"<code>{e(f.suggestion)}</code>" if f.suggestion else ""] for f in rep.findings]
        self.dns_out.value = (f'<p>overall: <b data-key="dns-worst">{e(rep.worst)}</b></p>'
                              + table(["", "area", "finding", "record to publish"], rows))

    def measure(self) -> None:
        from edrules.workbench import Workbench

        d = self.domain.value
        cfg = self.site.config(d)
        try:
            current = self.site.current_policy(d)
            proposed, text = self.wz.proposed_policy(current, self.settings())
        except EdrulesError as exc:
            self.review.value = _error_html(exc)
            return
        if self.site.dataset_db is None or not cfg.dataset:
            self.review.value = '<p class="edr-warn">This domain has no history dataset: the change cannot be measured.</p>'
            return
        with Workbench(self.site.dataset_db, dataset=cfg.dataset) as wb:
            n = self.wz.whatif_numbers(wb, current, proposed)
            diff = n.diff
            self.plot.clear_output()
            if n.changed:
                with self.plot:
                    import matplotlib.pyplot as plt
                    from IPython.display import display

                    from edrules.workbench.plots import plot_transitions

                    fig = plot_transitions(diff, title="What the change does to your history")
                    display(fig)
                    plt.close(fig)
        self.numbers = n
        labels = ", ".join(f"{k} {v}" for k, v in n.newly_delivered_by_label.items()) or "none"
        nums = [("total", "recipient rows in history"), ("changed", "would change"),
                ("newly_delivered", "newly delivered"), ("newly_delivered_forged", "forged among them"),
                ("newly_stopped", "newly stopped")]
        counts = "".join(f'<span class="edr-num"><span class="edr-count" data-key="{k}">{getattr(n, k)}</span>'
                         f'<span class="edr-muted">{e(t)}</span></span>' for k, t in nums)
        warn = (f'<p class="edr-err">This change lets {n.newly_delivered_forged} forged messages in.</p>'
                if n.newly_delivered_forged else "")
        self.review.value = (f'<div class="edr-card edr-whatif"><h3>What-if on {e(cfg.dataset)} ({e(d)})</h3>{counts}'
                             f'<p class="edr-muted">newly delivered by label: {e(labels)}</p>{warn}'
                             f'<details><summary>rules that will be written</summary><pre class="edr-pre">{e(text)}</pre>'
                             f'</details></div>')
        self.apply_btn.disabled = False

    def apply(self) -> None:
        if self.numbers is None:
            self.out.value = '<p class="edr-warn">Measure the change first.</p>'
            return
        try:
            done = self.wz.apply_settings(self.site, self.domain.value, self.settings(), actor=self.principal.address,
                                          numbers=self.numbers)
        except EdrulesError as exc:
            self.out.value = _error_html(exc)
            return
        self.apply_btn.disabled = True
        self.out.value = (f'<p class="edr-ok edr-applied">Applied to {e(done.domain)}: pack {e(done.pack_name)} signed by '
                          f'{e(done.signed_by)} written to {e(done.pack_path)}; the gateway reloads it. Audited as '
                          f'{e(self.principal.address)}.</p>')


def wizard_page() -> w.VBox:
    principal, site = _context()
    if principal is None:
        return signed_out_page("wizard")
    return WizardPage(site, principal).widget


# == traffic ====================================================================================


class TrafficPage:
    def __init__(self, site: Any, principal: Any):
        self.site, self.principal = site, principal
        domains = qv.visible_domains(principal, site) if principal.role in qv.ADMIN_ROLES else []
        opts = ([("all my domains", "*")] if principal.role == "provider" and len(domains) > 1 else []) + [(d, d) for d in domains]
        self.domain = w.Dropdown(options=opts, value=opts[0][1] if opts else None, description="domain",
                                 layout=w.Layout(width="360px"))
        self.unit = w.ToggleButtons(options=["day", "week"], value="day", description="per")
        self.body = w.VBox()
        self.body.add_class("edr-traffic")
        self.domain.observe(lambda _c: self.refresh(), names="value")
        self.unit.observe(lambda _c: self.refresh(), names="value")
        self.widget = _page(principal, "traffic", [
            w.HTML("<h2>Traffic report</h2><p class='edr-muted'>Mail to your domain over time, under its current "
                   "pack: what was delivered and held, by category and sending network; who sends most and who is "
                   "held most; forged From lines and DMARC results.</p>"), w.HBox([self.domain, self.unit]), self.body])
        if opts:
            self.refresh()
        else:
            self.body.children = [w.HTML('<p class="edr-warn">The traffic report is for domain admins and the service '
                                         'provider.</p>')]

    def refresh(self) -> None:
        from edrules.support.traffic import site_report

        domains = qv.visible_domains(self.principal, self.site) if self.domain.value == "*" else [self.domain.value]
        rep = site_report(self.site, domains, unit=self.unit.value)
        t = rep.totals()
        nums = "".join(f'<span class="edr-num"><span class="edr-count" data-key="{k}">{v}</span>'
                       f'<span class="edr-muted">{e(k.replace("_", " "))}</span></span>' for k, v in t.items())
        figs = []
        for make in (lambda: rep.plot_volume("action"), lambda: rep.plot_volume("label"),
                     lambda: rep.plot_volume("provider"), rep.plot_top, rep.plot_auth):
            out = w.Output()
            out.add_class("edr-figure")
            with out:
                import matplotlib.pyplot as plt
                from IPython.display import display

                fig = make()
                display(fig)
                plt.close(fig)
            figs.append(out)
        top = rep.top_senders(10)
        q = rep.top_quarantined(10)
        tables = w.HTML(
            '<div style="display:flex;gap:1rem"><div class="edr-card" style="flex:1"><h3>Top senders</h3>'
            + table(["sender domain", "recipients", "held", "forged"],
                    [[e(r.sender), str(r.recipients), str(r.held), str(r.forged)] for r in top.itertuples()])
            + '</div><div class="edr-card" style="flex:1"><h3>Top quarantined senders</h3>'
            + table(["sender", "held", "main reason"], [[e(r.sender), str(r.held), badge(r.main_reason)] for r in q.itertuples()])
            + "</div></div>")
        per = rep.per_domain()
        per_html = (table(["domain", "recipients", "held", "forged"],
                          [[e(r.domain), str(r.recipients), str(r.held), str(r.forged)] for r in per.itertuples()])
                    if len(rep.domains) > 1 else "")
        self.body.children = [w.HTML(f'<div class="edr-card">{nums}{per_html}</div>'), *figs[:3], tables, *figs[3:]]


def traffic_page() -> w.VBox:
    principal, site = _context()
    if principal is None:
        return signed_out_page("traffic")
    return TrafficPage(site, principal).widget

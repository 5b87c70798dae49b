"""ipywidgets rule editor: edit entries and policies, watch the what-if against the deployed pack, compile + sign."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import ipywidgets as w
import yaml

from edrules.errors import EdrulesError
from edrules.rules.model import BulkPolicy, FromPolicy, Policy
from edrules.workbench.core import Workbench
from edrules.workbench.deploy import CompiledPack
from edrules.workbench.packs import PackSource, policy_to_rules_yaml
from edrules.workbench.plots import plot_transitions
from edrules.workbench.whatif import WhatIf

ENTRY_KINDS = ("sender", "domain", "ip")
LISTS = ("allow", "block")

# The counts the page shows, in order; each is a span with data-key, which the browser
# test reads, so a reader and a test see the same element.
COUNT_KEYS = (("changed", "changed rows"), ("newly_delivered", "newly delivered"),
              ("newly_delivered_forged", "of them forged"), ("phishing", "of them phishing"),
              ("spam", "of them spam"), ("newly_stopped", "newly stopped"))


class EntryRow:
    """One editable allow/block entry: list, kind, value, optional via and scope."""

    def __init__(self, on_change, on_remove, *, list_: str = "allow", kind: str = "sender",
                 value: str = "", via: str = "", scope: str = "global", extra: dict | None = None):
        self.extra = dict(extra or {})  # id, comment, expires, subdomains: kept, not edited here
        self.list = w.Dropdown(options=LISTS, value=list_, layout=w.Layout(width="80px"))
        self.kind = w.Dropdown(options=ENTRY_KINDS, value=kind, layout=w.Layout(width="90px"))
        self.value = w.Text(value=value, placeholder="address, domain or CIDR", continuous_update=False,
                            layout=w.Layout(width="260px"))
        self.via = w.Text(value=via, placeholder="via (provider, domain, CIDR)", continuous_update=False,
                          layout=w.Layout(width="180px"))
        self.scope = w.Text(value=scope, placeholder="global | domain:D | user:A", continuous_update=False,
                            layout=w.Layout(width="280px"))
        self.remove = w.Button(description="remove", layout=w.Layout(width="80px"))
        self.remove.add_class("edr-remove")
        for widget in (self.list, self.kind, self.value, self.via, self.scope):
            widget.observe(lambda _change: on_change(), names="value")
        self.remove.on_click(lambda _b: on_remove(self))
        self.box = w.HBox([self.list, self.kind, self.value, self.via, self.scope, self.remove])
        self.box.add_class("edr-entry")

    def to_rules(self) -> tuple[str, dict[str, Any]] | None:
        """(list, rules-file item), or None for a row with no value yet."""
        if not self.value.value.strip():
            return None
        item = {k: v for k, v in self.extra.items() if k not in ENTRY_KINDS and k not in ("via", "scope")}
        item[self.kind.value] = self.value.value.strip()
        if self.via.value.strip():
            item["via"] = self.via.value.strip()
        if self.scope.value.strip() and self.scope.value.strip() != "global":
            item["scope"] = self.scope.value.strip()
        return self.list.value, item


class RuleEditor:
    """A widget over a Workbench: starts from the deployed pack, edits a copy, and shows the
    what-if of the copy against the deployed pack after every change."""

    def __init__(self, wb: Workbench, deployed: PackSource, *, name: str | None = None,
                 out_dir: str | Path | None = None, key_dir: str | Path | None = None):
        self.wb = wb
        self.deployed: Policy = wb.pack(deployed)
        self.out_dir, self.key_dir = out_dir, key_dir
        self.last: WhatIf | None = None
        self.compiled: CompiledPack | None = None
        base = yaml.safe_load(policy_to_rules_yaml(self.deployed))
        self._base = {k: v for k, v in base.items() if k not in ("allow", "block", "bulk_mailers", "from_policy", "name")}

        self.name = w.Text(value=name or f"{self.deployed.name}-edited", description="pack name",
                           continuous_update=False)
        self.from_policy = w.ToggleButtons(options=[m.value for m in FromPolicy],
                                           value=self.deployed.from_policy.value, description="From-policy")
        self.from_policy.add_class("edr-from-policy")
        providers = sorted(set(wb.auth_by_provider()["provider"]) - {"(direct)"} | set(self.deployed.bulk_mailers))
        self.bulk = {
            p: w.Dropdown(options=[b.value for b in BulkPolicy],
                          value=self.deployed.bulk_mailers.get(p, BulkPolicy.SCAN).value,
                          description=p, layout=w.Layout(width="260px"))
            for p in providers
        }
        self.rows: list[EntryRow] = []
        self.rows_box = w.VBox()
        for lst in LISTS:
            for item in base.get(lst) or []:
                self._add_row(lst, item)
        self.add = w.Button(description="add entry", icon="plus")
        self.add.add_class("edr-add")
        self.add.on_click(lambda _b: self.add_entry())
        self.counts = w.HTML()
        self.counts.add_class("edr-counts")
        self.detail = w.HTML()
        # A PNG in an Image widget, not an Output: it renders the same in Voila, JupyterLab
        # and in tests without a kernel.
        self.figure = w.Image(format="png", layout=w.Layout(max_width="900px"))
        self.figure.add_class("edr-figure")
        self.compile_button = w.Button(description="compile + sign", button_style="primary")
        self.compile_button.add_class("edr-compile")
        self.compile_button.on_click(lambda _b: self.compile())
        self.result = w.HTML()
        self.result.add_class("edr-result")
        self.from_policy.observe(lambda _c: self.refresh(), names="value")
        for dd in self.bulk.values():
            dd.observe(lambda _c: self.refresh(), names="value")
        self.widget = w.VBox([
            w.HTML(f"<p>What-if against the deployed pack "
                   f"<b>{html.escape(self.deployed.name)}</b> over dataset "
                   f"<b>{html.escape(str(wb.dataset or 'all'))}</b>.</p>"),
            self.from_policy,
            w.HTML("<b>Bulk mailers</b>"), w.HBox(list(self.bulk.values()), layout=w.Layout(flex_flow="row wrap")),
            w.HTML("<b>Allow and block entries</b> (first match in order decides)"), self.rows_box, self.add,
            self.counts, self.detail, self.figure,
            w.HBox([self.name, self.compile_button]), self.result,
        ])
        self.widget.add_class("edr-editor")
        self.refresh()

    # -- entries ----------------------------------------------------------------------------

    def _add_row(self, lst: str, item: dict[str, Any]) -> EntryRow:
        kind = next(k for k in ENTRY_KINDS if k in item)
        row = EntryRow(self.refresh, self._remove, list_=lst, kind=kind, value=str(item[kind]),
                       via=str(item.get("via", "")), scope=str(item.get("scope", "global")), extra=item)
        self.rows.append(row)
        self.rows_box.children = [r.box for r in self.rows]
        return row

    def add_entry(self, lst: str = "allow", kind: str = "sender", value: str = "", *, via: str = "",
                  scope: str = "global") -> EntryRow:
        row = self._add_row(lst, {kind: value, "via": via, "scope": scope} if via else {kind: value, "scope": scope})
        if value:
            self.refresh()
        return row

    def _remove(self, row: EntryRow) -> None:
        self.rows.remove(row)
        self.rows_box.children = [r.box for r in self.rows]
        self.refresh()

    # -- policy and what-if -----------------------------------------------------------------

    def rules(self) -> dict[str, Any]:
        """The edited rules as a rules-file mapping (what compile writes)."""
        data: dict[str, Any] = {"name": self.name.value.strip() or "edited", "from_policy": self.from_policy.value}
        bulk = {p: dd.value for p, dd in self.bulk.items() if dd.value != BulkPolicy.SCAN.value}
        if bulk:
            data["bulk_mailers"] = bulk
        data.update(self._base)
        lists: dict[str, list] = {"allow": [], "block": []}
        for row in self.rows:
            got = row.to_rules()
            if got is not None:
                lists[got[0]].append(got[1])
        data.update({k: v for k, v in lists.items() if v})
        return data

    def policy(self) -> Policy:
        return self.wb.pack(self.rules())

    def refresh(self) -> WhatIf | None:
        """Re-run the what-if; invalid rules show their errors instead of counts."""
        try:
            diff = self.wb.whatif(self.deployed, self.policy())
        except EdrulesError as exc:
            self.last = None
            self.counts.value = f'<div class="edr-error" style="color:#b33a3a"><pre>{html.escape(str(exc))}</pre></div>'
            self.detail.value = ""
            self.figure.value = b""
            return None
        self.last = diff
        c = diff.counts()
        labels = c["newly_delivered_by_label"]
        values = {**c, "phishing": labels.get("phishing", 0), "spam": labels.get("spam", 0)}
        cells = "".join(
            f'<div style="display:inline-block;margin-right:18px"><span class="edr-count" data-key="{k}" '
            f'style="font-size:22px;font-weight:bold;color:{_color(k, values[k])}">{values[k]}</span>'
            f'<br><small>{label}</small></div>'
            for k, label in COUNT_KEYS
        )
        # Detail first: the counts are what a reader (and the browser test) waits on.
        self.detail.value = _summary_html(diff)
        self.figure.value = _png(plot_transitions(diff, title=f"What-if {diff.before} → {diff.after}"))
        self.counts.value = f'<div class="edr-counts-row">{cells}</div>'
        return diff

    def compile(self) -> CompiledPack | None:
        """Compile + sign the edited rules; the pack's metadata carries this what-if."""
        try:
            policy = self.policy()
            self.compiled = self.wb.compile(policy, deployed=self.deployed, out_dir=self.out_dir,
                                            key_dir=self.key_dir)
            loaded = self.wb.verify(self.compiled)
        except EdrulesError as exc:
            self.result.value = f'<span class="edr-error" style="color:#b33a3a">{html.escape(str(exc))}</span>'
            return None
        self.result.value = (
            f'<span class="edr-signed">signed by {html.escape(loaded.signed_by or "-")}, verified</span>: '
            f'<code class="edr-pack-path">{html.escape(str(self.compiled.pack_path))}</code>'
        )
        return self.compiled


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _color(key: str, value: int) -> str:
    alarming = key in ("newly_delivered_forged", "phishing") and value > 0
    return "#b33a3a" if alarming else "#333333"


def _summary_html(diff: WhatIf) -> str:
    if diff.summary.empty:
        return "<p><i>No verdict changes against the deployed pack.</i></p>"
    td = "<td style='padding:2px 14px 2px 0'>"
    rows = "".join(
        f"<tr>{td}{html.escape(r.transition)}</td>{td}{html.escape(r.label)}</td>"
        f"{td}{'yes' if r.forged else 'no'}</td><td style='padding:2px 14px 2px 0;text-align:right'>{r.recipients}</td>"
        f"{td}{html.escape(r.top_senders or '')}</td>{td}{html.escape(r.top_providers or '')}</td></tr>"
        for r in diff.summary.itertuples()
    )
    th = "<th style='padding:2px 14px 2px 0;text-align:left'>"
    return (f"<table class='edr-summary'><thead><tr>{th}transition</th>{th}label</th>{th}forged From</th>"
            f"{th}rows</th>{th}top senders</th>{th}top providers</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")

"""ipywidgets rule editor: edit entries and policies, watch the what-if against the deployed pack, compile + sign."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd
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
    """One editable allow/block entry: list, kind, value, via, scope on the first line; id,
    comment, subdomains and expiry date on the second. Every field is written back as the
    rules file spells it, so what compile signs is what the analyst saw."""

    def __init__(self, on_change, on_remove, *, list_: str = "allow", kind: str = "sender",
                 value: str = "", via: str = "", scope: str = "global", extra: dict | None = None):
        extra = dict(extra or {})
        self.list = w.Dropdown(options=LISTS, value=list_, layout=w.Layout(width="80px"))
        self.kind = w.Dropdown(options=ENTRY_KINDS, value=kind, layout=w.Layout(width="90px"))
        self.value = w.Text(value=value, placeholder="address, domain or CIDR", continuous_update=False,
                            layout=w.Layout(width="260px"))
        self.via = w.Text(value=via, placeholder="via (provider, domain, CIDR)", continuous_update=False,
                          layout=w.Layout(width="180px"))
        self.scope = w.Text(value=scope, placeholder="global | domain:D | user:A", continuous_update=False,
                            layout=w.Layout(width="280px"))
        self.id = w.Text(value=str(extra.get("id") or ""), placeholder="id (optional)",
                         continuous_update=False, layout=w.Layout(width="170px"))
        self.comment = w.Text(value=str(extra.get("comment") or ""), placeholder="comment (why, ticket)",
                              continuous_update=False, layout=w.Layout(width="360px"))
        self.subdomains = w.Checkbox(value=extra.get("subdomains") is True, description="subdomains",
                                     indent=False, layout=w.Layout(width="110px"))
        self.expires = w.Text(value=str(extra.get("expires") or ""), placeholder="expires YYYY-MM-DD",
                              continuous_update=False, layout=w.Layout(width="150px"))
        self.remove = w.Button(description="remove", layout=w.Layout(width="80px"))
        self.remove.add_class("edr-remove")
        for widget in (self.list, self.kind, self.value, self.via, self.scope, self.id, self.comment,
                       self.subdomains, self.expires):
            widget.observe(lambda _change: on_change(), names="value")
        self.remove.on_click(lambda _b: on_remove(self))
        self.id.add_class("edr-id")
        self.expires.add_class("edr-expires")
        self.box = w.VBox([
            w.HBox([self.list, self.kind, self.value, self.via, self.scope, self.remove]),
            w.HBox([self.id, self.comment, self.subdomains, self.expires],
                   layout=w.Layout(margin="0 0 6px 84px")),
        ])
        self.box.add_class("edr-entry")

    def to_rules(self) -> tuple[str, dict[str, Any]] | None:
        """(list, rules-file item), or None for a row with no value yet."""
        if not self.value.value.strip():
            return None
        item: dict[str, Any] = {}
        if self.id.value.strip():
            item["id"] = self.id.value.strip()
        item[self.kind.value] = self.value.value.strip()
        if self.subdomains.value:
            item["subdomains"] = True
        if self.via.value.strip():
            item["via"] = self.via.value.strip()
        if self.scope.value.strip() and self.scope.value.strip() != "global":
            item["scope"] = self.scope.value.strip()
        if self.comment.value.strip():
            item["comment"] = self.comment.value.strip()
        if self.expires.value.strip():
            item["expires"] = self.expires.value.strip()  # the parser says when it is no date
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
        # Drill-down: pick a group of the summary, see its rows with full text.
        self.drill = w.Dropdown(description="rows of", options=[], layout=w.Layout(width="640px"))
        self.drill.add_class("edr-drill")
        self.drill_rows = w.HTML()
        self.drill_rows.add_class("edr-drill-rows")
        self.drill.observe(lambda _c: self._show_rows(), names="value")
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
                   f"<b>{html.escape(str(wb.dataset or 'all'))}</b> "
                   f"({html.escape(wb.now_used.describe())}).</p>"),
            self.from_policy,
            w.HTML("<b>Bulk mailers</b>"), w.HBox(list(self.bulk.values()), layout=w.Layout(flex_flow="row wrap")),
            w.HTML("<b>Allow and block entries</b> (first match in order decides)"), self.rows_box, self.add,
            self.counts, self.detail, self.figure, self.drill, self.drill_rows,
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
            self.counts.value = (
                '<div class="edr-error" style="color:#b33a3a"><b>These rules do not compile, so there '
                f'is no what-if to show:</b><pre style="white-space:pre-wrap">{html.escape(str(exc))}</pre></div>')
            self.detail.value = ""
            # No image at all, rather than an empty (broken-looking) one.
            self.figure.layout.display = "none"
            self.drill.options, self.drill_rows.value = [], ""
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
        self.figure.layout.display = "block"  # None would leave the page's display:none
        groups = [(f"{r.transition} · {r.label} · {'forged From' if r.forged else 'From not forged'} "
                   f"({r.recipients} rows)", (r.transition, r.label, bool(r.forged)))
                  for r in diff.summary.itertuples()]
        self.drill.options = groups
        self.drill.value = groups[0][1] if groups else None
        self._show_rows()
        self.counts.value = f'<div class="edr-counts-row">{cells}</div>'
        return diff

    def drill_down(self, transition: str, label: str, forged: bool) -> pd.DataFrame:
        """The changed rows of one summary group, every column."""
        rows = self.last.rows if self.last is not None else None
        if rows is None:
            raise EdrulesError("no what-if to drill into: the rules do not compile")
        sel = rows[(rows["transition"] == transition) & (rows["label"].fillna("(none)") == label)
                   & (rows["forged"] == forged)]
        return sel.reset_index(drop=True)

    def _show_rows(self) -> None:
        if self.drill.value is None or self.last is None:
            self.drill_rows.value = ""
            return
        sel = self.drill_down(*self.drill.value)
        self.drill_rows.value = _rows_html(sel, limit=50)

    def rules_yaml(self) -> str:
        """The edited rules as the rules file compile writes (`edrules pack compile` accepts it)."""
        return policy_to_rules_yaml(self.policy())

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


ENV_DATASET = "EDRULES_DATASET"
ENV_RULES = "EDRULES_RULES"


class EditorApp:
    """The rule-editor dashboard: choose any dataset file, dataset and deployed rules file
    (defaults from $EDRULES_DB, $EDRULES_DATASET, $EDRULES_RULES, else the demo), then edit."""

    def __init__(self, db: str | Path | None = None, *, dataset: str | None = None,
                 rules: str | Path | None = None, out_dir: str | Path | None = None):
        import os

        from edrules.workbench.core import default_db, repo_data_dir

        self.out_dir = out_dir
        self.db = w.Text(value=str(db or default_db()), description="dataset file",
                         style={"description_width": "110px"}, layout=w.Layout(width="560px"))
        self.dataset = w.Combobox(value=dataset or os.environ.get(ENV_DATASET, "demo"),
                                  description="dataset", placeholder="(all)", ensure_option=False,
                                  layout=w.Layout(width="300px"))
        self.rules = w.Text(value=str(rules or os.environ.get(ENV_RULES)
                                      or repo_data_dir() / "rules" / "current.yaml"),
                            description="deployed rules", style={"description_width": "110px"},
                            layout=w.Layout(width="560px"))
        self.open_button = w.Button(description="open", button_style="info")
        self.open_button.add_class("edr-open")
        self.open_button.on_click(lambda _b: self.open())
        self.message = w.HTML()
        self.message.add_class("edr-app-message")
        self.body = w.VBox()
        self.editor: RuleEditor | None = None
        self.wb: Workbench | None = None
        self.widget = w.VBox([w.HBox([self.db, self.dataset]), w.HBox([self.rules, self.open_button]),
                              self.message, self.body])
        self.open()

    def open(self) -> RuleEditor | None:
        if self.wb is not None:
            self.wb.close()
        dataset = self.dataset.value.strip() or None
        try:
            self.wb = Workbench(self.db.value.strip(), dataset=dataset)
            self.dataset.options = list(self.wb.datasets())
            self.editor = RuleEditor(self.wb, deployed=Path(self.rules.value.strip()), out_dir=self.out_dir)
        except EdrulesError as exc:
            self.editor = None
            self.body.children = []
            self.message.value = f'<div class="edr-error" style="color:#b33a3a">{html.escape(str(exc))}</div>'
            return None
        self.message.value = (f"<small>{html.escape(self.wb.now_used.describe())}; signing key: "
                              f"{html.escape(str(self.wb.key_dir()))}</small>")
        self.body.children = [self.editor.widget]
        return self.editor


_ROW_VIEW = (("msg_key", "message"), ("received_at", "received"), ("recipient", "recipient"),
             ("header_from", "header From"), ("bulk_provider", "provider"), ("rule_before", "rule before"),
             ("rule_after", "rule after"), ("reason_after", "why, after"), ("subject", "subject"))


def _rows_html(rows, limit: int = 50) -> str:
    """Changed rows in full (wrapped, never cut), a missing value as '-'."""
    if rows.empty:
        return ""
    td = "<td style='padding:2px 10px 2px 0;vertical-align:top;white-space:normal;overflow-wrap:break-word'>"
    body = []
    for r in rows.head(limit).to_dict(orient="records"):
        cells = []
        for col, _ in _ROW_VIEW:
            v = r.get(col)
            text = "-" if v is None or (isinstance(v, float) and v != v) or str(v) in ("NaT", "") else str(v)
            if col == "msg_key":
                text = text[:12]
            cells.append(f"{td}{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    th = "<th style='padding:2px 10px 2px 0;text-align:left'>"
    more = f"<p><i>first {limit} of {len(rows)} rows</i></p>" if len(rows) > limit else ""
    return (f"<table class='edr-rows' style='table-layout:auto;max-width:1200px'><thead><tr>"
            + "".join(f"{th}{name}</th>" for _, name in _ROW_VIEW)
            + f"</tr></thead><tbody>{''.join(body)}</tbody></table>{more}")


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
    td = "<td style='padding:2px 14px 2px 0;vertical-align:top;white-space:normal'>"
    rows = "".join(
        f"<tr>{td}{html.escape(r.transition)}</td>{td}{html.escape(r.label)}</td>"
        f"{td}{'yes' if r.forged else 'no'}</td><td style='padding:2px 14px 2px 0;text-align:right'>{r.recipients}</td>"
        f"{td}{html.escape(r.top_senders or '-')}</td>{td}{html.escape(r.top_providers or '-')}</td></tr>"
        for r in diff.summary.itertuples()
    )
    th = "<th style='padding:2px 14px 2px 0;text-align:left'>"
    return (f"<table class='edr-summary'><thead><tr>{th}transition</th>{th}label</th>{th}forged From</th>"
            f"{th}rows</th>{th}top senders</th>{th}top providers</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")

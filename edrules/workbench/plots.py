"""Figures a reader takes in at a glance; each takes workbench results and returns a matplotlib Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from edrules.workbench.whatif import WhatIf

# One meaning, one colour, in every figure: green is wanted mail, red is what an attacker sent.
COLORS = {
    "deliver": "#4c9a5a", "tag": "#8fbf7f", "quarantine": "#e08a2c", "reject": "#b33a3a",
    "ham": "#4c9a5a", "spam": "#e08a2c", "phishing": "#b33a3a", "malware": "#6b3fa0",
    "(none)": "#9a9a9a", "forged": "#b33a3a", "aligned": "#4c9a5a", "targets": "#2f6db3",
}
_ORDER = ("deliver", "tag", "quarantine", "reject", "ham", "spam", "phishing", "malware", "(none)")


def _style(ax, title: str, xlabel: str | None = None, ylabel: str | None = None) -> None:
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="x" if ax.get_xlabel() and not ylabel else "y", alpha=0.3)


def _keys(values) -> list[str]:
    present = list(dict.fromkeys(values))
    return [k for k in _ORDER if k in present] + sorted(k for k in present if k not in _ORDER)


# Bar width per bucket, in days (matplotlib date units): a weekly bar spans most of its week.
_BUCKET_DAYS = {"day": 1, "week": 7, "month": 30, "quarter": 91, "year": 365}


def _bucket_unit(buckets: pd.Series) -> str:
    """The bucket the data was grouped by, from the spacing of its buckets."""
    b = pd.Series(pd.to_datetime(buckets.unique())).sort_values()
    if len(b) < 2:
        return "day"
    gap = b.diff().dropna().min().days
    return "year" if gap >= 365 else "month" if gap >= 28 else "week" if gap >= 7 else "day"


def plot_volume(volume: pd.DataFrame, title: str = "Recipient rows per day", *,
                unit: str | None = None) -> Figure:
    """Stacked bars per time bucket from Workbench.volume() (by verdict action or by label).
    Each bar is as wide as its bucket (day, week, month, year), so weekly or multi-year data
    does not draw as hairlines."""
    fig, ax = plt.subplots(figsize=(9, 4.0))
    wide = volume.pivot_table(index="bucket", columns="key", values="recipients", aggfunc="sum", fill_value=0)
    wide = wide[_keys(wide.columns)]
    unit = unit or _bucket_unit(volume["bucket"]) if len(volume) else "day"
    width = 0.85 * _BUCKET_DAYS.get(unit, 1)
    # Bars start at their bucket's first day and span it (align="edge"), as a calendar reads.
    bottom = None
    for key in wide.columns:
        ax.bar(pd.to_datetime(wide.index), wide[key], bottom=bottom, width=width, align="edge",
               label=key, color=COLORS.get(key, None))
        bottom = wide[key] if bottom is None else bottom + wide[key]
    fig.autofmt_xdate()
    _style(ax, title, ylabel=f"recipients per {unit}")
    _legend(ax, ncol=len(wide.columns))
    return fig


def plot_transitions(diff: WhatIf, title: str | None = None) -> Figure:
    """What a what-if changes, newly delivered to the right and newly stopped to the left, per
    transition and label (label colours); the forged-From part of each bar is hatched red.
    A stopped bar of ham is lost wanted mail: it points left and says "stopped", never reading
    as a green "good" bar among the deliveries."""
    s = diff.summary
    title = title or f"What-if {diff.before} → {diff.after}"
    n = 0 if s.empty else s[["transition", "label"]].drop_duplicates().shape[0]
    fig, ax = plt.subplots(figsize=(9, 2.0 + 0.45 * max(1, n)))
    if s.empty:
        ax.text(0.5, 0.5, "no verdict changes" if diff.total else "0 rows evaluated: nothing compared",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
        return fig
    g = s.groupby(["transition", "label", "forged"])["recipients"].sum().unstack("forged", fill_value=0)
    for col in (False, True):
        if col not in g.columns:
            g[col] = 0
    delivered = ("deliver", "tag")

    def direction(t: str) -> int:
        before, _, after = t.partition("→")
        if after in delivered and before not in delivered:
            return 1
        if before in delivered and after not in delivered:
            return -1
        return 0

    g = g.reset_index()
    g["dir"] = g["transition"].map(direction)
    # Top to bottom: newly delivered, then other changes, then newly stopped.
    g = g.sort_values(["dir", "transition", "label"], ascending=[True, False, False]).reset_index(drop=True)
    y = list(range(len(g)))
    sign = g["dir"].where(g["dir"] != 0, 1)
    auth, forged = g[False] * sign, g[True] * sign
    # Stopped rows: the label's colour washed out with a dark edge, so stopped ham is visibly
    # "lost mail", not the solid green of a delivery.
    for i, r in g.iterrows():
        a, f = auth.iloc[i], forged.iloc[i]
        colour = COLORS.get(r["label"], COLORS["(none)"])
        if r["dir"] < 0:
            ax.barh([i], [a], color=colour, alpha=0.35, edgecolor="#333333", linewidth=1.2)
        else:
            ax.barh([i], [a], color=colour)
        ax.barh([i], [f], left=a, color="white", edgecolor=COLORS["forged"], hatch="///")
    ax.axvline(0, color="#333333", linewidth=0.8)
    for i, r in g.iterrows():
        total = int(r[False] + r[True])
        text = f"{total}" + (f" ({int(r[True])} forged)" if r[True] else "")
        x = (r[False] + r[True]) * (sign.iloc[i])
        ax.text(x, i, f"  {text}" if r["dir"] >= 0 else f"{text}  ", va="center", fontsize=8,
                ha="left" if r["dir"] >= 0 else "right")
    kind = {1: "newly delivered", -1: "newly STOPPED", 0: "other change"}
    ax.set_yticks(y, [f"{kind[d]}: {t}  ·  {lab}" for t, lab, d in zip(g["transition"], g["label"], g["dir"])],
                  fontsize=8)
    # Room for the count labels on both sides; symmetric when anything was stopped.
    lim = 1.4 * max(1, (g[False] + g[True]).max())
    ax.set_xlim(-lim if (g["dir"] < 0).any() else 0, lim if (g["dir"] >= 0).any() else lim * 0.15)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _p: f"{abs(int(v))}"))
    # Legend keys: what the fills mean, independent of which labels appear.
    ax.barh([0], [0], color=COLORS["(none)"], label="bar colour: label (ham green, spam orange, phishing red)")
    ax.barh([0], [0], color="white", edgecolor=COLORS["forged"], hatch="///", label="forged From")
    if (g["dir"] < 0).any():
        ax.barh([0], [0], color=COLORS["(none)"], alpha=0.35, edgecolor="#333333",
                label="washed out: newly stopped (held back)")
    _style(ax, title, xlabel="← newly stopped   ·   recipient rows   ·   newly delivered →")
    _legend(ax, ncol=3)
    return fig


def plot_whatif_over_time(diff: WhatIf, unit: str = "day", title: str | None = None) -> Figure:
    """Changed recipient rows per day / week / month: newly delivered up (forged part hatched),
    newly stopped down, so a change that bites only on some days shows when."""
    t = diff.over_time(unit)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    title = title or f"What-if {diff.before} → {diff.after}, per {unit}"
    if t.empty:
        ax.text(0.5, 0.5, "no verdict changes", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
        return fig
    x = pd.to_datetime(t["bucket"])
    width = 0.85 * _BUCKET_DAYS[unit]
    ok = t["newly_delivered"] - t["newly_delivered_forged"]
    ax.bar(x, ok, width=width, align="edge", color=COLORS["deliver"], label="newly delivered")
    ax.bar(x, t["newly_delivered_forged"], bottom=ok, width=width, align="edge", color="white",
           edgecolor=COLORS["forged"], hatch="///", label="of them forged From")
    ax.bar(x, -t["newly_stopped"], width=width, align="edge", color=COLORS["quarantine"],
           label="newly stopped")
    if t["other"].any():
        ax.bar(x, t["other"], bottom=t["newly_delivered"], width=width, align="edge",
               color=COLORS["(none)"], label="other change")
    ax.axhline(0, color="#333333", linewidth=0.8)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _p: f"{abs(int(v))}"))
    fig.autofmt_xdate()
    _style(ax, title, ylabel=f"rows per {unit} (stopped ↓)")
    _legend(ax)
    return fig


def plot_auth_by_provider(auth: pd.DataFrame, title: str = "Authentication by sending network") -> Figure:
    """Per provider (Workbench.auth_by_provider()): messages, aligned-authenticated, forged."""
    a = auth.sort_values("messages")
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.42 * len(a)))
    y = range(len(a))
    ax.barh(y, a["messages"], color="#d9d9d9", label="messages")
    ax.barh([i + 0.2 for i in y], a["aligned"], height=0.3, color=COLORS["aligned"], label="aligned SPF/DKIM/DMARC")
    ax.barh([i - 0.2 for i in y], a["forged"], height=0.3, color="white", edgecolor=COLORS["forged"],
            hatch="///", label="forged From")
    ax.set_yticks(list(y), a["provider"], fontsize=8)
    _style(ax, title, xlabel="messages")
    _legend(ax)
    return fig


def plot_top_senders(top: pd.DataFrame, title: str = "Top sender domains") -> Figure:
    t = top.iloc[::-1]
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.38 * len(t)))
    y = range(len(t))
    ax.barh(y, t["messages"], color="#d9d9d9", label="messages")
    ax.barh(y, t["bad_label"], color=COLORS["spam"], height=0.45, label="labelled spam/phishing/malware")
    ax.set_yticks(list(y), t["sender"], fontsize=8)
    _style(ax, title, xlabel="messages")
    _legend(ax)
    return fig


def _legend(ax, ncol: int = 4) -> None:
    # At the foot of the figure: inside the axes it would sit on the longest bar.
    fig = ax.figure
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, fontsize=8, ncol=ncol, loc="lower left",
               bbox_to_anchor=(0.01, 0.0))
    fig.tight_layout(rect=(0, 0.32 / fig.get_figheight(), 1, 1))


def plot_suggestions(suggestions, title: str | None = None) -> Figure:
    """Blast radius of the best candidate of each kind, in rank order: the chosen mail it
    delivers versus everything else it would let in."""
    t = suggestions.per_kind().iloc[::-1]
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.42 * len(t)))
    y = list(range(len(t)))
    safe_other = t["new_other"] - t["new_spam"] - t["new_phishing"] - t["new_malware"]
    parts = (("delivers chosen", t["delivers"], COLORS["targets"]),
             ("other ham / unlabelled", safe_other, COLORS["ham"]),
             ("spam", t["new_spam"], COLORS["spam"]),
             ("phishing / malware", t["new_phishing"] + t["new_malware"], COLORS["phishing"]))
    left = pd.Series(0, index=t.index)
    for label, vals, color in parts:
        ax.barh(y, vals, left=left, color=color, label=label)
        left = left + vals
    for i, (_, row) in enumerate(t.iterrows()):
        flag = (f"{row['new_forged']} forged" if not row["safe"]
                else "safe" if row["durable"] else "safe, but one-off")
        ax.text(left.iloc[i], i, f"  {flag}", va="center", fontsize=7,
                color="#333333" if row["safe"] else COLORS["forged"])
    names = [f"{r['rank']}. {r['kind']} [{_short_scope(r['scope'])}]" for _, r in t.iterrows()]
    ax.set_yticks(y, names, fontsize=8)
    _style(ax, title or "Candidate fixes (best scope of each kind), narrowest safe first",
           xlabel="recipient rows newly delivered")
    _legend(ax)
    return fig


def _short_scope(scope: str) -> str:
    return scope.split("@")[0] + "@…" if scope.startswith("user:") else scope


def plot_policy_comparison(table: pd.DataFrame, title: str = "Newly delivered versus the deployed pack") -> Figure:
    """Grouped bars from Workbench.compare(): per candidate, what it newly delivers by label and forged."""
    # The same scheme as every figure: label colours, forged From hatched red, stopped dark.
    cols = [("ham_authenticated", "ham, From authenticated", COLORS["ham"], None),
            ("ham_forged", "ham, forged From", COLORS["ham"], "///"),
            ("spam", "spam", COLORS["spam"], None),
            ("phishing", "phishing", COLORS["phishing"], None),
            ("stopped", "newly stopped", "#555555", None)]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(cols)
    x = range(len(table))
    for j, (col, label, color, hatch) in enumerate(cols):
        xs = [i - 0.4 + width * (j + 0.5) for i in x]
        ax.bar(xs, table[col], width=width, color=color, label=label, hatch=hatch,
               edgecolor=COLORS["forged"] if hatch else None)
        for xi, v in zip(xs, table[col]):
            if v:
                ax.text(xi, v, str(int(v)), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x), table["pack"], fontsize=8)
    _style(ax, title, ylabel="recipient rows")
    _legend(ax, ncol=5)
    return fig


def plot_exposure(exposure: pd.DataFrame, title: str = "Forgery exposure of allow entries") -> Figure:
    e = exposure.iloc[::-1]
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.5 * len(e)))
    y = list(range(len(e)))
    ax.barh(y, e["messages"], color="#d9d9d9", label="delivered by the entry")
    # Label colours stay reserved for labels: suspicion is grey / blue, a forged From hatched red.
    ax.barh([i + 0.2 for i in y], e["unaligned"], height=0.25, color="#7a7a7a", label="not aligned-authenticated")
    ax.barh([i - 0.05 for i in y], e["forged"], height=0.25, color="white", edgecolor=COLORS["forged"],
            hatch="///", label="forged From")
    ax.barh([i - 0.3 for i in y], e["unusual_network"], height=0.25, color=COLORS["targets"], label="unusual network")
    ax.set_yticks(y, [f"{r.entry_id}" for r in e.itertuples()], fontsize=8)
    _style(ax, title, xlabel="messages")
    _legend(ax)
    return fig

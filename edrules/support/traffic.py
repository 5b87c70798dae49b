"""Traffic report: volume over time by verdict, category and provider, top senders, forgery and DMARC over time.

One frame of per-recipient rows per domain (its history dataset, verdicts under its current
pack, evaluated by the workbench), concatenated for a service provider's view; every table
and chart is an aggregation of that frame, so the numbers of all charts add up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

import pandas as pd

from edrules.rules.model import Policy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from edrules.support.site import Site
    from edrules.workbench import Workbench

ROW_COLUMNS = ["domain", "recipient", "received_at", "action", "decision", "label", "provider",
               "sender_domain", "header_from", "forged", "dmarc"]

_ROWS_SQL = """
SELECT split_part(v.recipient, '@', 2) AS domain, v.recipient, f.received_at, v.action,
       v.category AS decision, coalesce(f.label, '(none)') AS label,
       coalesce(f.bulk_provider, '(direct)') AS provider,
       coalesce(f.header_from_domain, '(none)') AS sender_domain, f.header_from,
       coalesce(f.forged, FALSE) AS forged, coalesce(f.dmarc, 'none') AS dmarc
FROM {table} v JOIN wb_facts f ON f.dataset = v.dataset AND f.msg_key = v.msg_key
WHERE split_part(v.recipient, '@', 2) = $domain AND f.received_at IS NOT NULL
"""

HELD = ("quarantine", "reject")


def domain_rows(wb: "Workbench", policy: Policy, domain: str) -> pd.DataFrame:
    """Per-recipient rows of one domain's history under `policy` (the workbench's verdicts)."""
    table = wb.verdict_table(policy)
    return wb.sql(_ROWS_SQL.format(table=table), {"domain": domain})


@dataclass(frozen=True, slots=True)
class TrafficReport:
    domains: tuple[str, ...]
    rows: pd.DataFrame = field(repr=False)
    unit: str = "day"

    @property
    def empty(self) -> bool:
        return self.rows.empty

    def _bucket(self) -> pd.Series:
        ts = pd.to_datetime(self.rows["received_at"], utc=True).dt.tz_localize(None)
        if self.unit == "day":
            return ts.dt.normalize()
        return ts.dt.to_period({"week": "W", "month": "M"}[self.unit]).dt.start_time

    def volume(self, by: str = "action") -> pd.DataFrame:
        """Recipient rows per time bucket by `action` (verdict), `label` (category) or `provider`."""
        if by not in ("action", "label", "provider", "decision"):
            raise ValueError(f"cannot group volume by {by!r}")
        if self.empty:
            return pd.DataFrame(columns=["bucket", "key", "recipients"])
        df = self.rows.assign(bucket=self._bucket())
        out = df.groupby(["bucket", by]).size().rename("recipients").reset_index().rename(columns={by: "key"})
        return out.sort_values(["bucket", "key"]).reset_index(drop=True)

    def totals(self) -> dict[str, int]:
        r = self.rows
        return {"recipients": int(len(r)), "delivered": int((~r["action"].isin(HELD)).sum()),
                "held": int(r["action"].isin(HELD).sum()), "forged": int(r["forged"].sum()),
                "dmarc_fail": int((r["dmarc"] == "fail").sum())}

    def top_senders(self, n: int = 10) -> pd.DataFrame:
        """Most frequent sender domains (header From), with how much of theirs was held or forged."""
        if self.empty:
            return pd.DataFrame(columns=["sender", "recipients", "held", "forged"])
        g = self.rows.groupby("sender_domain").agg(
            recipients=("recipient", "size"), held=("action", lambda a: int(a.isin(HELD).sum())),
            forged=("forged", "sum"))
        g = g.reset_index().rename(columns={"sender_domain": "sender"})
        g["forged"] = g["forged"].astype(int)
        return g.sort_values(["recipients", "sender"], ascending=[False, True]).head(n).reset_index(drop=True)

    def top_quarantined(self, n: int = 10) -> pd.DataFrame:
        """Senders (header From address) with the most held recipient rows, and why they were held."""
        held = self.rows[self.rows["action"].isin(HELD)]
        if held.empty:
            return pd.DataFrame(columns=["sender", "held", "main_reason"])
        g = held.groupby(held["header_from"].fillna("(no From)")).agg(
            held=("recipient", "size"), main_reason=("decision", lambda d: d.value_counts().index[0]))
        g = g.reset_index().rename(columns={"header_from": "sender"})
        return g.sort_values(["held", "sender"], ascending=[False, True]).head(n).reset_index(drop=True)

    def auth_over_time(self) -> pd.DataFrame:
        """Per bucket: recipient rows, forged, and DMARC pass / fail / other."""
        if self.empty:
            return pd.DataFrame(columns=["bucket", "recipients", "forged", "dmarc_pass", "dmarc_fail", "dmarc_other"])
        df = self.rows.assign(bucket=self._bucket())
        out = df.groupby("bucket").agg(
            recipients=("recipient", "size"), forged=("forged", "sum"),
            dmarc_pass=("dmarc", lambda d: int((d == "pass").sum())),
            dmarc_fail=("dmarc", lambda d: int((d == "fail").sum())))
        out["dmarc_other"] = out["recipients"] - out["dmarc_pass"] - out["dmarc_fail"]
        out["forged"] = out["forged"].astype(int)
        return out.reset_index()

    def per_domain(self) -> pd.DataFrame:
        if self.empty:
            return pd.DataFrame(columns=["domain", "recipients", "held", "forged"])
        g = self.rows.groupby("domain").agg(recipients=("recipient", "size"),
                                             held=("action", lambda a: int(a.isin(HELD).sum())),
                                             forged=("forged", "sum"))
        g["forged"] = g["forged"].astype(int)
        return g.reset_index()

    # -- charts -------------------------------------------------------------------------------

    def plot_volume(self, by: str = "action") -> "Figure":
        from edrules.workbench.plots import plot_volume

        if self.empty:
            return _empty_figure(f"No traffic for {', '.join(self.domains) or 'these domains'} yet")
        titles = {"action": "Recipients per day by verdict", "label": "Recipients per day by category",
                  "provider": "Recipients per day by sending network", "decision": "Recipients per day by decision"}
        return plot_volume(self.volume(by), title=titles[by].replace("day", self.unit))

    def plot_top(self, n: int = 10) -> "Figure":
        import matplotlib.pyplot as plt

        top, q = self.top_senders(n), self.top_quarantined(n)
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
        a.barh(top["sender"][::-1], top["recipients"][::-1], color="#2f6db3", label="recipients")
        a.barh(top["sender"][::-1], top["held"][::-1], color="#e08a2c", label="held")
        a.set_title("Top sender domains", loc="left", fontweight="bold", fontsize=11)
        a.legend(frameon=False, fontsize=8)
        b.barh(q["sender"][::-1], q["held"][::-1], color="#b33a3a")
        b.set_title("Top quarantined senders", loc="left", fontweight="bold", fontsize=11)
        for ax in (a, b):
            ax.tick_params(axis="y", labelsize=8)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
        fig.tight_layout()
        return fig

    def plot_auth(self) -> "Figure":
        import matplotlib.pyplot as plt

        auth = self.auth_over_time()
        fig, ax = plt.subplots(figsize=(9, 3.6))
        if not auth.empty:
            ax.plot(auth["bucket"], auth["dmarc_pass"], color="#4c9a5a", marker="o", ms=3, label="DMARC pass")
            ax.plot(auth["bucket"], auth["dmarc_fail"], color="#e08a2c", marker="o", ms=3, label="DMARC fail")
            ax.plot(auth["bucket"], auth["forged"], color="#b33a3a", marker="o", ms=3, label="forged From")
        ax.set_title(f"Forgery and DMARC per {self.unit}", loc="left", fontweight="bold", fontsize=11)
        ax.set_ylabel("recipients")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if not auth.empty:
            ax.legend(frameon=False, ncol=3, fontsize=8)
        fig.autofmt_xdate()
        return fig


def build_report(slices: Iterable[tuple[str, "Workbench", Policy]], unit: str = "day") -> TrafficReport:
    """slices: (domain, workbench over that domain's dataset, its current policy)."""
    frames, domains = [], []
    for domain, wb, policy in slices:
        domains.append(domain)
        frames.append(domain_rows(wb, policy, domain))
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROW_COLUMNS)
    return TrafficReport(tuple(domains), rows, unit)


def site_report(site: "Site", domains: Iterable[str], unit: str = "day") -> TrafficReport:
    """The report for the domains a principal may see (one for an admin, all for a provider)."""
    from edrules.workbench import Workbench

    slices, benches = [], {}
    for d in domains:
        cfg = site.config(d)
        if site.dataset_db is None or not cfg.dataset:
            continue
        wb = benches.get(cfg.dataset)
        if wb is None:
            wb = benches[cfg.dataset] = Workbench(site.dataset_db, dataset=cfg.dataset)
        slices.append((cfg.domain, wb, site.current_policy(d)))
    return build_report(slices, unit)


def _empty_figure(text: str) -> "Figure":
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 1.6))
    ax.axis("off")
    ax.text(0.0, 0.5, text, fontsize=11, color="#555")
    return fig

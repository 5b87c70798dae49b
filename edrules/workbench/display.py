"""Notebook output helpers: key numbers tests can read back, figures saved as screenshots on request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

# Outputs carrying this MIME type are the numbers a notebook asserts in prose; the notebook
# tests read them back and compare them with their own SQL counts.
NUMBERS_MIME = "application/vnd.edrules.numbers+json"
ENV_SCREENSHOTS = "EDRULES_SCREENSHOTS"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flat(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested counts as rows ('labels · ham'), so a reader sees a table, not a Python dict."""
    out: list[tuple[str, Any]] = []
    for k, v in values.items():
        key = f"{prefix}{str(k).replace('_', ' ')}"
        if isinstance(v, Mapping):
            out += _flat(v, f"{key} · ") if v else [(key, "none")]
        else:
            out.append((key, "-" if v is None else v))
    return out


def numbers_markdown(name: str, values: Mapping[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in _flat(values))
    return f"**{name}**\n\n| | |\n|---|---|\n{rows}\n"


def show_numbers(name: str, values: Mapping[str, Any]) -> None:
    """Display key numbers as a small table, machine-readable too. Returns nothing, so a
    cell ending with it shows the numbers once."""
    from IPython.display import display

    plain = {str(k): _plain(v) for k, v in values.items()}
    text = "\n".join([name, *(f"  {k}: {v}" for k, v in _flat(plain))])
    display({"text/markdown": numbers_markdown(name, plain),
             "text/plain": text,
             NUMBERS_MIME: {"name": name, "values": plain}}, raw=True)


def show_figure(fig, name: str) -> None:
    """Display a figure inline; with $EDRULES_SCREENSHOTS set, also save it there as NAME.png."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    out = os.environ.get(ENV_SCREENSHOTS)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(out) / f"{name}.png", dpi=110, metadata={"Software": None})
    display(fig)
    plt.close(fig)  # the inline backend would otherwise draw it a second time


# Cells wrap instead of being cut: the change, reason and reason_after texts are the point.
_TABLE_CSS = ("<style>.edr-table table td, .edr-table table th {white-space: normal; "
              "text-align: left; vertical-align: top; max-width: 32em; word-break: break-word}</style>")


def table_view(df: pd.DataFrame, *, max_rows: int = 20, hide: tuple[str, ...] = ()) -> pd.DataFrame:
    """What show_table displays: hidden columns dropped, keys shortened, missing values '-'."""
    view = df.drop(columns=[c for c in hide if c in df.columns]).head(max_rows).copy()
    if "msg_key" in view.columns:
        view["msg_key"] = view["msg_key"].str[:12]
    for col in view.columns:
        if view[col].dtype == object or str(view[col].dtype).startswith(("string", "datetime")):
            view[col] = view[col].astype(object).where(view[col].notna(), "-")
    return view.reset_index(drop=True)


def show_table(df: pd.DataFrame, *, max_rows: int = 20, hide: tuple[str, ...] = ()) -> None:
    """A DataFrame without index noise, full cell text wrapped, a missing value as '-'."""
    from IPython.display import display

    view = table_view(df, max_rows=max_rows, hide=hide)
    more = f"\n({len(df)} rows, first {max_rows} shown)" if len(df) > max_rows else ""
    # Plain to_html, not a Styler: Styler HTML carries a random table id, and notebook
    # output must be identical run to run.
    with pd.option_context("display.max_colwidth", None, "display.width", 200):
        text = view.to_string(index=False) + more
    body = view.to_html(index=False, na_rep="-", escape=True, border=0)
    display({"text/html": f'{_TABLE_CSS}<div class="edr-table">{body}{more and f"<p>{more.strip()}</p>"}</div>',
             "text/plain": text}, raw=True)

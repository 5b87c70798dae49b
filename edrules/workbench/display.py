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


def numbers_markdown(name: str, values: Mapping[str, Any]) -> str:
    rows = "\n".join(f"| {k.replace('_', ' ')} | {_plain(v)} |" for k, v in values.items())
    return f"**{name}**\n\n| | |\n|---|---|\n{rows}\n"


def show_numbers(name: str, values: Mapping[str, Any]) -> None:
    """Display key numbers as a small table, machine-readable too. Returns nothing, so a
    cell ending with it shows the numbers once."""
    from IPython.display import display

    plain = {str(k): _plain(v) for k, v in values.items()}
    display({"text/markdown": numbers_markdown(name, plain),
             "text/plain": f"{name}: {plain}",
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


def show_table(df: pd.DataFrame, *, max_rows: int = 20, hide: tuple[str, ...] = ()) -> None:
    """A DataFrame without index noise, long keys shortened for reading."""
    from IPython.display import display

    view = df.drop(columns=[c for c in hide if c in df.columns]).head(max_rows).copy()
    if "msg_key" in view.columns:
        view["msg_key"] = view["msg_key"].str[:12]
    # A plain frame, not a Styler: Styler HTML carries a random table id, and notebook
    # output must be identical run to run.
    display(view.reset_index(drop=True))

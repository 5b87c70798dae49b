"""The analyst's view of a dataset's messages: the stored facts and derived facts, no derivation.

Alignment, the forged flag and the sending network are columns ingest computed once
(edrules/derive.py); this view only names the upstream classification `label`, as the
what-if and traffic reports call it.
"""

from __future__ import annotations

import duckdb

FACTS_VIEW = "wb_facts"

_FACTS_SQL = f"CREATE OR REPLACE TEMP VIEW {FACTS_VIEW} AS SELECT *, category AS label FROM messages"


def install_facts_view(con: duckdb.DuckDBPyConnection) -> str:
    """Create (or refresh) the temp view of analyst facts on this connection; returns its name."""
    con.execute(_FACTS_SQL)
    return FACTS_VIEW

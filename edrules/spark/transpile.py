"""The SQL backend's DuckDB query rewritten for Spark SQL with sqlglot: one query, two engines.

`verdict_sql` stays the single statement of the semantics; this module only rewrites the
DuckDB-specific spellings that sqlglot does not map by itself (each rewrite says why), and the
result is validated by running it (tests/test_spark.py compares every verdict with DuckDB's).
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp


def _drop_materialized(node: exp.Expression) -> exp.Expression:
    # `AS [NOT] MATERIALIZED` is a DuckDB/PostgreSQL planner hint; Spark's grammar has none.
    if isinstance(node, exp.CTE) and node.args.get("materialized") is not None:
        node.set("materialized", None)
    return node


def _unsigned_to_signed(node: exp.Expression) -> exp.Expression:
    # Spark has no unsigned 64-bit type. CIDR keys are 64-bit halves compared by bit pattern
    # (masking with & and equality), which two's-complement BIGINT preserves exactly; the
    # tables bound for Spark carry the same bits as int64 (edrules.spark.evaluate).
    if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.UBIGINT:
        return exp.DataType.build("BIGINT")
    return node


def _list_length(node: exp.Expression) -> exp.Expression:
    # DuckDB's len() of a list reads as string LENGTH in Spark; in the verdict query every
    # len() is of a list, so it is Spark's size().
    if isinstance(node, exp.Length):
        return exp.ArraySize(this=node.this)
    return node


def _list_slice(node: exp.Expression) -> exp.Expression:
    # DuckDB `p[k:]` (1-based, to the end) is Spark's slice(p, k, size(p) - k + 1).
    if isinstance(node, exp.Bracket) and len(node.expressions) == 1 and isinstance(node.expressions[0], exp.Slice):
        sl = node.expressions[0]
        if sl.args.get("expression") is None:
            start = sl.this
            length = exp.Add(this=exp.Sub(this=exp.ArraySize(this=node.this.copy()), expression=start.copy()),
                             expression=exp.Literal.number(1))
            return exp.Anonymous(this="SLICE", expressions=[node.this, start, length])
    return node


def _full_match(node: exp.Expression) -> exp.Expression:
    # regexp_full_match anchors at both ends; Spark's RLIKE searches, so anchor the pattern.
    if isinstance(node, exp.RegexpFullMatch):
        pattern = node.expression
        if isinstance(pattern, exp.Literal) and pattern.is_string:
            return exp.RegexpLike(this=node.this, expression=exp.Literal.string(f"^(?:{pattern.this})$"))
    return node


TRANSFORMS = (_drop_materialized, _unsigned_to_signed, _list_length, _list_slice, _full_match)


def to_spark(duckdb_sql: str) -> str:
    """The DuckDB verdict query as Spark SQL."""
    tree = sqlglot.parse_one(duckdb_sql, read="duckdb")
    for transform in TRANSFORMS:
        # Bottom-up, one node at a time: a rewrite may wrap nodes that another rewrite must reach.
        for node in list(tree.walk(bfs=False)):
            new = transform(node)
            if new is not node:
                if node is tree:
                    tree = new
                else:
                    node.replace(new)
    return tree.sql(dialect="spark", pretty=True)

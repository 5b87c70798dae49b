"""Ingest raw mail (eml, maildir, mbox, header dumps, quarantine CSV) into a DuckDB dataset.

Names are imported on first use (PEP 562): the gateway imports edrules.ingest.extract and
must not pull in DuckDB/pyarrow through this package's load and pipeline modules.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "ExtractedMessage": "edrules.ingest.extract",
    "Recipient": "edrules.ingest.extract",
    "facts_from_bytes": "edrules.ingest.extract",
    "read_facts": "edrules.ingest.load",
    "IngestSummary": "edrules.ingest.pipeline",
    "ingest_paths": "edrules.ingest.pipeline",
    "TrustConfig": "edrules.ingest.trust",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edrules.ingest' has no attribute {name!r}")
    return getattr(import_module(module), name)

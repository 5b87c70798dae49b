"""Ingest raw mail (eml, maildir, mbox, header dumps, quarantine CSV) into a DuckDB dataset."""

from edrules.ingest.extract import ExtractedMessage, Recipient, facts_from_bytes
from edrules.ingest.load import read_facts
from edrules.ingest.pipeline import IngestSummary, ingest_paths
from edrules.ingest.trust import TrustConfig

__all__ = [
    "ExtractedMessage",
    "IngestSummary",
    "Recipient",
    "TrustConfig",
    "facts_from_bytes",
    "ingest_paths",
    "read_facts",
]

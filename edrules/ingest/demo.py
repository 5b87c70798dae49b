"""The bundled demo data as `edrules demo` and Workbench.load_demo both ingest it: which folder
goes into which dataset, with which label, trusting which gateway."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edrules.errors import EdrulesError

if TYPE_CHECKING:  # imported on use: `edrules --help` loads edrules.demo, which reads this module
    from edrules.ingest.pipeline import IngestSummary
    from edrules.ingest.trust import TrustConfig

DATA = Path(__file__).resolve().parent.parent.parent / "data"
TENANT_GATEWAY = "mx1.northwind-traders.cz"  # edrules.synth.world.GATEWAY, without importing synth

# Sample folders with a known label; every other folder of the sample is ingested unlabelled.
SAMPLE_LABELS = {
    "spamassassin_publiccorpus/easy_ham": "ham",
    "spamassassin_publiccorpus/hard_ham": "ham",
    "spamassassin_publiccorpus/spam": "spam",
}
TENANT_LABELS = ("ham", "spam", "phishing", "malware")


@dataclass(frozen=True, slots=True)
class Part:
    """One ingest call: what it reads (as the demo prints it), into which dataset, how labelled."""

    what: str
    paths: tuple[Path, ...]
    dataset: str
    label: str | None = None
    trust: TrustConfig | None = None

    @property
    def name(self) -> str:
        return f"{self.dataset}:{self.what}"


def tenant_trust() -> TrustConfig:
    from edrules.ingest.trust import TrustConfig

    # The gateway stamped Received, Received-SPF and Authentication-Results; nothing else is believed.
    return TrustConfig(authserv_ids=frozenset({TENANT_GATEWAY}), auto_detect=False)


def sample_parts(sample: Path) -> list[Part]:
    """data/sample -> dataset 'sample': the labelled folders one by one, then the rest together."""
    if not sample.is_dir():
        raise EdrulesError(f"sample folder not found: {sample}")
    parts = [Part(f"{rel} ({label})", (sample / rel,), "sample", label)
             for rel, label in SAMPLE_LABELS.items() if (sample / rel).is_dir()]
    labelled_roots = {rel.split("/")[0] for rel in SAMPLE_LABELS}
    rest = sorted(p for p in sample.iterdir() if p.is_dir() and p.name not in labelled_roots)
    return [*parts, Part("other folders (unlabelled)", tuple(rest), "sample")]


def tenant_parts(tenant: Path) -> list[Part]:
    """The demo tenant's label folders -> dataset 'demo'."""
    trust = tenant_trust()
    return [Part(f"{label}/ ({label})", (tenant / label,), "demo", label, trust) for label in TENANT_LABELS]


def quarantine_parts(tenant: Path) -> list[Part]:
    """The gateway's quarantine export -> dataset 'demo-quarantine'."""
    return [Part("quarantine.csv", (tenant / "quarantine.csv",), "demo-quarantine", None, tenant_trust())]


def demo_parts(sample: Path = DATA / "sample", tenant: Path = DATA / "demo-tenant") -> list[Part]:
    """Everything the demo ingests, in its order."""
    return [*sample_parts(sample), *tenant_parts(tenant), *quarantine_parts(tenant)]


def ingest_part(db: str | Path, part: Part, *, jobs: int | None = None) -> IngestSummary:
    from edrules.ingest.pipeline import ingest_paths

    return ingest_paths(db, list(part.paths), dataset=part.dataset, label=part.label, trust=part.trust,
                        jobs=jobs)

"""Analyst workbench: what-if diffs, forgery exposure, safe-rule suggestions, plots and widgets,
and the dataset commands (ingest, evaluate, whatif, explain) that drive it or the Spark engine."""

from edrules.workbench.core import Workbench, default_db, repo_data_dir
from edrules.workbench.evaluate import Backend
from edrules.workbench.suggest import Candidate, CandidateKind, Suggestions, Tier
from edrules.workbench.whatif import WhatIf

__all__ = [
    "Backend", "Candidate", "CandidateKind", "Suggestions", "Tier", "WhatIf", "Workbench",
    "default_db", "repo_data_dir",
]

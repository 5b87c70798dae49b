"""What dns-check reports: findings with a severity, a stable code and a record to publish."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class Severity(IntEnum):
    OK = 0
    INFO = 1
    WARNING = 2
    ERROR = 3

    def __str__(self) -> str:
        return self.name.lower()


class Area(StrEnum):
    MX = "mx"
    SPF = "spf"
    DKIM = "dkim"
    DMARC = "dmarc"


@dataclass(frozen=True, slots=True)
class Finding:
    """One observation. `code` is stable (tests, dashboards).

    `suggestion` is a complete master-file record: published, it clears the finding, and a
    re-run of dns-check reports no error for its area (dns-check verifies this before
    offering it). `advice` is what a person must do where no such record exists (a key to
    generate, a host to name, MX records to remove)."""

    area: Area
    severity: Severity
    code: str
    message: str
    suggestion: str | None = None
    advice: str | None = None

    def to_json(self) -> dict:
        return {"area": str(self.area), "severity": str(self.severity), "code": self.code,
                "message": self.message, "suggestion": self.suggestion, "advice": self.advice}

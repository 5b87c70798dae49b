"""What gateway operators watch: one JSON log line per event, Prometheus counters on --metrics."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_log = logging.getLogger("edrules.gateway")


def setup_logging(stream=None) -> None:
    """JSON lines on stderr (or `stream`), nothing else on that logger: log shippers parse it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    _log.handlers[:] = [handler]
    _log.setLevel(logging.INFO)
    _log.propagate = False


def log_event(record: dict[str, Any], level: int = logging.INFO) -> None:
    """One JSON object per line, with a UTC timestamp first."""
    line = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record}
    _log.log(level, json.dumps(line, ensure_ascii=False, sort_keys=False, default=str))


class Metrics:
    """The gateway's counters, in their own registry (tests run several gateways per process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("edrules_messages", "Messages processed, by SMTP outcome",
                                ["outcome"], registry=r)
        self.verdicts = Counter("edrules_verdicts", "Per-recipient actions taken, by action and category",
                                ["action", "category"], registry=r)
        self.tempfails = Counter("edrules_tempfails", "Messages answered 4xx, by reason",
                                 ["reason"], registry=r)
        self.reloads = Counter("edrules_reloads", "Pack reload attempts, by result and trigger",
                               ["result", "trigger"], registry=r)
        self.releases = Counter("edrules_releases_honoured", "Messages delivered on a verified release header",
                                registry=r)
        self.forged = Counter("edrules_forged_headers_removed", "Header fields from outside removed, by name",
                              ["header"], registry=r)
        self.seconds = Histogram("edrules_message_seconds", "Wall time of Gateway.process",
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
                                 registry=r)
        self.pack_info = Gauge("edrules_pack_loaded_timestamp_seconds",
                               "When the serving pack was loaded, by name and version",
                               ["name", "version"], registry=r)
        self._server = None

    def set_pack(self, name: str, version: str, loaded_at: datetime) -> None:
        self.pack_info.clear()
        self.pack_info.labels(name, version).set(loaded_at.timestamp())

    def serve(self, host: str, port: int) -> None:
        """Expose /metrics on host:port (operators scrape it; 127.0.0.1 unless told otherwise)."""
        self._server = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._server = None

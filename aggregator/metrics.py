"""Prometheus metrics of one aggregator service, in its own CollectorRegistry."""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ServiceMetrics"]

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_STALENESS_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89)


class ServiceMetrics:
    """Counters, gauges and histograms labelled by task (and reason where one applies)."""

    def __init__(self) -> None:
        """Create every metric in a fresh registry (never the process-global one)."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "fedmq_updates_received", "Update messages received", ["task"], registry=r
        )
        self.accepted = Counter(
            "fedmq_updates_accepted", "Updates stored durably", ["task"], registry=r
        )
        self.duplicates = Counter(
            "fedmq_updates_duplicate", "Updates already stored (resends)", ["task"], registry=r
        )
        self.rejected = Counter(
            "fedmq_updates_rejected", "Updates refused, by reason", ["task", "reason"], registry=r
        )
        self.dropped = Counter(
            "fedmq_updates_dropped",
            "Stored updates the strategy refused at fold time, by reason",
            ["task", "reason"],
            registry=r,
        )
        self.folded = Counter(
            "fedmq_updates_folded", "Updates folded into a model", ["task"], registry=r
        )
        self.bytes_in = Counter(
            "fedmq_update_bytes", "Payload bytes of update messages received", ["task"], registry=r
        )
        self.buffer_fill = Gauge(
            "fedmq_buffer_fill", "Updates folded since the last release", ["task"], registry=r
        )
        self.model_version = Gauge(
            "fedmq_model_version", "Committed model version", ["task"], registry=r
        )
        self.leader = Gauge(
            "fedmq_leader", "1 while this replica holds the task's fold lease", ["task"], registry=r
        )
        self.staleness = Histogram(
            "fedmq_update_staleness",
            "Staleness tau of folded updates",
            ["task"],
            buckets=_STALENESS_BUCKETS,
            registry=r,
        )
        self.fold_seconds = Histogram(
            "fedmq_fold_seconds",
            "Time to fold one batch of stream entries",
            ["task"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.release_seconds = Histogram(
            "fedmq_release_seconds",
            "Time from strategy step to committed release",
            ["task"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "fedmq_ingest_batch_seconds",
            "Time to decode, validate and store one batch of messages",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> None:
        """Expose the registry on http://host:port/metrics (a daemon thread)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        logger.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        """Stop the HTTP endpoint if it runs."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

"""Prometheus metrics of one ltx-serve process: queue depth and jobs by status (read from the store at
scrape time, so every API process of a fleet reports the same queue), seconds per stage (reported by
this process's replicas after each job), replica states and restarts."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

REPLICA_STATES = ("starting", "ready", "busy", "restarting", "refused", "stopped")
STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class _StoreCollector:
    """Jobs by status and the queue depth, from the store when scraped."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self):
        jobs = GaugeMetricFamily("ltx_serve_jobs", "jobs in the store by status", labels=["status"])
        depth = GaugeMetricFamily("ltx_serve_queue_depth", "jobs queued, not yet claimed by a replica")
        try:
            counts = self.counts()
        except Exception:  # a scrape during a database outage reports nothing rather than failing
            log.warning("metrics: the job store did not answer", exc_info=True)
            return
        for status in STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        depth.add_metric([], counts.get("queued", 0))
        yield jobs
        yield depth


class Telemetry:
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(counts))
        self.stage_seconds = Histogram(
            "ltx_serve_stage_seconds", "seconds per pipeline stage of finished jobs", ["stage"],
            buckets=STAGE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.job_seconds = Histogram(
            "ltx_serve_job_seconds", "seconds a replica spent on a job, by outcome", ["outcome"],
            buckets=STAGE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.replica_state = Gauge(
            "ltx_serve_replica_state",
            "1 for each replica's current state",
            ["replica", "state"],
            registry=self.registry,
        )
        self.replica_restarts = Counter(
            "ltx_serve_replica_restarts", "replicas restarted after they stopped", ["replica"], registry=self.registry
        )
        self.requests = Counter(
            "ltx_serve_requests", "HTTP requests by route and status code", ["route", "code"], registry=self.registry
        )

    def set_replica(self, replica: str, state: str) -> None:
        for s in REPLICA_STATES:
            self.replica_state.labels(replica, s).set(1 if s == state else 0)

    def observe_stages(self, stages: dict[str, float]) -> None:
        for stage, seconds in stages.items():
            self.stage_seconds.labels(stage).observe(float(seconds))

    def render(self) -> bytes:
        return generate_latest(self.registry)

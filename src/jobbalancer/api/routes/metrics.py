"""``/metrics``: Prometheus text, read from the database at scrape time.

Each app has its own registry (two apps in one process, as in tests, do not collide), and
the collector queries the database on every scrape: the figures are the cluster's, the
same whichever server is scraped.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobbalancer import db, notify, schedules, stats
from jobbalancer.api.deps import EngineDep, SettingsDep, key_from_headers, metrics_allowed

router = APIRouter(tags=["metrics"])


class DatabaseCollector(Collector):
    """Gauges of jobs by state, workers by state, and job slots; notification counters."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterable[Metric]:
        with db.read(self.engine) as conn:
            by_state = stats.jobs_by_state(conn)
            per_worker = stats.by_worker(conn)
            targets = notify.list_targets(conn)
            pending = notify.pending_count(conn)
        jobs = GaugeMetricFamily("jobbalancer_jobs", "Jobs kept, by state.", labels=["state"])
        for state, count in by_state.items():
            jobs.add_metric([state], count)
        yield jobs
        yield self._workers(per_worker)
        slots = stats.slots(per_worker)
        gauge = GaugeMetricFamily(
            "jobbalancer_slots", "Job slots of online, enabled workers.", labels=["kind"]
        )
        for kind, value in (("total", slots.total), ("used", slots.used), ("free", slots.free)):
            gauge.add_metric([kind], value)
        yield gauge
        active = GaugeMetricFamily(
            "jobbalancer_worker_active_jobs", "Assigned and running jobs.", labels=["worker"]
        )
        for w in per_worker:
            active.add_metric([w.name], w.active_jobs)
        yield active
        yield from self._notifications(targets, pending)

    @staticmethod
    def _notifications(targets: list[notify.Target], pending: int) -> Iterable[Metric]:
        delivered = CounterMetricFamily(
            "jobbalancer_notifications_delivered", "Notifications delivered.", labels=["target"]
        )
        failed = CounterMetricFamily(
            "jobbalancer_notification_failures",
            "Failed notification delivery attempts (each retry counts).",
            labels=["target"],
        )
        for t in targets:
            delivered.add_metric([t.name], t.delivered)
            failed.add_metric([t.name], t.failures)
        yield delivered
        yield failed
        yield GaugeMetricFamily(
            "jobbalancer_notifications_pending", "Notifications not yet delivered.", value=pending
        )

    @staticmethod
    def _workers(per_worker: list[stats.WorkerCount]) -> Metric:
        counts = dict.fromkeys(("online", "draining", "offline", "disabled"), 0)
        for w in per_worker:
            counts[w.state] = counts.get(w.state, 0) + 1
        gauge = GaugeMetricFamily("jobbalancer_workers", "Workers, by state.", labels=["state"])
        for state, count in counts.items():
            gauge.add_metric([state], count)
        return gauge


class ScheduleCollector(Collector):
    """Schedules' occurrences: fired, skipped (by reason code), fired late (more than
    schedules.LATE_AFTER after their time); and schedules by state. Counters kept in the
    database, so the same whichever server is scraped."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterable[Metric]:
        with db.read(self.engine) as conn:
            counts = schedules.counters(conn)
            by_state = schedules.count_by_state(conn)
        yield CounterMetricFamily(
            "jobbalancer_schedule_occurrences_fired",
            "Schedule occurrences that submitted a job (run-now included).",
            value=counts["fired"],
        )
        skipped = CounterMetricFamily(
            "jobbalancer_schedule_occurrences_skipped",
            "Schedule occurrences skipped, by reason: overlap, queue_full, owner, refused, missed.",
            labels=["reason"],
        )
        for name, count in counts.items():
            if name.startswith("skipped:"):
                skipped.add_metric([name.removeprefix("skipped:")], count)
        yield skipped
        yield CounterMetricFamily(
            "jobbalancer_schedule_occurrences_late",
            f"Schedule occurrences fired more than {schedules.LATE_AFTER.total_seconds():g} s "
            "after their time.",
            value=counts["late"],
        )
        gauge = GaugeMetricFamily("jobbalancer_schedules", "Schedules, by state.", labels=["state"])
        for state, count in by_state.items():
            gauge.add_metric([state], count)
        yield gauge


def make_registry(engine: sa.Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(engine))
    registry.register(ScheduleCollector(engine))
    return registry


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(request: Request, engine: EngineDep, config: SettingsDep) -> Response:
    """Prometheus metrics. Needs a key unless the setting ``metrics_public`` is on."""
    metrics_allowed(engine, config, key_from_headers(request))
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

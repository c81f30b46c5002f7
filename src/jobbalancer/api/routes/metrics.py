"""``/metrics``: Prometheus text, read from the database at scrape time.

Each app has its own registry (two apps in one process, as in tests, do not collide), and
the collector queries the database on every scrape: the figures are the cluster's, the
same whichever server is scraped. The counters and histograms of jobs' starts and ends
are kept in the database too (jobbalancer.tally): a scrape folds in what happened since
the last one, then reads them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from jobbalancer import balancer, db, errors, notify, schedules, stats, tally
from jobbalancer.api.deps import EngineDep, SettingsDep, key_from_headers, metrics_allowed

router = APIRouter(tags=["metrics"])
log = logging.getLogger(__name__)
# Seconds a scrape waits for SQLite's write lock to fold in the tallies (see
# DatabaseCollector._fold): well inside Prometheus's default 10 s scrape timeout.
FOLD_WAIT = 2.0


class DatabaseCollector(Collector):
    """Gauges of jobs by state, workers by state, job slots, workers' capacity and use,
    and queues; counters and histograms of jobs' starts and ends (folded in first, see
    jobbalancer.tally); notification counters."""

    def __init__(self, engine: sa.Engine, settle: float = tally.SETTLE) -> None:
        self.engine = engine
        self.settle = settle

    def collect(self) -> Iterable[Metric]:
        self._fold()
        with db.read(self.engine) as conn:
            now = db.now(conn)
            by_state = stats.jobs_by_state(conn)
            workers = stats.capacity(conn)
            queues = stats.queues(conn)
            reasons = balancer.wait_reasons(conn, limit=WAIT_REASON_ROWS)
            tallies = tally.read(conn, [q.worker_class for q in queues])
            targets = notify.list_targets(conn)
            pending = notify.pending_count(conn)
        jobs = GaugeMetricFamily("jobbalancer_jobs", "Jobs kept, by state.", labels=["state"])
        for state, count in by_state.items():
            jobs.add_metric([state], count)
        yield jobs
        yield self._workers(workers)
        taking = [w for w in workers if w.state == "online"]
        slots = stats.Slots(sum(w.slots for w in taking), sum(w.active_jobs for w in taking))
        gauge = GaugeMetricFamily(
            "jobbalancer_slots", "Job slots of online, enabled workers.", labels=["kind"]
        )
        for kind, value in (("total", slots.total), ("used", slots.used), ("free", slots.free)):
            gauge.add_metric([kind], value)
        yield gauge
        yield from self._capacity(workers)
        yield from self._queues(queues, now)
        yield self._waiting_for(reasons)
        yield from self._tallies(tallies)
        yield from self._notifications(targets, pending)

    def _fold(self) -> None:
        """Fold in the jobs' starts and ends. It is bookkeeping: a fold that cannot write
        now (SQLite's write lock busy for longer than :data:`FOLD_WAIT`, a read-only or
        standby database, a statement refused) is left to a later scrape, and this scrape
        answers with the tallies as they are."""
        try:
            with db.write(self.engine, wait=FOLD_WAIT) as conn:
                tally.fold(conn, self.settle)
        except (sa.exc.DBAPIError, errors.DatabaseUnavailable, errors.DatabaseRefused) as exc:
            log.warning("metrics: the tallies were not brought up to date (%s)", exc)

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
    def _workers(per_worker: list[stats.Capacity]) -> Metric:
        counts = dict.fromkeys(("online", "draining", "offline", "disabled"), 0)
        for w in per_worker:
            counts[w.state] = counts.get(w.state, 0) + 1
        gauge = GaugeMetricFamily("jobbalancer_workers", "Workers, by state.", labels=["state"])
        for state, count in counts.items():
            gauge.add_metric([state], count)
        return gauge

    @staticmethod
    def _capacity(workers: list[stats.Capacity]) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "jobbalancer_worker_info",
            "Each registered worker (1), with its class and state.",
            labels=["worker", "class", "state"],
        )
        for w in workers:
            info.add_metric([w.name, w.worker_class, w.state], 1)
        yield info
        for name, help_text, value in WORKER_GAUGES:
            gauge = GaugeMetricFamily(name, help_text, labels=["worker"])
            for w in workers:
                figure = value(w)
                if figure is not None:  # not reported (yet): no sample
                    gauge.add_metric([w.name], figure)
            yield gauge

    @staticmethod
    def _queues(queues: list[stats.Queue], now: datetime) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "jobbalancer_queue_waiting", "Jobs waiting for a worker, by class.", labels=["class"]
        )
        oldest = GaugeMetricFamily(
            "jobbalancer_queue_oldest_seconds",
            "Seconds the longest waiting job of the class has waited since it could start "
            "(its submit, or its not_before if later; 0: none waits).",
            labels=["class"],
        )
        for q in queues:
            depth.add_metric([q.worker_class], q.waiting)
            age = 0.0 if q.oldest is None else max((now - q.oldest).total_seconds(), 0.0)
            oldest.add_metric([q.worker_class], age)
        yield depth
        yield oldest

    @staticmethod
    def _waiting_for(reasons: list[balancer.WaitReason]) -> Metric:
        """Waiting jobs by class and what is in their way, in one word (a bounded set of
        label values; the sentences themselves name workers and figures)."""
        counts: dict[tuple[str, str], int] = {}
        for r in reasons:
            key = (r.worker_class, r.waits_for.split()[-1])
            counts[key] = counts.get(key, 0) + r.jobs
        gauge = GaugeMetricFamily(
            "jobbalancer_queue_waiting_for",
            "Waiting jobs by class and what they wait for: memory, cpus, gpus, slot, label, "
            "worker or turn (their pending_reason, in a word).",
            labels=["class", "waits_for"],
        )
        for (cls, what), count in sorted(counts.items()):
            gauge.add_metric([cls, what], count)
        return gauge

    @staticmethod
    def _tallies(tallies: tally.Tallies) -> Iterable[Metric]:
        ended = CounterMetricFamily(
            "jobbalancer_jobs_ended",
            "Jobs that reached a final state, by class and state.",
            labels=["class", "state"],
        )
        for (cls, state), count in tallies.ended.items():
            ended.add_metric([cls, state], count)
        yield ended
        for name, help_text, histograms in (
            ("jobbalancer_job_wait_seconds", "Seconds from submit to start, by class.",
             tallies.wait),
            ("jobbalancer_job_run_seconds", "Seconds from start to end, by class.", tallies.run),
        ):  # fmt: skip
            family = HistogramMetricFamily(name, help_text, labels=["class"])
            for cls, h in histograms.items():
                family.add_metric([cls], h.buckets, h.sum)
            yield family


# Per-worker gauges: (name, help, the figure or None when the worker has not reported it).
# A new figure of the workers table is one line here (and one row in docs/operations.md).
WORKER_GAUGES: tuple[tuple[str, str, Callable[[stats.Capacity], float | None]], ...] = (
    ("jobbalancer_worker_slots", "Job slots (the worker's limit, or its class's).",
     lambda w: w.slots),
    ("jobbalancer_worker_active_jobs", "Assigned and running jobs.", lambda w: w.active_jobs),
    ("jobbalancer_worker_load", "Load average (1 min) the worker reported.", lambda w: w.load),
    ("jobbalancer_worker_cpus", "CPUs the worker reported.", lambda w: w.cpus),
    ("jobbalancer_worker_memory_bytes", "Memory the worker reported, in all.",
     lambda w: w.memory_total),
    ("jobbalancer_worker_memory_available_bytes", "Memory the worker reported available.",
     lambda w: w.memory_available),
    ("jobbalancer_worker_capacity_cpus", "CPUs the worker offers jobs' requests.",
     lambda w: w.offered_cpus),
    ("jobbalancer_worker_capacity_memory_bytes", "Memory the worker offers jobs' requests.",
     lambda w: w.offered_memory),
    ("jobbalancer_worker_capacity_gpus", "GPUs the worker offers jobs' requests.",
     lambda w: w.offered_gpus),
    ("jobbalancer_worker_requested_cpus", "CPUs its assigned and running jobs requested.",
     lambda w: w.requested_cpus),
    ("jobbalancer_worker_requested_memory_bytes",
     "Memory its assigned and running jobs requested.", lambda w: w.requested_memory),
    ("jobbalancer_worker_requested_gpus", "GPUs its assigned and running jobs requested.",
     lambda w: w.requested_gpus),
)  # fmt: skip
# Rows of (class, pending reason) read for jobbalancer_queue_waiting_for, the most first.
WAIT_REASON_ROWS = 1000


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


def make_registry(engine: sa.Engine, settle: float = tally.SETTLE) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(engine, settle))
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

"""/metrics with 100 000 finished jobs and 500 workers: what a scrape costs.

A new database per backend gets 500 workers (in 5 classes, each with its reported load,
CPUs and memory), 100 000 finished jobs over a day and 10 000 waiting ones (bulk
inserted). The app answers in-process (no network: the figures are the server's own
time). Rows:

* backlog: the tallies' cursors start before all 100 000 jobs (as if no scrape had come
  for a day); each scrape folds in at most 10 000 jobs per cursor, the table shows the
  slowest scrape and how many it took to catch up;
* steady, nothing new: a scrape with every job folded in already;
* 1 000 new ends: 1 000 jobs ended since the last scrape;
* the per-worker figures alone, as /metrics read them before (every job grouped by
  worker and state) and now (the workers' rows and their active jobs).

    python -m bench.metrics [--backend sqlite,postgresql,mysql] [--jobs 100000]
                            [--workers 500] [--runs 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher

from bench.cluster import BACKENDS, Database
from jobbalancer import auth, db, stats
from jobbalancer import registry as workers
from jobbalancer.app import create_app
from jobbalancer.db import schema
from jobbalancer.settings import ServerSettings, Settings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx.*", category=UserWarning)
    from fastapi.testclient import TestClient

J = schema.jobs
CLASSES = 5
Rows = list[tuple[str, str]]
STATES = ["done"] * 85 + ["failed"] * 8 + ["killed"] * 3 + ["timeout"] * 2 + ["lost"] * 2


def fill(engine: sa.Engine, n_workers: int, n_jobs: int, waiting: int) -> None:
    rng = random.Random(42)
    with db.write(engine) as conn:
        ids = [
            workers.register(
                conn, name=f"node-{n}", host=f"node-{n}", worker_class=f"class-{n % CLASSES}",
                max_jobs=4, pid=1000 + n, version="bench",
                stats=workers.Stats(load=1.5, cpu_count=16, memory_total=64 << 30,
                                    memory_available=32 << 30),
            )[0]
            for n in range(n_workers)
        ]  # fmt: skip
        class_ids = list(conn.execute(sa.select(schema.worker_classes.c.id)).scalars())
    start = datetime.now(UTC) - timedelta(days=1, hours=2)  # all ended an hour ago
    step = timedelta(days=1) / n_jobs
    rows = []
    for i in range(n_jobs):
        created = start + step * i
        rows.append(_job(rng.choice(STATES), rng.choice(class_ids), rng.choice(ids), created,
                         created + timedelta(seconds=rng.uniform(0, 60)),
                         rng.uniform(0.1, 3600)))  # fmt: skip
    for i in range(waiting):
        rows.append(_job("waiting", class_ids[i % len(class_ids)], None, datetime.now(UTC)))
    for i in range(0, len(rows), 5000):
        with db.write(engine) as conn:
            conn.execute(sa.insert(J), rows[i : i + 5000])


def _job(state: str, class_id: int, worker_id: int | None, created: datetime,
         started: datetime | None = None, ran: float = 0.0) -> dict[str, Any]:  # fmt: skip
    return {
        "state": state, "command": "true", "params": [], "env": {}, "labels": {},
        "worker_class_id": class_id, "need_realtime": False, "priority": 0, "retries": 0,
        "attempt": 1, "kill_requested": False, "output_bytes": 0, "worker_id": worker_id,
        "created_at": created, "assigned_at": started, "started_at": started,
        "finished_at": started + timedelta(seconds=ran) if started else None,
    }  # fmt: skip


def scrape(client: TestClient) -> float:
    t0 = time.perf_counter()
    r = client.get("/metrics")
    elapsed = (time.perf_counter() - t0) * 1000
    assert r.status_code == 200, r.text[:300]
    return elapsed


def timed(call: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def bench(backend: str, args: argparse.Namespace) -> Rows:
    with (
        tempfile.TemporaryDirectory(prefix="jb-bench-metrics-") as tmp,
        Database(backend, Path(tmp)) as url,
    ):
        engine = db.connect(url)
        try:
            db.upgrade(engine)
            app = create_app(Settings(server=ServerSettings(metrics_settle=0)), engine,
                             supervise=False)  # fmt: skip
            key = app.state.first_admin[2]
            t0 = time.perf_counter()
            fill(engine, args.workers, args.jobs, args.waiting)
            print(f"  {backend}: filled in {time.perf_counter() - t0:.1f}s", flush=True)
            with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
                return measure(engine, client, args)
        finally:
            engine.dispose()


def measure(engine: sa.Engine, client: TestClient, args: argparse.Namespace) -> Rows:
    out = []
    with db.write(engine) as conn:  # the cursors before every job: a day's backlog
        conn.execute(sa.update(schema.metric_cursors).values(at=datetime(2000, 1, 1), job_id=0))
    backlog = []
    while True:
        backlog.append(scrape(client))
        with db.read(engine) as conn:
            at = conn.execute(
                sa.select(schema.metric_cursors.c.at).where(schema.metric_cursors.c.name == "ended")
            ).scalar_one()
            last = conn.execute(sa.select(sa.func.max(J.c.finished_at))).scalar_one()
        if at == last or len(backlog) > 100:
            break
    out.append((f"backlog of {args.jobs}: scrapes to catch up / slowest ms",
                f"{len(backlog)} / {max(backlog):.0f}"))  # fmt: skip
    with db.read(engine) as conn:
        ended = conn.execute(
            sa.select(sa.func.sum(schema.metric_counts.c.value)).where(
                schema.metric_counts.c.name == "ended"
            )
        ).scalar_one()
    assert int(ended) == args.jobs, (ended, args.jobs)
    steady = [scrape(client) for _ in range(args.runs)]
    out.append(("steady, nothing new: median / max ms",
                f"{statistics.median(steady):.0f} / {max(steady):.0f}"))  # fmt: skip
    fresh = []
    for _ in range(args.runs):
        with db.write(engine) as conn:
            now = db.now(conn)
            classes = list(conn.execute(sa.select(schema.worker_classes.c.id)).scalars())
            conn.execute(sa.insert(J), [
                _job("done", classes[i % len(classes)], None, now - timedelta(seconds=90),
                     now - timedelta(seconds=30), 30 - i / 1000)
                for i in range(1000)
            ])  # fmt: skip
        fresh.append(scrape(client))
    out.append(("1 000 new ends per scrape: median / max ms",
                f"{statistics.median(fresh):.0f} / {max(fresh):.0f}"))  # fmt: skip
    size = len(client.get("/metrics").content)
    out.append(("scrape size, bytes", f"{size}"))
    with db.read(engine) as conn:
        old = timed(lambda: stats.by_worker(conn), args.runs)
        new = timed(lambda: stats.capacity(conn), args.runs)
    out.append(("per-worker figures before (group all jobs): median ms",
                f"{statistics.median(old):.0f}"))  # fmt: skip
    out.append(("per-worker figures now (workers' rows): median ms",
                f"{statistics.median(new):.0f}"))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=",".join(BACKENDS))
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    auth._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    backends = args.backend.split(",")
    results = {b: bench(b, args) for b in backends}
    labels = [label for label, _ in results[backends[0]]]
    print(f"\n/metrics: {args.jobs} finished jobs, {args.waiting} waiting, "
          f"{args.workers} workers in {CLASSES} classes")  # fmt: skip
    width = max(len(label) for label in labels)
    print(f"{'':{width}}  " + "  ".join(f"{b:>12}" for b in backends))
    for i, label in enumerate(labels):
        print(f"{label:{width}}  " + "  ".join(f"{results[b][i][1]:>12}" for b in backends))


if __name__ == "__main__":
    main()

"""Throughput, start latency and footprint: real server and worker processes.

Throughput is first submit to last job recorded, taken from the database clock
(``max(finished_at) - min(created_at)``) so polling for the end adds nothing.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import psutil
import sqlalchemy as sa

from bench.cluster import Cluster
from jobbalancer.db import schema

COMMAND = "echo hi"
BATCH = 500


def raw_spawn(n: int, concurrency: int = 4) -> float:
    """Jobs per second for a plain Python loop: spawn ``sh -c``, capture output, wait."""

    def one(_: int) -> None:
        subprocess.run(["/bin/sh", "-c", COMMAND], capture_output=True, check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - start)


def _span(cluster: Cluster, ids: list[int]) -> float:
    """Seconds from the first job created to the last one finished (database clock)."""
    j = schema.jobs
    with cluster.engine.connect() as conn:
        first, last = conn.execute(
            sa.select(sa.func.min(j.c.created_at), sa.func.max(j.c.finished_at)).where(
                j.c.id.between(min(ids), max(ids))
            )
        ).one()
    assert isinstance(first, datetime) and isinstance(last, datetime)
    return (last - first).total_seconds()


def check_done(cluster: Cluster, ids: list[int]) -> None:
    """Every job ran and its output and exit code are stored."""
    j, o = schema.jobs, schema.job_output
    with cluster.engine.connect() as conn:
        lo, hi = min(ids), max(ids)
        done = conn.execute(
            sa.select(sa.func.count()).where(
                j.c.id.between(lo, hi), j.c.state == "done", j.c.exit_code == 0
            )
        ).scalar_one()
        logged = conn.execute(
            sa.select(sa.func.count()).where(o.c.job_id.between(lo, hi))
        ).scalar_one()
    if done != len(ids) or logged < len(ids):
        raise RuntimeError(f"only {done} of {len(ids)} jobs done, {logged} output rows")


def submit_batch(cluster: Cluster, n: int) -> list[int]:
    assert cluster.http is not None
    ids: list[int] = []
    for i in range(0, n, BATCH):
        batch = [{"command": COMMAND} for _ in range(min(BATCH, n - i))]
        r = cluster.http.post("/api/v1/jobs/batch", json={"jobs": batch})
        r.raise_for_status()
        ids += [job["id"] for job in r.json()["jobs"]]
    return ids


def submit_singly(cluster: Cluster, n: int, clients: int = 4) -> list[int]:
    """One request per job, from ``clients`` concurrent HTTP clients."""

    def part(count: int) -> list[int]:
        with cluster.client() as http:
            ids = []
            for _ in range(count):
                r = http.post("/api/v1/jobs", json={"command": COMMAND})
                r.raise_for_status()
                ids.append(r.json()["id"])
            return ids

    shares = [n // clients + (i < n % clients) for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        return [i for ids in pool.map(part, shares) for i in ids]


@dataclass(frozen=True)
class Run:
    rate: float  # jobs/s
    cpu_ms: dict[str, float]  # per job, by process kind


def throughput(cluster: Cluster, n: int, *, batch: bool) -> Run:
    before = cluster.cpu_seconds()
    ids = (submit_batch if batch else submit_singly)(cluster, n)
    cluster.wait_finished(ids)
    after = cluster.cpu_seconds()
    check_done(cluster, ids)
    cpu = {k: (after[k] - before[k]) * 1000 / n for k in after}
    return Run(n / _span(cluster, ids), cpu)


def latency(cluster: Cluster, n: int = 200, rate: float = 20.0) -> dict[str, list[float]]:
    """Jobs submitted one at a time, ``rate`` per second, into idle workers: ms from
    submit (created_at) to started_at and to finished_at."""
    assert cluster.http is not None
    time.sleep(1)  # let the workers' polling back off: idle means idle
    ids = []
    next_at = time.monotonic()
    for _ in range(n):
        r = cluster.http.post("/api/v1/jobs", json={"command": COMMAND})
        r.raise_for_status()
        ids.append(r.json()["id"])
        next_at += 1 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))
    cluster.wait_finished(ids)
    j = schema.jobs
    with cluster.engine.connect() as conn:
        rows = conn.execute(
            sa.select(j.c.created_at, j.c.started_at, j.c.finished_at).where(j.c.id.in_(ids))
        ).all()
    return {
        "start": [(s - c).total_seconds() * 1000 for c, s, _ in rows],
        "finish": [(f - c).total_seconds() * 1000 for c, _, f in rows],
    }


def idle_rss(cluster: Cluster) -> dict[str, float]:
    """MiB resident: the server, and the average worker."""

    def rss(pid: int) -> float:
        return float(psutil.Process(pid).memory_info().rss) / 2**20

    assert cluster.server is not None
    return {
        "server": rss(cluster.server.pid),
        "worker": statistics.mean(rss(p.pid) for p in cluster.worker_procs),
    }


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]

"""Throughput and start latency of the working core, against a raw-spawn baseline.

    .venv/bin/python -m bench.core [--jobs 2000] [--backend sqlite|postgresql|mysql]

Prints jobs/s for batch submission through the HTTP API with 2 workers x 2 slots, the
ratio to a plain Python loop spawning the same command 4 at a time, and start latency
(submit → process started, submit → finished) for jobs submitted one at a time into idle
workers. Times inside the cluster come from the database clock, so they compare.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from bench.cluster import Cluster

COMMAND = "echo hi"
URLS = {
    "sqlite": None,
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/{db}",
}


def raw_spawn(n: int, concurrency: int = 4) -> float:
    """Jobs per second for a plain loop: spawn, capture output, wait."""

    def one(_: int) -> None:
        subprocess.run(["/bin/sh", "-c", COMMAND], capture_output=True, check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - start)


def throughput(cluster: Cluster, n: int) -> float:
    assert cluster.http is not None
    start = time.perf_counter()
    ids: list[int] = []
    for i in range(0, n, 500):
        batch = [{"command": COMMAND} for _ in range(min(500, n - i))]
        r = cluster.http.post("/api/v1/jobs/batch", json={"jobs": batch})
        r.raise_for_status()
        ids += [j["id"] for j in r.json()["jobs"]]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        counts = cluster.http.get("/api/v1/stats").json()["jobs"]
        if counts.get("done", 0) + counts.get("failed", 0) >= n:
            break
        time.sleep(0.2)
    return n / (time.perf_counter() - start)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def latency(cluster: Cluster, n: int = 100, rate: float = 20.0) -> dict[str, list[float]]:
    assert cluster.http is not None
    ids = []
    for _ in range(n):
        r = cluster.http.post("/api/v1/jobs", json={"command": COMMAND})
        r.raise_for_status()
        ids.append(r.json()["id"])
        time.sleep(1 / rate)
    time.sleep(1)
    started, finished = [], []
    for job_id in ids:
        job = cluster.http.get(f"/api/v1/jobs/{job_id}").json()
        created = _ts(job["created_at"])
        started.append((_ts(job["started_at"]) - created).total_seconds() * 1000)
        finished.append((_ts(job["finished_at"]) - created).total_seconds() * 1000)
    return {"start": started, "finish": finished}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--backend", choices=list(URLS), default="sqlite")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    url = args.database_url or (URLS[args.backend] or "").format(db="test") or None
    baseline = statistics.median(raw_spawn(args.jobs // 4) for _ in range(3))
    print(f"raw spawn baseline ({COMMAND!r}, 4 at a time): {baseline:8.0f} jobs/s")
    with Cluster(url, workers=2, slots=2) as cluster:
        rate = throughput(cluster, args.jobs)
        print(f"{args.backend}: {args.jobs} jobs, 2 workers x 2 slots: {rate:8.0f} jobs/s"
              f"  ({rate / baseline:.0%} of raw spawn)")  # fmt: skip
        lat = latency(cluster)
        for name, values in lat.items():
            print(f"submit -> {name:8s} p50 {pct(values, 50):6.1f} ms  p99 {pct(values, 99):6.1f}"
                  f" ms  max {max(values):6.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()

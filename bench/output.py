"""Output: one job writing a lot; MB/s into the database, the worker's peak RSS growth,
and how fast the log reads back through the API."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

import psutil
import sqlalchemy as sa

from bench.cluster import Cluster
from jobbalancer.db import schema

MB = 1024 * 1024
# 64-byte lines, like a chatty build log.
LINE = "x" * 63


@dataclass(frozen=True)
class OutputRun:
    mb_per_s: float  # into the database, job started → finished
    rss_growth_mb: float  # worker peak RSS above its idle RSS
    read_mb_per_s: float  # GET /log, the whole output in pages


class _PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return


def output(backend: str, size_mb: int) -> OutputRun:
    size = size_mb * MB
    tunables = {"max_log_bytes": size + MB}
    with Cluster(backend, workers=1, slots=1, tunables=tunables) as cluster:
        assert cluster.http is not None
        time.sleep(0.5)
        worker = cluster.worker_procs[0].pid
        idle = psutil.Process(worker).memory_info().rss
        watch = _PeakRss(worker)
        watch.start()
        command = f"yes {LINE} | head -c {size}"
        r = cluster.http.post("/api/v1/jobs", json={"command": command})
        r.raise_for_status()
        job_id = r.json()["id"]
        cluster.wait_finished([job_id], timeout=600)
        watch.stop.set()
        watch.join()
        j = schema.jobs
        with cluster.engine.connect() as conn:
            started, finished, kept = conn.execute(
                sa.select(j.c.started_at, j.c.finished_at, j.c.output_bytes).where(j.c.id == job_id)
            ).one()
        assert isinstance(started, datetime) and isinstance(finished, datetime)
        if kept != size:
            raise RuntimeError(f"the job kept {kept} bytes of output, not {size}")
        write_s = (finished - started).total_seconds()
        start, offset = time.perf_counter(), 0
        while offset < size:
            page = cluster.http.get(f"/api/v1/jobs/{job_id}/log", params={"offset": offset})
            page.raise_for_status()
            offset = int(page.headers["X-Log-Offset"])
        read_s = time.perf_counter() - start
        return OutputRun(size / MB / write_s, (watch.peak - idle) / MB, size / MB / read_s)

"""Sequential: one client, one request per job, as a shell loop of curl or a program
calling ``submit`` in a loop does (issue 16).

Per run, on a cluster of its own (a server and ONE worker with 4 slots, as root with
``--allow-root``, cgroups on):

1. floor: ``subprocess.run`` of the same command in 4 threads, no queue: jobs/s and the
   machine's busy CPU per job, right before the loop, so both share the machine's load;
2. loop: ``jobbalancer.client.Client.submit`` of ``sh -c 'echo hi'`` n times, one after
   the other, over one kept-alive httpx connection. Throughput is first submit (client
   clock) to the last end recorded (``max(finished_at)``, the database's clock, same
   machine). CPU per job: the whole machine's busy CPU over that phase, and by process:
   the client (the submitting thread), the server and the worker (each with its reaped
   children, so the worker's share holds the jobs' own ``sh``, also given apart as
   "jobs"), and the database server
   (PostgreSQL: this run's backends found by database name plus the shared postmaster,
   checkpointer, writers; MariaDB: the whole ``mariadbd``, shared with anything else using
   it; SQLite runs inside the server and worker);
3. latency: ``latency_jobs`` more at 20/s into the idle worker: submit call time, and
   submit (client clock before the call) → ``started_at`` / ``finished_at``;
4. idle RSS of the server and the worker, taken before the floor.

``profile_dir``: py-spy (when installed) samples the server and the worker during the loop
and writes their collapsed stacks there (``python -m bench.profile`` summarises them).
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import sqlalchemy as sa

from bench import throughput as tp
from bench.cluster import Cluster
from jobbalancer.client import Client
from jobbalancer.db import schema
from jobbalancer.worker import cgroups

SLOTS = 4
FLOOR_THREADS = 4
RATE = 20.0  # latency phase, jobs per second
PARTS = ("client", "server", "worker", "database")
# PostgreSQL processes that serve every database: counted with this run's backends.
PG_SHARED = ("checkpointer", "background writer", "walwriter", "autovacuum launcher")

# pid -> CPU seconds. A group's CPU over a phase is the sum over the pids alive at its end
# of (end - start): a process that appeared during the phase counts whole.
Snapshot = dict[int, float]


@dataclass(frozen=True)
class SeqRun:
    rate: float  # jobs/s, first submit → last end recorded
    # per job: "machine", each of PARTS, "rest" (machine - parts), "jobs" (the jobs' own
    # processes, reaped by the worker: a part of "worker")
    cpu_ms: dict[str, float]
    submit_ms: list[float]  # each submit call of the loop
    idle_submit_ms: list[float]  # each submit call of the latency phase
    start_ms: list[float]  # submit → started_at, latency phase
    finish_ms: list[float]  # submit → finished_at, latency phase
    floor_rate: float  # raw spawn, jobs/s
    floor_cpu_ms: float  # raw spawn, machine busy CPU per job
    rss_mib: dict[str, float]  # idle: "server", "worker"


def _busy_seconds() -> float:
    """The machine's busy CPU so far, all cores (guest time is already in user)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq)


def _tree(pid: int) -> Snapshot:
    """A process and its live descendants, each with the children it has reaped."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return {pid: total}


def _reaped(pid: int) -> Snapshot:
    """The CPU of the children a process has reaped: for the worker, its jobs' own."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return {}
    return {pid: t.children_user + t.children_system}


def _database(backend: str, dbname: str) -> Snapshot:
    """The database server's processes serving this run (see the module docstring)."""
    out: Snapshot = {}
    names = {"postgresql": ("postgres",), "mysql": ("mariadbd", "mysqld")}.get(backend, ())
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] not in names:
            continue
        line = " ".join(proc.info["cmdline"] or [])
        # A PostgreSQL backend names its database in its title; postmaster's own title is
        # its command line. Other databases' backends (other users of the server) are out.
        if backend == "postgresql" and not (
            f" {dbname} " in line or "-D " in line or any(s in line for s in PG_SHARED)
        ):
            continue
        try:
            t = proc.cpu_times()  # without children: postmaster reaps every database's
        except psutil.NoSuchProcess:
            continue
        out[proc.pid] = t.user + t.system
    return out


def _delta(before: Snapshot, after: Snapshot) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


class _Meter:
    """CPU snapshots of the machine and of each part of the cluster."""

    def __init__(self, cluster: Cluster) -> None:
        assert cluster.server is not None
        server, worker = cluster.server.pid, cluster.worker_procs[0].pid
        name = cluster.database.name
        self.parts: dict[str, Callable[[], Snapshot]] = {
            "machine": lambda: {0: _busy_seconds()},
            # The client runs in the thread that takes the snapshots.
            "client": lambda: {0: time.thread_time()},
            "server": lambda: _tree(server),
            "worker": lambda: _tree(worker),
            "jobs": lambda: _reaped(worker),  # part of "worker"
            "database": lambda: _database(cluster.backend, name),
        }

    def snapshot(self) -> dict[str, Snapshot]:
        return {k: f() for k, f in self.parts.items()}

    @staticmethod
    def per_job(
        before: dict[str, Snapshot], after: dict[str, Snapshot], n: int
    ) -> dict[str, float]:
        ms = {k: _delta(before[k], after[k]) * 1000 / n for k in before}
        ms["rest"] = ms["machine"] - sum(ms[k] for k in PARTS)
        return ms


def floor(n: int) -> tuple[float, float]:
    """Raw spawn: jobs/s and the machine's busy CPU ms per job."""
    before = _busy_seconds()
    rate = tp.raw_spawn(n, FLOOR_THREADS)
    busy = _busy_seconds() - before
    return rate, busy * 1000 / n


def _client(cluster: Cluster) -> Client:
    jb = Client(cluster.url, api_key=cluster.key, timeout=120)
    jb.health()  # the connection is open and kept before the first submit
    return jb


def _loop(cluster: Cluster, n: int) -> tuple[list[int], list[float], float, dict[str, float]]:
    """Submit n jobs one after the other; wait for every end. Returns the ids, each call's
    ms, jobs/s and CPU ms per job by part."""
    meter = _Meter(cluster)
    ids: list[int] = []
    calls: list[float] = []
    with _client(cluster) as jb:
        before = meter.snapshot()
        first = time.time()
        for _ in range(n):
            start = time.perf_counter()
            ids.append(int(jb.submit(tp.COMMAND)["id"]))
            calls.append((time.perf_counter() - start) * 1000)
        cluster.wait_finished(ids)
        after = meter.snapshot()
    tp.check_done(cluster, ids)
    with cluster.engine.connect() as conn:
        last = conn.execute(
            sa.select(sa.func.max(schema.jobs.c.finished_at)).where(
                schema.jobs.c.id.between(min(ids), max(ids))
            )
        ).scalar_one()
    return ids, calls, n / (last.timestamp() - first), _Meter.per_job(before, after, n)


def _latency(cluster: Cluster, n: int) -> tuple[list[float], list[float], list[float]]:
    """n jobs at RATE per second into the idle worker: each submit call's ms, and ms from
    submit to started_at and to finished_at."""
    time.sleep(1)  # the worker has gone idle: nothing of the loop is left
    sent: dict[int, float] = {}
    calls: list[float] = []
    with _client(cluster) as jb:
        next_at = time.monotonic()
        for _ in range(n):
            at, start = time.time(), time.perf_counter()
            sent[int(jb.submit(tp.COMMAND)["id"])] = at
            calls.append((time.perf_counter() - start) * 1000)
            next_at += 1 / RATE
            time.sleep(max(0.0, next_at - time.monotonic()))
    cluster.wait_finished(list(sent))
    j = schema.jobs
    with cluster.engine.connect() as conn:
        rows = conn.execute(
            sa.select(j.c.id, j.c.started_at, j.c.finished_at).where(j.c.id.in_(list(sent)))
        ).all()
    starts = [(s.timestamp() - sent[i]) * 1000 for i, s, _ in rows]
    ends = [(f.timestamp() - sent[i]) * 1000 for i, _, f in rows]
    return calls, starts, ends


@contextmanager
def _profiled(cluster: Cluster, out: Path | None) -> Iterator[None]:
    """py-spy samples the server and the worker while the block runs, without pausing them
    (collapsed stacks, 200 Hz): ``<backend>-<process>.txt`` every thread not asleep (on a
    CPU, or waiting for one), ``…-gil.txt`` only the thread holding the GIL (Python
    running; C code that lets the GIL go, such as SQLite's step or a socket write, is
    not in it). Nothing when ``out`` is None."""
    venv_bin = str(Path(sys.executable).parent)
    spy = shutil.which("py-spy", path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))
    if out is None or spy is None:
        if out is not None:
            print("py-spy is not installed: no profile (pip install py-spy)", flush=True)
        yield
        return
    assert cluster.server is not None
    out.mkdir(parents=True, exist_ok=True)
    pids = {"server": cluster.server.pid, "worker": cluster.worker_procs[0].pid}
    spies = []
    for (name, pid), gil in itertools.product(pids.items(), (False, True)):
        path = out / f"{cluster.backend}-{name}{'-gil' if gil else ''}.txt"
        argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                "--nonblocking", "--threads", "-o", str(path)] + ["--gil"] * gil  # fmt: skip
        spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        time.sleep(0.5)  # py-spy attached
        yield
    finally:
        for proc in spies:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for proc in spies:
            proc.wait(timeout=60)


def idle_move_ms(moves: int = 5, gap: float = 0.05) -> float | None:
    """The median time of moving a process into a new cgroup when no move came in the last
    ``gap`` seconds, as a job arriving at an idle worker is moved (None: no job cgroups
    here). About 10 ms where the kernel waits for an RCU grace period, well under 1 ms
    where ``favordynmods`` spares it (docs/operations.md, "Worker hosts: job start
    latency"): it says which of the two the latency figures were measured in."""
    if cgroups.base_dir() is None:
        return None
    times = []
    sleeper = subprocess.Popen(["sleep", "30"])
    made: list[cgroups.JobCgroup] = []
    try:
        for i in range(moves):
            group = cgroups.create("bench-move", i, secrets.token_hex(4))
            if group is None:
                return None
            made.append(group)
            time.sleep(gap)
            start = time.perf_counter()
            group.add(sleeper.pid)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        sleeper.kill()
        sleeper.wait()
        for group in reversed(made):
            group.remove()
    return sorted(times)[len(times) // 2]


def _idle_rss(cluster: Cluster) -> dict[str, float]:
    rss = tp.idle_rss(cluster)
    return {"server": rss["server"], "worker": rss["worker"]}


def sequential(backend: str, n: int, latency_jobs: int, profile_dir: Path | None = None) -> SeqRun:
    """One run of the scenario on a new cluster."""
    with Cluster(backend, workers=1, slots=SLOTS) as cluster:
        time.sleep(1)
        rss = _idle_rss(cluster)
        floor_rate, floor_cpu = floor(n)
        with _profiled(cluster, profile_dir):
            _, calls, rate, cpu = _loop(cluster, n)
        idle_calls, starts, ends = _latency(cluster, latency_jobs)
    return SeqRun(rate, cpu, calls, idle_calls, starts, ends, floor_rate, floor_cpu, rss)

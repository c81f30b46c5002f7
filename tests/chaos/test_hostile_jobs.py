"""Fault 6: hostile jobs. A flood of output, a fork bomb and a setsid escaper, a job that
closes its output and keeps running, bytes that are not text: the worker survives each,
keeps its memory, and leaves no process behind."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import sqlalchemy as sa

from jobbalancer import db
from jobbalancer.db import schema
from jobbalancer.worker import cgroups
from tests.chaos.conftest import Cluster

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(180)]
BACKENDS = ["sqlite", "postgresql"]
MiB = 1024 * 1024


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment carries ``CHAOS_TAG=tag`` (job ids alone repeat
    across the databases of test runs sharing the machine)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("CHAOS_TAG") == tag:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return _alive(found)


# 200 children in the job's group, plus one that leaves the session and drops the
# environment tag, all ignoring SIGTERM; every pid is written down.
FORK_BOMB = (
    "trap '' TERM; "
    "for i in $(seq 200); do sh -c 'trap \"\" TERM; exec sleep 300' & echo $! >> {pids}; done; "
    "env -i setsid sh -c 'trap \"\" TERM; echo $$ >> {pids}; exec sleep 300' & "
    "while [ $(wc -l < {pids}) -lt 201 ]; do sleep 0.05; done; echo started; wait"
)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["kill", "watchdog"])
def test_fork_bomb_and_setsid_escaper_leave_no_survivor(
    make_cluster: Any, backend: str, how: str, tmp_path: Path
) -> None:
    cluster: Cluster = make_cluster(backend)
    cluster.start_worker("w", "--allow-root")
    pids = tmp_path / "pids"
    pids.touch()
    tag = secrets.token_hex(8)
    spec: dict[str, Any] = {"command": FORK_BOMB.format(pids=pids), "env": {"CHAOS_TAG": tag}}
    if how == "watchdog":
        spec["watchdog"] = 4
    job = cluster.submit(**spec)
    cluster.wait_for(lambda: "started" in cluster.log(job["id"]), "201 children", timeout=60)
    written = [int(p) for p in pids.read_text().split()]
    assert len(written) == 201
    assert len(_alive(written)) == 201  # they really ran
    if how == "kill":
        assert cluster.api.post(f"/api/v1/jobs/{job['id']}/kill").status_code == 202
    final = cluster.wait_job(job["id"], timeout=60)
    assert final["state"] == ("killed" if how == "kill" else "timeout"), final
    assert _alive(written) == []
    assert _tagged(tag) == []
    # and the worker is still there, taking jobs
    after = cluster.submit(command="echo alive")
    assert (j := cluster.wait_job(after["id"]))["state"] == "done", j
    print(f"\n[fault 6, {backend}, {how}] 201 processes, survivors: 0")


# Forks, leaves its session, clears its environment and is re-parented to init before a
# tree walk could see it: only the job's cgroup still holds it.
UNTRACEABLE = (
    "cat /proc/self/cgroup; "
    "env -i sh -c '(setsid sh -c \"echo \\$\\$ >> {pids}; exec sleep 300\" &)'; "
    "while [ ! -s {pids} ]; do sleep 0.05; done; echo started; exec sleep 300"
)


@pytest.mark.skipif(cgroups.base_dir() is None, reason="this host lets workers make no cgroups")
@pytest.mark.parametrize("backend", BACKENDS)
def test_untraceable_escaper_dies_with_its_jobs_cgroup(
    make_cluster: Any, backend: str, tmp_path: Path
) -> None:
    cluster: Cluster = make_cluster(backend)
    cluster.start_worker("w", "--allow-root")
    pids = tmp_path / "pids"
    pids.touch()
    job = cluster.submit(command=UNTRACEABLE.format(pids=pids))
    cluster.wait_for(lambda: "started" in cluster.log(job["id"]), "the escaper", timeout=60)
    escaper = [int(p) for p in pids.read_text().split()]
    assert len(_alive(escaper)) == 1
    assert f"@{job['id']}-" in cluster.log(job["id"])  # it ran in a cgroup of its own
    assert cluster.api.post(f"/api/v1/jobs/{job['id']}/kill").status_code == 202
    assert (final := cluster.wait_job(job["id"], timeout=60))["state"] == "killed", final
    assert _alive(escaper) == []
    print(f"\n[fault 6, {backend}] untraceable escaper killed through the job's cgroup")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gigabyte_flood_is_capped_worker_memory_flat_server_responsive(
    make_cluster: Any, backend: str
) -> None:
    cluster: Cluster = make_cluster(backend)
    cap = 1 * MiB
    assert cluster.api.patch("/api/v1/settings", json={"max_log_bytes": cap}).status_code == 200
    worker = cluster.start_worker("w", "--allow-root")
    rss = psutil.Process(worker.popen.pid)
    warm = cluster.submit(command="echo warm")
    assert (j := cluster.wait_job(warm["id"]))["state"] == "done", j
    baseline = rss.memory_info().rss

    job = cluster.submit(command="head -c 1G /dev/zero | tr '\\0' x; echo; echo tail >&2")
    peak, probes, slow = baseline, 0, []
    stop = threading.Event()

    def probe_server() -> None:
        nonlocal probes
        with httpx.Client(base_url=cluster.url, timeout=10) as http:
            while not stop.is_set():
                t = time.monotonic()
                assert http.get("/healthz").status_code == 200
                r = http.get(f"/api/v1/jobs/{job['id']}",
                             headers={"Authorization": f"Bearer {cluster.key}"})  # fmt: skip
                assert r.status_code == 200
                slow.append(time.monotonic() - t)
                probes += 1
                time.sleep(0.1)

    prober = threading.Thread(target=probe_server, daemon=True)
    prober.start()
    started = time.monotonic()
    try:
        while cluster.job(job["id"])["state"] not in ("done", "failed", "killed"):
            peak = max(peak, rss.memory_info().rss)
            assert time.monotonic() - started < 150, "the flood did not end"
            time.sleep(0.05)
    finally:
        stop.set()
        prober.join(timeout=15)
    took = time.monotonic() - started
    final = cluster.wait_job(job["id"])
    assert final["state"] == "done", final
    assert final["output_bytes"] == cap
    log = cluster.log(job["id"])
    assert log.startswith("x" * 1000)
    assert "output truncated" in log
    assert worker.popen.poll() is None
    assert probes > 0
    growth = peak - baseline
    # The output beyond the cap is dropped as it is read: the worker does not keep it.
    assert growth < 64 * MiB, f"worker RSS grew by {growth / MiB:.0f} MiB"
    print(
        f"\n[fault 6 flood, {backend}] 1 GiB in {took:.1f} s; stored {final['output_bytes']} "
        f"bytes; worker RSS baseline {baseline / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB; "
        f"{probes} server probes, slowest {max(slow):.2f} s"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_output_still_running_is_tracked_until_exit_and_kill(
    make_cluster: Any, backend: str, tmp_path: Path
) -> None:
    cluster: Cluster = make_cluster(backend)
    cluster.start_worker("w", "--allow-root", "--max-jobs", "2")
    flag, pidfile = tmp_path / "finished", tmp_path / "pid"
    quiet = cluster.submit(
        command=f"echo bye; exec >&- 2>&-; sleep 3; touch {flag}; exit 4"
    )  # fmt: skip
    stuck = cluster.submit(command=f"exec >&- 2>&- </dev/null; echo $$ > {pidfile}; sleep 300")
    cluster.wait_for(lambda: "bye" in cluster.log(quiet["id"]), "output then closed")
    cluster.wait_for(pidfile.exists, "stuck job started")
    time.sleep(1)
    # Its output is closed, but it still runs: not done yet.
    assert not flag.exists()
    assert cluster.job(quiet["id"])["state"] == "running"
    assert cluster.job(stuck["id"])["state"] == "running"
    final = cluster.wait_job(quiet["id"])
    assert flag.exists(), final
    assert (final["state"], final["exit_code"]) == ("failed", 4)
    # The other one is killed with its process, though nothing ties it to a pipe any more.
    assert cluster.api.post(f"/api/v1/jobs/{stuck['id']}/kill").status_code == 202
    assert (j := cluster.wait_job(stuck["id"]))["state"] == "killed", j
    assert _alive([int(pidfile.read_text())]) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_invalid_utf8_and_nul_bytes_are_stored_and_read_back(
    make_cluster: Any, backend: str
) -> None:
    cluster: Cluster = make_cluster(backend)
    cluster.start_worker("w", "--allow-root")
    raw_out = b"a\x00b\xff\xfe c\xc3(\n"
    raw_err = b"\x00\x00\xe2\x82\n"
    job = cluster.submit(
        command="printf 'a\\000b\\377\\376 c\\303(\\n'; printf '\\000\\000\\342\\202\\n' >&2"
    )
    assert (j := cluster.wait_job(job["id"]))["state"] == "done", j
    # Stored byte for byte ...
    engine = db.connect(cluster.database_url, pool_size=1)
    try:
        with db.read(engine) as conn:
            o = schema.job_output
            chunks = conn.execute(
                sa.select(o.c.stream, o.c.data).where(o.c.job_id == job["id"]).order_by(o.c.seq)
            ).all()
    finally:
        engine.dispose()
    stored = {s: b"".join(bytes(d) for st, d in chunks if st == s) for s in ("stdout", "stderr")}
    assert stored == {"stdout": raw_out, "stderr": raw_err}
    # ... and read back readable, with replacement characters, NULs kept.
    assert cluster.log(job["id"], "stdout") == raw_out.decode("utf-8", "replace")
    assert cluster.log(job["id"], "stderr") == raw_err.decode("utf-8", "replace")


@pytest.mark.skipif(cgroups.base_dir() is None, reason="this host lets workers make no cgroups")
def test_no_cgroups_runs_jobs_without_one(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster("sqlite")
    cluster.start_worker("w", "--allow-root", "--no-cgroups")
    job = cluster.submit(command="cat /proc/self/cgroup")
    assert (final := cluster.wait_job(job["id"]))["state"] == "done", final
    assert "0::" in cluster.log(job["id"])
    assert f"@{job['id']}-" not in cluster.log(job["id"])  # in the worker's own cgroup

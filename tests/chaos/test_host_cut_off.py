"""Fault 4: a worker host cut off from the database, then back.

The worker runs in a network namespace of its own, reaching PostgreSQL through a
forwarder on the host end of a veth pair; taking that link down cuts it off (its TCP
connections hang, as across a real network, rather than being reset). SQLite cannot be
cut off by a link (it is a shared file), so this runs on PostgreSQL and MariaDB.

The cut-off worker fences itself (worker/fence.py): it kills its job before the server
declares it lost, so the attempt never finishes behind the retry's back.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from tests.chaos.conftest import Cluster, Marks, Proc, rows
from tests.chaos.proxy import Proxy

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="network namespaces need root and iproute2",
    ),
]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Netns:
    name: str
    host_if: str
    host_ip: str
    ns_ip: str

    def link(self, up: bool) -> None:
        _ip("link", "set", self.host_if, "up" if up else "down")


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A namespace joined to the host by a veth pair; removed afterwards, whatever happened."""
    tag = secrets.token_hex(3)
    a, b = secrets.randbelow(200) + 20, secrets.randbelow(250) + 1
    ns = Netns(f"jbns{tag}", f"jbh{tag}", f"10.{a}.{b}.1", f"10.{a}.{b}.2")
    peer = f"jbn{tag}"
    try:
        _ip("netns", "add", ns.name)
        _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
        _ip("link", "set", ns.host_if, "up")
        for cmd in (
            ("addr", "add", f"{ns.ns_ip}/30", "dev", peer),
            ("link", "set", peer, "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("netns", "exec", ns.name, "ip", *cmd)
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", ns.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)


def _spawn_in(cluster: Cluster, ns: Netns, name: str, url: str, *args: str) -> Proc:
    log_path = cluster.tmp / f"{name}.log"
    env = {**cluster.env, "JOBBALANCER_DATABASE_URL": url}
    with open(log_path, "wb") as out:
        popen = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, "-m", "jobbalancer", "worker",
             "--name", name, *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    proc = Proc(name, popen, log_path)
    cluster.procs.append(proc)
    cluster.worker_names.add(name)
    return proc


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_cut_off_worker_is_recovered_fenced_and_rejoins(
    make_cluster: Any, backend: str, netns: Netns, marks: Marks
) -> None:
    cluster: Cluster = make_cluster(backend)
    url = sa.make_url(cluster.database_url)
    forwarder = Proxy((url.host or "127.0.0.1", url.port or 0), listen=(netns.host_ip, 0))
    try:
        inside = _inside(cluster, netns, url.set(host=netns.host_ip, port=forwarder.port))
        # Given a job running on the namespaced worker (the only one yet), with a retry
        job = cluster.submit(command=marks.command(0, "echo started; sleep 6; ") + "; echo late",
                             retries=1)  # fmt: skip
        assert job["worker"]["name"] == "inside"
        cluster.wait_for(lambda: "started" in cluster.log(job["id"]), "job started")
        cluster.start_worker("outside", "--allow-root")

        # When its link goes down
        netns.link(up=False)
        cut_at, cut_wall = time.monotonic(), datetime.now()
        # Then it fences itself: its job is killed before the server may declare it lost
        cluster.wait_for(lambda: "fenced: " in inside.log(), "inside fences itself", inside)
        fenced = time.monotonic() - cut_at
        # ... it is marked offline, its job lost and retried elsewhere
        cluster.wait_for(lambda: cluster.worker("inside", "offline"), "inside offline")
        lost = cluster.wait_job(job["id"], timeout=30)
        recovered = time.monotonic() - cut_at
        assert lost["state"] == "lost"
        log_at_verdict = cluster.log(job["id"])
        assert log_at_verdict == "started\n"
        _retried_outside_only(cluster, job["id"], marks)
        assert inside.popen.poll() is None

        # When the link comes back: its late (lost) report is refused, it re-registers
        rejoined, dead_link = _link_back(cluster, netns, inside, cut_wall)
        _back_and_nothing_appended(cluster, job["id"], log_at_verdict)
        print(
            f"\n[fault 4, {backend}] jobs submitted 5, recorded 6 (1 lost + its retry + 4); "
            f"fenced {fenced:.1f} s after the cut, lost and retried {recovered:.1f} s after it; "
            f"the worker's first database error {dead_link}; late result refused; "
            f"re-registered {rejoined:.1f} s after the link came back"
        )
    finally:
        forwarder.close()


def _inside(cluster: Cluster, netns: Netns, url: sa.URL) -> Proc:
    """The namespaced worker, online, reaching the database through the forwarder."""
    inside = _spawn_in(cluster, netns, "inside", url.render_as_string(hide_password=False),
                       "--allow-root", "--max-jobs", "2")  # fmt: skip
    cluster.wait_for(lambda: cluster.worker("inside", "online"), "inside online", inside)
    return inside


def _link_back(cluster: Cluster, netns: Netns, inside: Proc, cut: datetime) -> tuple[float, str]:
    """Bring the link up; the worker's late report is refused (the attempt's token is
    stale) and it comes back online. How long that took, and when it saw the dead link."""
    netns.link(up=True)
    back_at, back_wall = time.monotonic(), datetime.now()
    cluster.wait_for(lambda: "no longer this worker" in inside.log(), "result refused",
                     inside, timeout=60)  # fmt: skip
    dead_link = _dead_link_noticed(inside.log(), cut, back_wall)
    cluster.wait_for(lambda: cluster.worker("inside", "online"), "inside back", inside, 60)
    return time.monotonic() - back_at, dead_link


def _retried_outside_only(cluster: Cluster, job_id: int, marks: Marks) -> None:
    """The retry ran outside; the cut-off attempt was killed: only the retry left its mark."""
    retry = cluster.wait_for(
        lambda: next((r for r in rows(cluster.database_url) if r.retry_of == job_id), None),
        "the retry",
    )
    assert cluster.wait_job(retry.id)["state"] == "done"
    assert cluster.job(retry.id)["worker"]["name"] == "outside"
    assert marks.count(0) == 1


def _back_and_nothing_appended(cluster: Cluster, lost_id: int, log_then: str) -> None:
    """The rejoined worker runs jobs; the lost job stays lost, its log as at the verdict."""
    assert cluster.job(lost_id)["state"] == "lost"
    assert cluster.job(lost_id)["exit_code"] is None
    after = [cluster.submit(command="echo after") for _ in range(4)]
    names = {cluster.wait_job(j["id"])["worker"]["name"] for j in after}
    assert "inside" in names
    assert all(cluster.job(j["id"])["state"] == "done" for j in after)
    # Nothing was appended to the lost job's log after the verdict ("late" never ran)
    assert cluster.log(lost_id) == log_then


def _dead_link_noticed(log: str, cut: datetime, back: datetime) -> str:
    """From the worker's log: how long after the cut a database call first failed (a
    timeout, TCP keepalives, tcp_user_timeout: whichever noticed the dead link first), if
    one did while the link was down."""
    for m in re.finditer(r"^(\S+ \S+) .*(heartbeat failed|cannot poll|cannot record)", log, re.M):
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if cut <= at <= back:
            return f"{(at - cut).total_seconds():.1f} s after the cut"
    return f"not within the {(back - cut).total_seconds():.0f} s the link was down"

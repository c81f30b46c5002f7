"""Real processes: `jobbalancer server` and `jobbalancer worker`, talked to over HTTP.

Every process a test starts runs in its own session and is killed (with its whole group)
when the test ends, whatever happened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobbalancer import auth, db
from jobbalancer.worker import runner

pytestmark = pytest.mark.e2e

# Short intervals so liveness and recovery happen within a test's patience.
FAST_ENV = {
    "JOBBALANCER_WORKER_HEARTBEAT_INTERVAL": "0.5",
    "JOBBALANCER_SERVER_BALANCE_INTERVAL": "0.3",
    "JOBBALANCER_LOG_LEVEL": "info",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _admin_key(url: str) -> str:
    """Schema and an admin with an API key, set up in-process: quicker than three CLI runs
    (the CLI's own `users create` and `keys create` are tested in tests/unit/test_cli.py)."""
    engine = db.connect(url)
    try:
        db.upgrade(engine)
        with db.write(engine) as conn:
            user = auth.create_user(conn, "tester", auth.Role.ADMIN, "tester-password")
            return auth.create_api_key(conn, user.id, "e2e")[1]
    finally:
        engine.dispose()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)


@dataclass
class Cluster:
    """A server and its workers on one database, with an admin API key."""

    database_url: str
    tmp: Path
    env: dict[str, str]
    port: int = 0
    key: str = ""
    procs: list[Proc] = field(default_factory=list)
    worker_names: set[str] = field(default_factory=set)
    http: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> httpx.Client:
        assert self.http is not None
        return self.http

    def spawn(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> Proc:
        log_path = self.tmp / f"{name}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "jobbalancer", *args],
                env={**self.env, **(extra_env or {})}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def start_server(self) -> Proc:
        self.port = free_port()
        proc = self.spawn(
            "server", "server", "--host", "127.0.0.1", "--port", str(self.port), "--allow-root"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.popen.poll() is None, f"server died:\n{proc.log()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError(f"server did not answer /healthz:\n{proc.log()}")
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )
        return proc

    def start_worker(self, name: str, *args: str, wait: bool = True) -> Proc:
        self.worker_names.add(name)
        proc = self.spawn(name, "worker", "--name", name, *args)
        if wait:
            self.wait_for(lambda: self.worker(name, "online"), f"worker {name} online", proc)
        return proc

    def worker(self, name: str, state: str | None = None) -> dict[str, Any] | None:
        for w in self.api.get("/api/v1/workers").json():
            if w["name"] == name and (state is None or w["state"] == state):
                return dict(w)
        return None

    def wait_for(
        self, check: Callable[[], Any], what: str, proc: Proc | None = None, timeout: float = 30
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            if proc is not None and proc.popen.poll() is not None:
                raise AssertionError(f"{proc.name} exited while waiting for {what}:\n{proc.log()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def submit(self, **spec: Any) -> dict[str, Any]:
        r = self.api.post("/api/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self.api.get(f"/api/v1/jobs/{job_id}").json())

    def wait_job(self, job_id: int, timeout: float = 30) -> dict[str, Any]:
        final = {"done", "failed", "timeout", "killed", "lost", "occupied", "skipped"}

        def finished() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] in final else None

        return dict(self.wait_for(finished, f"job {job_id} to finish", timeout=timeout))

    def log(self, job_id: int, stream: str = "all") -> str:
        return self.api.get(f"/api/v1/jobs/{job_id}/log", params={"stream": stream}).text

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        for proc in reversed(self.procs):
            _kill_group(proc.popen)
        # Jobs run in sessions of their own: a worker killed with SIGKILL leaves them behind.
        for name in self.worker_names:
            runner.clean_up_after(runner.owner_tag(name, self.database_url))


def _kill_group(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        try:
            os.killpg(popen.pid, signal.SIGTERM)
            popen.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    popen.wait(timeout=10)


@pytest.fixture
def make_cluster(
    make_database_url: Callable[[str], str], tmp_path: Path
) -> Iterator[Callable[..., Cluster]]:
    """A factory: make_cluster(backend="sqlite") → a running server with an admin key."""
    clusters: list[Cluster] = []

    def make(backend: str = "sqlite", *, server: bool = True) -> Cluster:
        url = make_database_url(backend)
        home = tmp_path / f"cluster{len(clusters)}"
        home.mkdir()
        env = {**os.environ, **FAST_ENV, "JOBBALANCER_DATABASE_URL": url}
        env["JOBBALANCER_DATA_DIR"] = str(home)
        env.pop("JOBBALANCER_CONFIG", None)
        cluster = Cluster(database_url=url, tmp=home, env=env)
        clusters.append(cluster)
        cluster.key = _admin_key(url)
        if server:
            cluster.start_server()
            # Faster liveness than the default 15 s, so recovery tests stay short.
            r = cluster.api.patch("/api/v1/settings", json={"worker_timeout": 3, "kill_grace": 1})
            assert r.status_code == 200, r.text
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()

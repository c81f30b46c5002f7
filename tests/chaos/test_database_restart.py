"""Fault 3: the database restarts under load (PostgreSQL and MariaDB).

The machine's shared database servers are left alone. The test starts a server of its
own (initdb / mariadb-install-db in a temporary directory, a free port) and really stops
and starts it. For both backends, a forwarder between the processes and the shared server
(tests/chaos/proxy.py) also plays the restart: it resets every connection and refuses new
ones for a few seconds, which is what a restarting server looks like to its clients.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.chaos.conftest import Cluster, free_port
from tests.chaos.proxy import Proxy

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(180)]
OUTAGE = 6.0  # seconds: of the database; the workers' fence (F, below) is longer
# An outage shorter than a worker's fence deadline F loses nothing; a longer one fences every
# worker (its jobs end lost and are retried: by design, docs/design.md "Self-fencing"). With
# worker_timeout 20 s, F = 16 s: the 6 s outage and a real stop/start stay under it.
WORKER_TIMEOUT = 20
LINES = 80  # the steady job prints one line every 0.1 s, before, during and after


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    made: list[Proxy] = []
    yield made
    for p in made:
        p.close()


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of the test's own, in a temporary directory, on a free port."""

    bin: Path
    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D", str(self.data),
             "-w", "-t", "60", *args],
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        self._ctl("-o", options, "-l", str(self.data / "server.log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")  # what a restart does: clients are disconnected


@pytest.fixture
def private_postgresql() -> Iterator[PrivatePostgres]:
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and PostgreSQL's binaries in /usr/lib/postgresql/*/bin")
    base = Path(tempfile.mkdtemp(prefix="jb-chaos-pg-"))
    base.chmod(0o755)  # the postgres user must reach its data directory
    data = base / "data"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    server = PrivatePostgres(bins[-1].parent, data, free_port())
    try:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(server.bin / "initdb"), "-D", str(data),
             "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            server._ctl("-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class PrivateMariaDb:
    """A MariaDB server of the test's own, in a temporary directory, on a free port."""

    data: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/jb"

    def start(self) -> None:
        with open(self.data.parent / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["mariadbd", "--no-defaults", f"--datadir={self.data}", "--user=mysql",
                 f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-log-bin",
                 f"--socket={self.data}/mysqld.sock", f"--pid-file={self.data}/mysqld.pid"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, "the private MariaDB did not start"
            engine = sa.create_engine(f"mysql+pymysql://root@127.0.0.1:{self.port}/mysql")
            try:
                with engine.connect() as conn:
                    # as docs/operations.md says to make it (the server default is latin1)
                    conn.exec_driver_sql("CREATE DATABASE IF NOT EXISTS jb CHARACTER SET utf8mb4")
                return
            except sa.exc.OperationalError:
                assert time.monotonic() < deadline, "the private MariaDB did not answer"
                time.sleep(0.2)
            finally:
                engine.dispose()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # a normal shutdown: clients are disconnected
            self.proc.wait(timeout=60)


@pytest.fixture
def private_mysql() -> Iterator[PrivateMariaDb]:
    if os.geteuid() != 0 or shutil.which("mariadbd") is None:
        pytest.skip("needs root and mariadbd")
    base = Path(tempfile.mkdtemp(prefix="jb-chaos-mariadb-"))
    base.chmod(0o755)
    data = base / "data"
    data.mkdir()
    shutil.chown(data, "mysql", "mysql")
    server = PrivateMariaDb(data, free_port())
    try:
        subprocess.run(
            ["mariadb-install-db", f"--datadir={data}", "--user=mysql", "--skip-test-db",
             "--auth-root-authentication-method=normal"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        server.start()
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_database_url(
    make_database_url: Callable[..., str], proxies: list[Proxy], request: pytest.FixtureRequest
) -> Callable[..., str]:
    """The usual fresh database, reached through a forwarder of its own."""

    def make(backend: str, *, migrated: bool = False) -> str:
        if backend.startswith("private-"):
            private: PrivatePostgres | PrivateMariaDb = request.getfixturevalue(
                backend.replace("-", "_")
            )
            return private.url
        url = sa.make_url(make_database_url(backend, migrated=migrated))
        proxy = Proxy((url.host or "127.0.0.1", url.port or 0))
        proxies.append(proxy)
        return url.set(port=proxy.port).render_as_string(hide_password=False)

    return make


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_database_restart_under_load(make_cluster: Any, backend: str, proxies: list[Proxy]) -> None:
    cluster: Cluster = make_cluster(backend)
    proxy = proxies[0]
    _restart_under_load(cluster, backend, proxy.cut, proxy.restore)


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_private_database_really_restarted_under_load(
    backend: str, request: pytest.FixtureRequest, make_cluster: Any
) -> None:
    # The honest version: a database server of the test's own, stopped and started again.
    private: PrivatePostgres | PrivateMariaDb = request.getfixturevalue(f"private_{backend}")
    cluster: Cluster = make_cluster(f"private-{backend}")
    _restart_under_load(cluster, f"private {backend}", private.stop, private.start)


def _restart_under_load(
    cluster: Cluster, backend: str, stop: Callable[[], None], start: Callable[[], None]
) -> None:
    r = cluster.api.patch("/api/v1/settings", json={"worker_timeout": WORKER_TIMEOUT})
    assert r.status_code == 200, r.text
    r = cluster.api.post("/api/v1/worker-classes", json={"name": "small"})
    assert r.status_code == 201, r.text
    cluster.start_worker("steady", "--allow-root", "--max-jobs", "8")
    # A worker whose output buffer is as small as allowed, to overflow it during the outage
    small_worker = cluster.spawn(
        "small", "worker", "--name", "small", "--class", "small", "--allow-root",
        extra_env={"JOBBALANCER_WORKER_BUFFER_MAX_BYTES": "65536"},
    )  # fmt: skip
    cluster.worker_names.add("small")
    cluster.wait_for(lambda: cluster.worker("small", "online"), "small online", small_worker)
    flag = cluster.tmp / "outage"

    steady = cluster.submit(
        command=f"for i in $(seq {LINES}); do echo line $i; sleep 0.1; done"
    )  # fmt: skip
    shorts = [cluster.submit(command=f"sleep 1; echo short {i}") for i in range(6)]
    chatty = cluster.submit(
        command=f"echo begin; while [ ! -e {flag} ]; do sleep 0.05; done; "
        "head -c 300000 /dev/zero | tr '\\0' y; echo; echo end",
        worker_class="small",
    )
    cluster.wait_for(lambda: "line 10" in cluster.log(steady["id"]), "steady output")
    cluster.wait_for(lambda: "begin" in cluster.log(chatty["id"]), "chatty started")
    processes = [p for p in cluster.procs if p.name in ("server", "steady", "small")]

    # When the database goes away
    stop()
    cut_at = time.monotonic()
    flag.touch()
    # Then the API says so with 503 and a message, and nothing dies
    answers: list[int] = []
    body: dict[str, Any] = {}
    with httpx.Client(
        base_url=cluster.url, headers={"Authorization": f"Bearer {cluster.key}"}, timeout=10
    ) as http:
        while time.monotonic() - cut_at < OUTAGE:
            r = http.get(f"/api/v1/jobs/{steady['id']}")
            answers.append(r.status_code)
            if r.status_code == 503:
                body = r.json()
            health = http.get("/healthz")
            assert health.status_code in (200, 503)
            time.sleep(0.2)
    assert 503 in answers, answers
    assert set(answers) <= {200, 503}, answers
    assert body["error"] == "database_unavailable"
    assert body["message"]
    assert health.status_code == 503
    assert health.json()["database"] == "unavailable"
    assert all(p.popen.poll() is None for p in processes), [p.log() for p in processes]
    start()
    back_at = time.monotonic()

    # and once it is back: everything running finished, all its output kept
    final = cluster.wait_job(steady["id"], timeout=60)
    recovered = time.monotonic() - back_at
    assert final["state"] == "done", final
    assert cluster.log(steady["id"]) == "".join(f"line {i}\n" for i in range(1, LINES + 1))
    for job in shorts:
        assert cluster.wait_job(job["id"])["state"] == "done"
    # the small buffer overflowed: what fit is kept, a marker says how much was dropped
    chatty_final = cluster.wait_job(chatty["id"], timeout=60)
    assert chatty_final["state"] == "done", chatty_final
    log = cluster.log(chatty["id"])
    assert log.startswith("begin\n")
    assert "dropped" in log
    assert all(p.popen.poll() is None for p in processes)
    assert cluster.worker("steady", "online") and cluster.worker("small", "online")
    # New work runs as before
    after = cluster.submit(command="echo after")
    assert cluster.wait_job(after["id"])["state"] == "done"
    print(
        f"\n[fault 3, {backend}] outage {OUTAGE:.0f} s; API answers during it: "
        f"{answers.count(503)}x503 {answers.count(200)}x200; jobs submitted 8, done 8; "
        f"steady job done {recovered:.1f} s after the database came back; chatty log kept "
        f"{chatty_final['output_bytes']} bytes (log {len(log)} chars) with a marker: "
        f"{log[-80:]!r}"
    )

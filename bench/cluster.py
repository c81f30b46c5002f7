"""A throwaway cluster for benchmarks: a fresh database, a server and workers as real
processes. Everything it starts or creates is stopped and removed on exit."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy as sa

from jobbalancer import db

# Servers the benchmarks may use; each run gets its own database on them, dropped after.
SERVERS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/{db}",
}
BACKENDS = ("sqlite", "postgresql", "mysql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Database:
    """``with Database(backend, tmp) as url:`` a new empty database, dropped on exit."""

    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend = backend
        self.name = f"jbbench_{secrets.token_hex(4)}"
        self.url = f"sqlite:///{tmp}/bench.db"
        if backend != "sqlite":
            self.url = SERVERS[backend].format(db=self.name)

    def _admin(self, sql: str) -> None:
        admin_db = "postgres" if self.backend == "postgresql" else "mysql"
        engine = sa.create_engine(
            SERVERS[self.backend].format(db=admin_db), isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(sql)
        finally:
            engine.dispose()

    def __enter__(self) -> str:
        if self.backend != "sqlite":
            self._admin(f"CREATE DATABASE {self.name}")
        return self.url

    def __exit__(self, *exc: object) -> None:
        if self.backend == "postgresql":
            self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        elif self.backend == "mysql":
            self._admin(f"DROP DATABASE IF EXISTS {self.name}")


class Cluster:
    """``with Cluster("sqlite", workers=2, slots=2) as c:`` — a server, workers, a key.

    ``tunables`` are cluster settings stored before any worker starts.
    """

    def __init__(
        self,
        backend: str = "sqlite",
        *,
        workers: int = 2,
        slots: int = 2,
        tunables: dict[str, Any] | None = None,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.tmp = Path(tempfile.mkdtemp(prefix="jobbalancer-bench-"))
        self.database = Database(backend, self.tmp)
        self.database_url = self.database.url
        self.workers, self.slots = workers, slots
        self.tunables = tunables or {}
        self.worker_env = worker_env or {}
        self.port = free_port()
        self.env = {
            **os.environ,
            "JOBBALANCER_DATABASE_URL": self.database_url,
            "JOBBALANCER_DATA_DIR": str(self.tmp),
            "JOBBALANCER_LOG_LEVEL": "warning",
        }
        self.server: subprocess.Popen[bytes] | None = None
        self.worker_procs: list[subprocess.Popen[bytes]] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.key = ""
        self.http: httpx.Client | None = None
        self._engine: sa.Engine | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def engine(self) -> sa.Engine:
        """The benchmark's own connection to the cluster's database (for timestamps)."""
        if self._engine is None:
            self._engine = db.connect(self.database_url, pool_size=2)
        return self._engine

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=120
        )

    def _cli(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "jobbalancer", *args],
            env=self.env, input=stdin, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return out.stdout

    def _spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobbalancer", *args],
            env={**self.env, **(env or {})}, stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "log", "ab"), stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Cluster:
        try:
            self.database.__enter__()
            self._start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self) -> None:
        self._cli("db", "upgrade")
        self._cli("users", "create", "bench", "--role", "admin", "--password-stdin",
                  stdin="bench-password\n")  # fmt: skip
        self.key = self._cli("keys", "create", "bench").strip().splitlines()[-1]
        root = ["--allow-root"] if os.geteuid() == 0 else []
        self.server = self._spawn("server", "--port", str(self.port), *root)
        self.http = self.client()
        self._wait(self._healthy, "server")
        if self.tunables:
            self.http.patch("/api/v1/settings", json=self.tunables).raise_for_status()
        for i in range(self.workers):
            self.add_worker(f"bench-{i}")
        self._wait(lambda: self.online() == self.workers, "workers")

    def add_worker(self, name: str) -> subprocess.Popen[bytes]:
        proc = self._spawn("worker", "--name", name, "--max-jobs", str(self.slots),
                           "--allow-root", env=self.worker_env)  # fmt: skip
        self.worker_procs.append(proc)
        return proc

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def online(self) -> int:
        assert self.http is not None
        return sum(w["state"] == "online" for w in self.http.get("/api/v1/workers").json())

    def wait_finished(self, ids: list[int], timeout: float = 900) -> None:
        """Until the jobs ``min(ids)..max(ids)`` are all over. Asks the database directly
        (an indexed count every 50 ms), so waiting costs the server nothing."""
        j = db.schema.jobs
        query = sa.select(sa.func.count()).where(
            j.c.id.between(min(ids), max(ids)), j.c.finished_at.is_(None)
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.engine.connect() as conn:
                if conn.execute(query).scalar_one() == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"jobs did not finish in {timeout} s; see {self.tmp / 'log'}")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by the server and by all workers, without
        the jobs' own processes."""

        def cpu(proc: subprocess.Popen[bytes] | None) -> float:
            if proc is None:
                return 0.0
            t = psutil.Process(proc.pid).cpu_times()
            return float(t.user + t.system)

        return {
            "server": cpu(self.server),
            "workers": sum(cpu(p) for p in self.worker_procs),
        }

    def _wait(self, check: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up; see {self.tmp / 'log'}")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if exc and exc[0] is not None and (self.tmp / "log").exists():
            sys.stderr.write((self.tmp / "log").read_text()[-3000:])
        if self.http is not None:
            self.http.close()
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._engine is not None:
            self._engine.dispose()
        try:
            self.database.__exit__()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

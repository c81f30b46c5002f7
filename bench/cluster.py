"""A throwaway cluster for benchmarks: a server and workers as real processes."""

from __future__ import annotations

import os
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """``with Cluster(url, workers=2, slots=2) as c:`` — everything is stopped on exit."""

    def __init__(self, database_url: str | None = None, *, workers: int = 2, slots: int = 2):
        self.tmp = Path(tempfile.mkdtemp(prefix="jobbalancer-bench-"))
        self.database_url = database_url or f"sqlite:///{self.tmp}/bench.db"
        self.workers, self.slots = workers, slots
        self.port = free_port()
        self.env = {
            **os.environ,
            "JOBBALANCER_DATABASE_URL": self.database_url,
            "JOBBALANCER_DATA_DIR": str(self.tmp),
            "JOBBALANCER_LOG_LEVEL": "warning",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.key = ""
        self.http: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _cli(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "jobbalancer", *args],
            env=self.env, input=stdin, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return out.stdout

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobbalancer", *args],
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.tmp / "log", "ab"),
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Cluster:
        self._cli("db", "upgrade")
        self._cli("users", "create", "bench", "--role", "admin", "--password-stdin",
                  stdin="bench-password\n")  # fmt: skip
        self.key = self._cli("keys", "create", "bench").strip().splitlines()[-1]
        self.server = self._spawn("server", "--port", str(self.port), "--allow-root")
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        )
        self._wait(lambda: self._healthy(), "server")
        for i in range(self.workers):
            self._spawn("worker", "--name", f"bench-{i}", "--max-jobs", str(self.slots),
                        "--allow-root")  # fmt: skip
        self._wait(lambda: self.online() == self.workers, "workers")
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def online(self) -> int:
        assert self.http is not None
        return sum(w["state"] == "online" for w in self.http.get("/api/v1/workers").json())

    def _wait(self, check: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up; see {self.tmp / 'log'}")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
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
        shutil.rmtree(self.tmp, ignore_errors=True)

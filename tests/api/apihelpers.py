"""Helpers for the API tests: the app under test with clients of each role, fake workers,
and a worker's part played in the database. The ``api`` fixture is in conftest.py."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI

from jobbalancer import auth, balancer, db, jobs
from jobbalancer import registry as workers
from jobbalancer.db import schema
from jobbalancer.db.types import utcnow

with warnings.catch_warnings():
    # Starlette's TestClient still works with httpx; it only nags about a successor.
    warnings.filterwarnings("ignore", message=".*httpx.*", category=UserWarning)
    from fastapi.testclient import TestClient

JSON = {"Content-Type": "application/json"}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@dataclass
class Api:
    """The app under test and ways to call it as different users."""

    app: FastAPI
    engine: sa.Engine
    admin_key: str
    _clients: list[TestClient] = field(default_factory=list)

    def client(self, key: str | None = None, **headers: str) -> TestClient:
        """A client sending ``key`` as a Bearer token (none: anonymous)."""
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        c = TestClient(self.app, headers=headers)
        self._clients.append(c)
        return c

    @property
    def admin(self) -> TestClient:
        return self.client(self.admin_key)

    def user(self, name: str, role: str = "submitter", **options: Any) -> tuple[int, str]:
        """A user without a password (argon2 is slow) and an API key: (id, key)."""
        with db.write(self.engine) as conn:
            user = auth.create_user(conn, name, role, **options)
            _, key = auth.create_api_key(conn, user.id, "test")
        return user.id, key

    def worker(self, name: str, worker_class: str = "default", max_jobs: int | None = 2) -> int:
        """Register a fake online worker; its id."""
        with db.write(self.engine) as conn:
            worker_id, _ = workers.register(
                conn,
                name=name,
                host="test-host",
                worker_class=worker_class,
                max_jobs=max_jobs,
                pid=4242,
                version="test",
                stats=workers.Stats(
                    load=0.5, cpu_count=4, memory_total=8 << 30, memory_available=4 << 30
                ),
            )
        return worker_id

    def balance(self) -> None:
        """What the supervisor does every tick: assign waiting jobs to free slots."""
        with db.write(self.engine) as conn:
            balancer.assign_waiting(conn)

    def set_offline(self, worker_id: int) -> None:
        with db.write(self.engine) as conn:
            conn.execute(
                sa.update(schema.workers)
                .where(schema.workers.c.id == worker_id)
                .values(state="offline")
            )

    def start(self, job_id: int) -> None:
        """Play the worker: claim an assigned job (assigned → running)."""
        with db.write(self.engine) as conn:
            job = jobs.get(conn, job_id)
            assert job.worker_id is not None and job.token is not None
            assert jobs.claim(conn, job_id, job.worker_id, job.token)

    def finish(self, job_id: int, state: jobs.State = jobs.State.DONE, exit_code: int = 0) -> None:
        """Play the worker: start the job if needed, then report its end."""
        with db.read(self.engine) as conn:
            started = jobs.get(conn, job_id).state == jobs.State.RUNNING
        if not started:
            self.start(job_id)
        with db.write(self.engine) as conn:
            token = jobs.get(conn, job_id).token
            assert token is not None
            assert jobs.finish(conn, job_id, token, state, exit_code=exit_code)

    def write_output(self, job_id: int, *parts: tuple[str, bytes]) -> None:
        """Append output chunks as a worker would: (stream, data) in order."""
        out = schema.job_output
        with db.write(self.engine) as conn:
            last = conn.execute(
                sa.select(out.c.seq, out.c.stream, out.c.offset, out.c.stream_offset, out.c.size)
                .where(out.c.job_id == job_id)
                .order_by(out.c.seq)
            ).all()
            seq = last[-1].seq + 1 if last else 0
            total = sum(r.size for r in last)
            per_stream = {
                s: sum(r.size for r in last if r.stream == s) for s in ("stdout", "stderr")
            }
            for stream, data in parts:
                conn.execute(
                    sa.insert(out).values(
                        job_id=job_id, seq=seq, stream=stream, offset=total,
                        stream_offset=per_stream[stream], size=len(data), data=data, at=utcnow(),
                    )
                )  # fmt: skip
                seq += 1
                total += len(data)
                per_stream[stream] += len(data)


def submit(client: TestClient, expect: int = 201, **spec: Any) -> dict[str, Any]:
    """POST a job and check the status; the answer's JSON."""
    r = client.post("/api/v1/jobs", json=spec)
    assert r.status_code == expect, r.text
    body: dict[str, Any] = r.json()
    return body

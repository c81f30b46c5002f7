"""The app under test, in-process, with users of every role and objects to act on."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from fastapi import FastAPI

from jobbalancer import auth, db, vault
from jobbalancer import registry as workers
from jobbalancer.app import create_app
from jobbalancer.settings import Settings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx.*", category=UserWarning)
    from fastapi.testclient import TestClient


@dataclass
class App:
    app: FastAPI
    engine: sa.Engine
    admin_key: str
    clients: list[TestClient] = field(default_factory=list)

    def client(self, key: str | None = None, **kwargs: Any) -> TestClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        c = TestClient(self.app, headers=headers, **kwargs)
        self.clients.append(c)
        return c

    @property
    def admin(self) -> TestClient:
        return self.client(self.admin_key)

    def user(self, name: str, role: str, **options: Any) -> tuple[int, str]:
        with db.write(self.engine) as conn:
            user = auth.create_user(conn, name, role, **options)
            return user.id, auth.create_api_key(conn, user.id, "test")[1]

    def worker(self, name: str, worker_class: str = "default") -> int:
        with db.write(self.engine) as conn:
            worker_id, _ = workers.register(
                conn, name=name, host="test-host", worker_class=worker_class, max_jobs=1,
                pid=4242, version="test", stats=workers.Stats(load=0.1, cpu_count=1,
                memory_total=1 << 30, memory_available=1 << 29),
            )  # fmt: skip
        return worker_id


@pytest.fixture
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    # argon2id's real cost (0.2 s a hash) adds nothing to these tests.
    monkeypatch.setattr(
        auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )


@pytest.fixture
def secapp(sqlite_engine: sa.Engine, cheap_hashing: None) -> Iterator[App]:
    app = create_app(Settings(secret_key=vault.new_key_text()), sqlite_engine, supervise=False)
    first = app.state.first_admin
    assert first is not None
    result = App(app=app, engine=sqlite_engine, admin_key=first[2])
    yield result
    for c in result.clients:
        c.close()

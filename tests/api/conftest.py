"""Fixtures for the API tests: one app per test, on the backend under test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from apihelpers import Api
from argon2 import PasswordHasher

from jobbalancer import auth, vault
from jobbalancer.app import create_app
from jobbalancer.settings import Settings


@pytest.fixture
def api(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    # The first admin's password is hashed with argon2id's real cost (0.2 s) in every app;
    # these tests are about the API, not the hash, so hash cheaply.
    monkeypatch.setattr(
        auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    app = create_app(Settings(secret_key=vault.new_key_text()), engine, supervise=False)
    first = app.state.first_admin
    assert first is not None
    result = Api(app=app, engine=engine, admin_key=first[2])
    yield result
    for c in result._clients:
        c.close()

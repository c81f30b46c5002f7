"""Fixtures for the web UI's HTTP-level tests: the app in-process, on the backend under
test, with a way to log in as a user of any role."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from fastapi import FastAPI

from jobbalancer import auth, db, vault
from jobbalancer.app import create_app
from jobbalancer.settings import Settings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx.*", category=UserWarning)
    from fastapi.testclient import TestClient

PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    match = _CSRF.search(html)
    assert match, "the page has no CSRF field"
    return match.group(1)


@dataclass
class Web:
    """The app under test and browsers (TestClients keep cookies) to use it with."""

    app: FastAPI
    engine: sa.Engine
    admin_password: str
    admin_key: str
    _clients: list[TestClient] = field(default_factory=list)

    def browser(
        self,
        base_url: str = "http://testserver",
        *,
        raise_errors: bool = True,
        address: str = "testclient",
    ) -> TestClient:
        """A browser; ``address`` is the client address the server sees."""
        client = TestClient(
            self.app, base_url=base_url, follow_redirects=False,
            raise_server_exceptions=raise_errors, client=(address, 50000),
        )  # fmt: skip
        client.headers["Accept"] = "text/html,application/xhtml+xml,*/*;q=0.8"  # as browsers
        self._clients.append(client)
        return client

    def user(self, name: str, role: str = "viewer", password: str = PASSWORD) -> auth.User:
        with db.write(self.engine) as conn:
            return auth.create_user(conn, name, role, password)

    def post_login(self, client: TestClient, name: str, password: str) -> object:
        form = client.get("/login")
        assert form.status_code == 200
        return client.post(
            "/login",
            data={"name": name, "password": password, "csrf_token": csrf_of(form.text)},
        )

    def login(
        self, name: str = "admin", password: str | None = None, *, raise_errors: bool = True
    ) -> tuple[TestClient, str]:
        """A logged-in browser and its CSRF token."""
        client = self.browser(raise_errors=raise_errors)
        r = self.post_login(client, name, password or self.admin_password)
        assert r.status_code == 303, r.text  # type: ignore[attr-defined]
        home = client.get("/")
        assert home.status_code == 200
        return client, csrf_of(home.text)


@pytest.fixture
def web(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Web]:
    # argon2id's real cost (0.2 s a hash) would make these tests slow, not safer.
    monkeypatch.setattr(
        auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    app = create_app(Settings(secret_key=vault.new_key_text()), engine, supervise=False)
    first = app.state.first_admin
    assert first is not None
    result = Web(app=app, engine=engine, admin_password=first[1], admin_key=first[2])
    yield result
    for client in result._clients:
        client.close()

"""Attacks on accounts, played as an outsider or a user would, on every backend: locking
the admin out by guessing at their name, telling real names from unknown ones by how the
login answers, inheriting a deleted user's jobs, and names that pass for someone else's.

Two source addresses are two TestClients with different client addresses: the server
sees exactly what uvicorn would hand it from the socket.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from fastapi import FastAPI

from jobbalancer import auth, db, errors
from jobbalancer import registry as workers
from jobbalancer.app import create_app
from jobbalancer.db import schema
from jobbalancer.service import sessions as service_sessions
from jobbalancer.service import users as service_users
from jobbalancer.settings import Settings
from tests.e2e.conftest import Cluster, make_cluster

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx.*", category=UserWarning)
    from fastapi.testclient import TestClient

PASSWORD = "correct horse battery staple"
ATTACKER, ADMIN_DESK, ANOTHER_ATTACKER = "203.0.113.66", "198.51.100.10", "203.0.113.77"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_ = make_cluster  # a fixture from the end-to-end harness, used by name below


@dataclass
class Target:
    """The app under test, its first admin, and browsers at chosen addresses."""

    app: FastAPI
    engine: sa.Engine
    admin_password: str
    admin_key: str
    clients: list[TestClient] = field(default_factory=list)

    def browser(self, address: str) -> TestClient:
        client = TestClient(self.app, follow_redirects=False, client=(address, 40000))
        client.headers["Accept"] = "text/html,application/xhtml+xml,*/*;q=0.8"
        self.clients.append(client)
        return client

    def api(self, key: str) -> TestClient:
        client = TestClient(self.app, headers={"Authorization": f"Bearer {key}"})
        self.clients.append(client)
        return client

    def login(self, client: TestClient, name: str, password: str) -> Any:
        form = client.get("/login")
        assert form.status_code == 200
        token = _CSRF.search(form.text)
        assert token
        return client.post(
            "/login", data={"name": name, "password": password, "csrf_token": token[1]}
        )


@pytest.fixture
def target(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    # argon2id at full cost would only make the test slow; the dummy hash for unknown
    # names is made by whatever hasher is in use, so the cost stays alike on both paths.
    monkeypatch.setattr(
        auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    app = create_app(Settings(), engine, supervise=False)
    first = app.state.first_admin
    assert first is not None
    result = Target(app=app, engine=engine, admin_password=first[1], admin_key=first[2])
    yield result
    for client in result.clients:
        client.close()


@pytest.fixture
def long_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waits of a minute and more, so no wait runs out while a test is still guessing:
    what the tests see does not depend on how fast the backend answers."""
    monkeypatch.setattr(auth, "FIRST_WAIT", timedelta(minutes=1))


@pytest.mark.usefixtures("long_waits")
def test_guessing_the_admins_password_from_one_address_does_not_lock_the_admin_out(
    target: Target,
) -> None:
    # Given an attacker who tries 20 passwords for "admin" from their address
    attacker = target.browser(ATTACKER)
    codes = [target.login(attacker, "admin", f"guess-{i}").status_code for i in range(20)]
    # Then they are slowed down (and never get in) …
    assert set(codes) == {401, 429} and codes.count(429) > 0
    assert target.login(attacker, "admin", target.admin_password).status_code == 429
    # … while the admin, from their own desk, logs in right away
    desk = target.browser(ADMIN_DESK)
    assert target.login(desk, "admin", target.admin_password).status_code == 303
    assert desk.get("/").status_code == 200
    # and the admin's API key never noticed
    assert target.api(target.admin_key).get("/api/v1/me").json()["name"] == "admin"


@pytest.mark.usefixtures("long_waits")
def test_an_attacker_moving_through_an_ipv6_slash_64_is_one_address(target: Target) -> None:
    # Given an attacker who sends each guess from another address of their /64
    codes = [
        target.login(target.browser(f"2001:db8:66:1::{i + 1:x}"), "admin", "guess").status_code
        for i in range(auth.FREE_FAILURES + 3)
    ]
    # Then they are counted as one address, and slowed down as one
    assert codes == [401] * (auth.FREE_FAILURES + 1) + [429, 429]
    # while the admin from another /64 (or over IPv4-mapped IPv6) gets in
    neighbour = target.browser("2001:db8:66:2::1")
    assert target.login(neighbour, "admin", target.admin_password).status_code == 303
    desk = target.browser(f"::ffff:{ADMIN_DESK}")
    assert target.login(desk, "admin", target.admin_password).status_code == 303


@pytest.mark.usefixtures("long_waits")
def test_a_botnet_guessing_the_admins_password_is_slowed_and_the_admin_only_delayed(
    target: Target,
) -> None:
    # Given guesses at the admin's password, each from an address of its own
    guesses = auth.FREE_ACCOUNT_FAILURES + 4
    codes = [
        target.login(target.browser(f"192.0.2.{i + 1}"), "admin", f"guess-{i}").status_code
        for i in range(guesses)
    ]
    # Then past the free ones every next guess, from any address, must wait
    assert codes[: auth.FREE_ACCOUNT_FAILURES + 1] == [401] * (auth.FREE_ACCOUNT_FAILURES + 1)
    assert set(codes[auth.FREE_ACCOUNT_FAILURES + 1 :]) == {429}
    # And the admin, from their desk, waits no more than the low cap, never locked out
    answer = target.login(target.browser(ADMIN_DESK), "admin", target.admin_password)
    assert answer.status_code == 429
    assert 0 < int(answer.headers["retry-after"]) <= auth.MAX_ACCOUNT_WAIT.total_seconds()
    # (a password reset lifts that wait at once)
    with db.write(target.engine) as conn:
        auth.forget_failed_logins(conn, "admin")
    assert (
        target.login(target.browser(ADMIN_DESK), "admin", target.admin_password).status_code == 303
    )


@pytest.mark.parametrize(
    ("host", "counted_as"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::ffff", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        ("testclient", "testclient"),
        ("", "unknown"),
        (None, "unknown"),
        ("x" * 100, "x" * 64),
    ],
)
def test_addresses_are_counted_by_host_or_ipv6_slash_64(host: str | None, counted_as: str) -> None:
    assert service_sessions.address(host) == counted_as


def _normalized(response: Any, name: str) -> tuple[int, bool, str]:
    """What an answer tells: status, whether it says to wait, and the page, without the
    name typed in (the form shows it again), the form's random token and the seconds
    left (which differ by request and by the clock, not by account)."""
    body = _CSRF.sub("", response.text).replace(f'value="{name}"', 'value="NAME"')
    body = re.sub(r"\d+ seconds", "N seconds", body)
    return response.status_code, "retry-after" in response.headers, body


@pytest.mark.usefixtures("long_waits")
def test_a_known_name_and_an_unknown_one_are_answered_alike(target: Target) -> None:
    # Given two attackers, one trying the admin's name, the other a name nobody has
    answers: dict[str, list[tuple[int, bool, str]]] = {}
    for name, address in (("admin", ATTACKER), ("nobodyx", ANOTHER_ATTACKER)):
        client = target.browser(address)
        answers[name] = [_normalized(target.login(client, name, "guess"), name) for _ in range(12)]
    # Then every answer is the same, in the same order: status, wait and page alike
    assert answers["admin"] == answers["nobodyx"]
    throttled = [status for status, _, _ in answers["admin"] if status == 429]
    assert len(throttled) > 0  # the unknown name was throttled just as much
    # And the throttling table does not tell them apart either: one row per name and
    # address, holding a digest rather than the name
    with db.read(target.engine) as conn:
        failures = conn.execute(
            sa.select(auth.LF.c.account, auth.LF.c.failures).where(
                auth.LF.c.account != auth.ANY_ACCOUNT, auth.LF.c.address != auth.ANY_ADDRESS
            )
        ).all()
    assert sorted(count for _, count in failures) == [auth.FREE_FAILURES + 1] * 2
    assert not any(name in account for account, _ in failures for name in ("admin", "nobodyx"))


def test_a_new_user_does_not_inherit_a_deleted_users_jobs(target: Target) -> None:
    admin = target.api(target.admin_key)
    # Given alice, who submitted a job, and was then deleted
    alice = admin.post("/api/v1/users", json={"name": "alice", "role": "submitter"}).json()
    alice_key = admin.post(f"/api/v1/users/{alice['id']}/api-keys", json={"name": "k"})
    job = target.api(alice_key.json()["key"]).post("/api/v1/jobs", json={"command": "echo"})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    assert admin.delete(f"/api/v1/users/{alice['id']}").status_code == 204
    # When a new user is made, under her name even
    mallory = admin.post("/api/v1/users", json={"name": "alice", "role": "submitter"}).json()
    key = admin.post(f"/api/v1/users/{mallory['id']}/api-keys", json={"name": "k"}).json()
    # Then the new user has a new id …
    assert mallory["id"] > alice["id"]
    # … and none of alice's jobs: not listed, not readable, not changeable
    newcomer = target.api(key["key"])
    assert newcomer.get("/api/v1/jobs").json()["items"] == []
    assert newcomer.get(f"/api/v1/jobs/{job_id}").status_code == 404
    assert newcomer.get(f"/api/v1/jobs/{job_id}/log").status_code == 404
    assert newcomer.post(f"/api/v1/jobs/{job_id}/restart").status_code == 404
    assert newcomer.delete(f"/api/v1/jobs/{job_id}").status_code == 404
    # The job is still there, still the deleted user's, for the admin to see
    kept = admin.get(f"/api/v1/jobs/{job_id}")
    assert kept.status_code == 200 and kept.json()["user"] == "alice"
    with db.read(target.engine) as conn:
        owner = conn.execute(sa.select(schema.jobs.c.user_id).where(schema.jobs.c.id == job_id))
        assert owner.scalar_one() == alice["id"]  # the deleted one's, never the newcomer's
    assert any(j["id"] == job_id for j in admin.get("/api/v1/jobs").json()["items"])
    desk = target.browser(ADMIN_DESK)
    assert target.login(desk, "admin", target.admin_password).status_code == 303
    assert desk.get(f"/jobs/{job_id}").status_code == 200
    assert desk.get("/jobs").status_code == 200


@pytest.mark.parametrize(
    "name",
    ["admin\u200b", "\u0430dmin", "x\u0085y", "admin\u202e", "\uff41dmin", "ad\u00admin"],
    ids=ascii,
)
def test_names_that_pass_for_someone_elses_are_refused(target: Target, name: str) -> None:
    admin = target.api(target.admin_key)
    for path, spec in (
        ("/api/v1/users", {"name": name, "role": "viewer"}),
        ("/api/v1/worker-classes", {"name": name}),
        ("/api/v1/scripts", {"name": name, "interpreter": "bash", "content": "true"}),
    ):
        r = admin.post(path, json=spec)
        assert r.status_code == 422, (path, r.text)
        assert r.json()["field"] == "name"


@pytest.mark.parametrize("field", ["env", "labels"])
def test_keys_with_a_trailing_newline_are_refused(target: Target, field: str) -> None:
    admin = target.api(target.admin_key)
    r = admin.post("/api/v1/jobs", json={"command": "true", field: {"KEY\n": "x"}})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_a_worker_cannot_register_under_a_name_that_passes_for_another(
    target: Target,
) -> None:
    for name in ("node-1\u200b", "n\u043ede-1"):  # zero-width space; a Cyrillic o
        with pytest.raises(errors.InvalidInput) as caught, db.write(target.engine) as conn:
            workers.register(
                conn, name=name, host="h", worker_class="default", max_jobs=1, pid=1,
                version="test", stats=workers.Stats(),
            )  # fmt: skip
        assert caught.value.field == "name"


@pytest.mark.parametrize("name", ["a\x00b", "x" * 200, "\U0001f600", "admin\n", "' OR 1=1 --"])
def test_any_name_typed_at_the_login_gets_an_answer_never_an_error(
    target: Target, name: str
) -> None:
    client = target.browser(ATTACKER)
    for _ in range(auth.FREE_FAILURES + 2):
        r = target.login(client, name, "guess")
        assert r.status_code in (401, 429), r.text


def test_a_real_server_counts_failures_by_socket_address_not_x_forwarded_for(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Given a real server (uvicorn would believe X-Forwarded-For from 127.0.0.1 by default)
    cluster = make_cluster("sqlite")
    engine = db.connect(cluster.database_url)
    try:
        # When an attacker on this host sends each guess "from" another address
        with httpx.Client(base_url=cluster.url, follow_redirects=False) as client:
            for i in range(auth.FREE_FAILURES + 1):
                form = client.get("/login")
                token = _CSRF.search(form.text)
                assert token
                r = client.post(
                    "/login",
                    data={"name": "admin", "password": "guess", "csrf_token": token[1]},
                    headers={"X-Forwarded-For": f"192.0.2.{i + 1}", "Forwarded": "for=1.2.3.4"},
                )
                assert r.status_code in (401, 429)
        # Then every failure counted against the one address the socket saw
        with db.read(engine) as conn:
            addresses = set(conn.execute(sa.select(auth.LF.c.address)).scalars())
        assert addresses == {"127.0.0.1", auth.ANY_ADDRESS}  # and the name's own count
    finally:
        engine.dispose()


# -- two admins demoting each other at once ---------------------------------------------------


def _waits_for_a_row_lock(engine: sa.Engine) -> bool:
    """Whether a transaction on this test's database waits for a row lock (SQLite: never
    asked; its second writer waits in BEGIN until the first commits)."""
    queries = {
        "postgresql": "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'",
        # innodb_trx does not always list a locking read that waits (seen on MariaDB
        # 10.11): a statement of this database still running its FOR UPDATE while the
        # test's transaction sits idle holding the rows is one that waits for them.
        "mysql": "SELECT count(*) FROM information_schema.processlist "
        "WHERE db = DATABASE() AND command = 'Query' AND id <> CONNECTION_ID() "
        "AND info LIKE '%FOR UPDATE%'",
    }
    with engine.connect() as conn:
        return bool(conn.execute(sa.text(queries[db.backend(engine)])).scalar())


def test_two_admins_demoting_each_other_at_once_leave_one_admin(target: Target) -> None:
    # Given two admins
    first = target.app.state.first_admin[0]
    with db.write(target.engine) as conn:
        second = auth.create_user(conn, "second-admin", auth.Role.ADMIN, PASSWORD)
    outcome: list[str] = []

    def demote_the_first() -> None:
        try:
            service_users.update(target.engine, second, first.id, {"role": auth.Role.VIEWER})
            outcome.append("demoted")
        except errors.Conflict:
            outcome.append("refused")

    # When the first demotes the second, and before that commits the second demotes the first
    with db.write(target.engine) as conn:
        service_users.keep_an_admin(conn, second, {"role": auth.Role.VIEWER})
        auth.update_user(conn, second.id, {"role": auth.Role.VIEWER})
        other = threading.Thread(target=demote_the_first)
        other.start()
        if db.backend(target.engine) != "sqlite":
            # the other request must queue on the admins' rows, not read past them
            deadline = time.monotonic() + 20
            while not _waits_for_a_row_lock(target.engine) and other.is_alive():
                assert time.monotonic() < deadline, "the second demotion never waited"
                time.sleep(0.05)
            assert other.is_alive(), f"the second demotion did not wait: {outcome}"
    other.join(timeout=30)
    # Then the second change, seeing the first, is refused: one enabled admin stays
    assert outcome == ["refused"]
    with db.read(target.engine) as conn:
        admins = [u.name for u in auth.list_users(conn) if u.is_admin and not u.disabled]
    assert admins == [first.name]

"""Verified API keys are remembered for auth.KEY_CACHE_SECONDS: a change made through
this server voids them at once; one made elsewhere (another server, a `jobbalancer
users` command) counts within that bound."""

from __future__ import annotations

import sqlalchemy as sa
from apihelpers import Api

from jobbalancer import auth, db
from jobbalancer.app import create_app
from jobbalancer.db import schema
from jobbalancer.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _frozen_cache(api: Api) -> Clock:
    clock = Clock()
    api.app.state.key_cache = auth.KeyCache(clock=clock)
    return clock


def test_a_key_is_read_once_while_remembered(api: Api) -> None:
    clock = _frozen_cache(api)
    _, key = api.user("sam")
    reads: list[str] = []
    sa.event.listen(api.engine, "before_cursor_execute", lambda *a: reads.append(a[2]))
    client = api.client(key)

    for _ in range(3):
        assert client.get("/api/v1/me").status_code == 200
    clock.now += auth.KEY_CACHE_SECONDS
    assert client.get("/api/v1/me").status_code == 200

    checks = [sql for sql in reads if sql.lstrip().startswith("SELECT") and "api_keys" in sql]
    assert len(checks) == 2  # the first call, then once the time is up


def test_changes_made_through_this_server_count_at_once(api: Api) -> None:
    _frozen_cache(api)  # the clock stands still: only the change can void a key
    sam_id, sam_key = api.user("sam", "submitter")  # a key of scope submit
    sam = api.client(sam_key)
    api.admin.patch(f"/api/v1/users/{sam_id}", json={"role": "viewer"})
    assert sam.post("/api/v1/jobs", json={"command": "true"}).status_code == 403

    api.admin.patch(f"/api/v1/users/{sam_id}", json={"role": "submitter"})
    assert sam.post("/api/v1/jobs", json={"command": "true"}).status_code == 201

    api.admin.patch(f"/api/v1/users/{sam_id}", json={"commands_allowed": False})
    assert sam.post("/api/v1/jobs", json={"command": "true"}).status_code == 403

    [key] = api.admin.get(f"/api/v1/users/{sam_id}/api-keys").json()
    assert api.admin.delete(f"/api/v1/users/{sam_id}/api-keys/{key['id']}").status_code == 204
    assert sam.get("/api/v1/me").status_code == 401

    dora_id, dora_key = api.user("dora")
    assert api.client(dora_key).get("/api/v1/me").status_code == 200
    api.admin.patch(f"/api/v1/users/{dora_id}", json={"disabled": True})
    assert api.client(dora_key).get("/api/v1/me").status_code == 401


def test_a_change_by_another_server_counts_within_the_bound(api: Api) -> None:
    clock = _frozen_cache(api)
    sam_id, sam_key = api.user("sam")
    other_id, other_key = api.user("olga", "operator")
    sam, olga = api.client(sam_key), api.client(other_key)
    assert sam.get("/api/v1/me").json()["role"] == "submitter"
    assert olga.get("/api/v1/me").status_code == 200

    # Another process changes the rows: nothing tells this one.
    with api.engine.begin() as conn:
        conn.execute(
            sa.update(schema.users).where(schema.users.c.id == sam_id).values(role="viewer")
        )
        conn.execute(sa.delete(schema.api_keys).where(schema.api_keys.c.user_id == other_id))

    clock.now += auth.KEY_CACHE_SECONDS - 0.1
    assert sam.get("/api/v1/me").json()["role"] == "submitter"  # still remembered
    assert olga.get("/api/v1/me").status_code == 200
    clock.now += 0.1
    assert sam.get("/api/v1/me").json()["role"] == "viewer"
    assert olga.get("/api/v1/me").status_code == 401


def test_two_servers_on_one_database(api: Api) -> None:
    """A second app on the same database; each remembers keys on its own clock."""
    other = create_app(Settings(), api.engine, supervise=False)
    clock_a, clock_b = _frozen_cache(api), Clock()
    other.state.key_cache = auth.KeyCache(clock=clock_b)
    second = Api(app=other, engine=api.engine, admin_key=api.admin_key)
    try:
        sam_id, sam_key = api.user("sam")
        assert api.client(sam_key).get("/api/v1/me").status_code == 200
        assert second.client(sam_key).get("/api/v1/me").status_code == 200

        # Revoked through the second server: this process's cache is voided at once …
        [key] = second.admin.get(f"/api/v1/users/{sam_id}/api-keys").json()
        second.admin.delete(f"/api/v1/users/{sam_id}/api-keys/{key['id']}")
        assert second.client(sam_key).get("/api/v1/me").status_code == 401
        assert api.client(sam_key).get("/api/v1/me").status_code == 401
    finally:
        for c in second._clients:
            c.close()
    assert clock_a.now == clock_b.now == 1000.0  # no time had to pass


def test_a_check_that_read_before_a_change_committed_is_not_remembered(api: Api) -> None:
    cache = auth.KeyCache(clock=Clock())
    user_id, key = api.user("sam")
    with db.write(api.engine) as change:
        change.execute(
            sa.update(schema.users).where(schema.users.c.id == user_id).values(disabled=True)
        )
        auth.keys_changed(change)
        with db.read(api.engine) as conn:  # reads the old row: the change is not committed
            assert cache.authenticate(conn, key) is not None
        assert cache.get(key) is not None
    assert cache.get(key) is None  # the commit voided it
    with db.read(api.engine) as conn:
        assert cache.authenticate(conn, key) is None


def test_unknown_keys_are_not_remembered(api: Api) -> None:
    cache = auth.KeyCache(clock=Clock())
    with db.read(api.engine) as conn:
        assert cache.authenticate(conn, "jb_unknown") is None
    assert cache.get("jb_unknown") is None


def test_a_check_between_the_commit_event_and_the_commit_is_not_remembered(api: Api) -> None:
    # SQLAlchemy's "commit" event comes before the database commits: a check then still
    # reads the old row, after the generation was bumped.
    cache = auth.KeyCache(clock=Clock())
    user_id, key = api.user("sam")
    checked: list[auth.User | None] = []

    def check_meanwhile(_: sa.Connection) -> None:
        with db.read(api.engine) as conn:
            checked.append(cache.authenticate(conn, key))

    with db.write(api.engine) as change:
        change.execute(
            sa.update(schema.users).where(schema.users.c.id == user_id).values(disabled=True)
        )
        auth.keys_changed(change)
        sa.event.listen(change, "commit", check_meanwhile, once=True)

    assert checked != [None]  # it read the row before the commit
    assert cache.get(key) is None  # but is not remembered past it

"""Users, passwords, API keys and the first admin on every backend.

argon2 at its real cost takes about a quarter of a second per hash, so most tests use a
cheap argon2id (same algorithm, tiny memory and time); one test checks the real settings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher, Type

from jobbalancer import auth, db, errors
from jobbalancer.auth import Role
from jobbalancer.db import schema

U, K = schema.users, schema.api_keys
PASSWORD = "correct horse battery"

UserFactory = Callable[..., auth.User]


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID)
    )


@pytest.fixture
def user_factory(engine: sa.Engine) -> UserFactory:
    """make(name, role="submitter", password=PASSWORD, **options) → the new user.

    Each test gets a fresh database (the ``engine`` fixture), which goes with the users.
    """

    def make(name: str, role: str = "submitter", password: str | None = PASSWORD, **kw: object):
        with db.write(engine) as conn:
            return auth.create_user(conn, name, role, password, **kw)  # type: ignore[arg-type]

    return make


def login(engine: sa.Engine, name: str, password: str) -> auth.User | None:
    with db.read(engine) as conn:
        return auth.authenticate_password(conn, name, password)


def by_key(engine: sa.Engine, key: str) -> auth.User | None:
    with db.read(engine) as conn:
        return auth.authenticate_key(conn, key)


def new_key(engine: sa.Engine, user_id: int, name: str = "ci") -> tuple[auth.ApiKey, str]:
    with db.write(engine) as conn:
        return auth.create_api_key(conn, user_id, name)


def update(engine: sa.Engine, user_id: int, **changes: object) -> auth.User:
    with db.write(engine) as conn:
        return auth.update_user(conn, user_id, changes)


# -- users --------------------------------------------------------------------------------


def test_create_user_and_read_it_back(engine: sa.Engine, user_factory: UserFactory) -> None:
    user = user_factory(" carol ", "operator", commands_allowed=False, worker_classes=["gpu"])
    assert (user.name, user.role, user.commands_allowed, user.disabled) == (
        "carol", Role.OPERATOR, False, False,
    )  # fmt: skip
    assert user.worker_classes == ("gpu",)
    assert user.created_at.tzinfo is UTC
    assert user.created_at <= datetime.now(UTC)
    keys_only = user_factory("robot", "viewer", password=None)
    assert keys_only.worker_classes is None
    with db.read(engine) as conn:
        assert auth.get_user(conn, user.id) == user
        assert auth.find_user(conn, "carol") == user
        assert auth.find_user(conn, str(user.id)) == user
        assert [u.name for u in auth.list_users(conn)] == ["carol", "robot"]
        assert auth.count_users(conn) == 2
        # The password is stored as an argon2id hash, never as itself
        stored = conn.execute(sa.select(U.c.password_hash).where(U.c.id == user.id)).scalar_one()
        assert stored.startswith("$argon2id$")
        assert PASSWORD not in stored
        no_hash = sa.select(U.c.password_hash).where(U.c.id == keys_only.id)
        assert conn.execute(no_hash).scalar_one() is None
        with pytest.raises(errors.NotFound):
            auth.get_user(conn, 4711)
        with pytest.raises(errors.NotFound):
            auth.find_user(conn, "nobody")


def test_create_user_refuses_bad_input(engine: sa.Engine, user_factory: UserFactory) -> None:
    user_factory("dave", password=None)
    cases: list[tuple[dict[str, object], type[errors.JobBalancerError], str]] = [
        ({"name": "dave"}, errors.Conflict, "name"),
        ({"name": " dave  "}, errors.Conflict, "name"),
        ({"name": "eve", "role": "superuser"}, errors.InvalidInput, "role"),
        ({"name": "   "}, errors.InvalidInput, "name"),
        ({"name": "x" * 201}, errors.InvalidInput, "name"),
        ({"name": "eve", "password": "short"}, errors.InvalidInput, "password"),
    ]
    for args, error, field in cases:
        with pytest.raises(error) as info, db.write(engine) as conn:
            auth.create_user(
                conn, str(args["name"]), str(args.get("role", "viewer")),
                args.get("password"),  # type: ignore[arg-type]
            )  # fmt: skip
        assert info.value.field == field, args
    with db.read(engine) as conn:
        assert auth.count_users(conn) == 1


def test_password_authentication(engine: sa.Engine, user_factory: UserFactory) -> None:
    # Given a user with a password and one that has none (API keys only)
    user = user_factory("frank")
    user_factory("robot", password=None)
    # Then only the right password of an existing, enabled user logs in
    assert login(engine, "frank", PASSWORD) == user
    assert login(engine, "frank", PASSWORD + "!") is None
    assert login(engine, "nobody", PASSWORD) is None
    assert login(engine, "robot", "") is None
    # When the password changes, then only the new one works
    update(engine, user.id, password="a new password")
    assert login(engine, "frank", PASSWORD) is None
    assert login(engine, "frank", "a new password") is not None
    # When the user is disabled, then even the right password does not log in
    update(engine, user.id, disabled=True)
    assert login(engine, "frank", "a new password") is None
    update(engine, user.id, disabled=False)
    assert login(engine, "frank", "a new password") is not None


def test_a_corrupt_stored_hash_does_not_log_in(
    engine: sa.Engine, user_factory: UserFactory
) -> None:
    user = user_factory("gina")
    with db.write(engine) as conn:
        conn.execute(sa.update(U).where(U.c.id == user.id).values(password_hash="not-a-hash"))
    assert login(engine, "gina", PASSWORD) is None


def test_update_user(engine: sa.Engine, user_factory: UserFactory) -> None:
    user = user_factory("hank", password=None)
    changed = update(engine, user.id, role="admin", worker_classes=["a", "b"], name=" henry ")
    assert (changed.role, changed.worker_classes, changed.name) == (Role.ADMIN, ("a", "b"), "henry")
    assert update(engine, user.id, worker_classes=None).worker_classes is None
    for changes, field in (({"role": "root"}, "role"), ({"password": "short"}, "password")):
        with pytest.raises(errors.InvalidInput) as info:
            update(engine, user.id, **changes)
        assert info.value.field == field
    with pytest.raises(errors.NotFound):
        update(engine, 4711, role="viewer")


# -- API keys -----------------------------------------------------------------------------


def test_an_api_key_is_shown_once_and_stored_only_as_a_hash(
    engine: sa.Engine, user_factory: UserFactory
) -> None:
    user = user_factory("ivy", password=None)
    record, key = new_key(engine, user.id, "laptop")
    # The key is long and random, and the record tells it apart without holding it
    assert key.startswith(auth.KEY_PREFIX)
    assert len(key) > 40
    assert (record.user_id, record.name, record.prefix) == (user.id, "laptop", key[:11])
    assert record.last_used_at is None
    assert key not in repr(record)
    # The database keeps only a SHA-256 of it
    with db.read(engine) as conn:
        row = conn.execute(sa.select(K).where(K.c.id == record.id)).one()
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert key not in [str(v) for v in row]
        # Listing the keys never shows one again
        listed = auth.list_api_keys(conn, user.id)
    assert listed == [record]
    assert key not in repr(listed)
    # A second key is a different one
    _, other = new_key(engine, user.id)
    assert other != key


def test_api_key_authentication_and_revocation(
    engine: sa.Engine, user_factory: UserFactory
) -> None:
    # Given two users with a key each
    jack, kim = user_factory("jack", password=None), user_factory("kim", password=None)
    record, key = new_key(engine, jack.id)
    kim_record, kim_key = new_key(engine, kim.id)
    # Then each key authenticates its own user, and nothing else does
    assert by_key(engine, key) == jack
    assert by_key(engine, kim_key) == kim
    assert by_key(engine, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert by_key(engine, key.removeprefix(auth.KEY_PREFIX)) is None
    assert by_key(engine, key + "x" * 200) is None
    assert by_key(engine, "") is None
    # When jack is disabled, then his key stops working until he is enabled
    update(engine, jack.id, disabled=True)
    assert by_key(engine, key) is None
    update(engine, jack.id, disabled=False)
    # When kim tries to revoke jack's key, then there is no such key of hers
    with pytest.raises(errors.NotFound), db.write(engine) as conn:
        auth.revoke_api_key(conn, kim.id, record.id)
    assert by_key(engine, key) == jack
    # When jack revokes it, then it no longer authenticates; kim's still does
    with db.write(engine) as conn:
        auth.revoke_api_key(conn, jack.id, record.id)
    assert by_key(engine, key) is None
    assert by_key(engine, kim_key) == kim
    with pytest.raises(errors.NotFound), db.write(engine) as conn:
        auth.revoke_api_key(conn, jack.id, record.id)
    # When kim is deleted, then her keys go with her
    with db.write(engine) as conn:
        auth.delete_user(conn, kim.id)
        assert auth.list_api_keys(conn, kim.id) == []
        with pytest.raises(errors.NotFound):
            auth.create_api_key(conn, kim.id)
    assert by_key(engine, kim_key) is None
    assert kim_record.id != record.id


# -- the first admin ------------------------------------------------------------------------


def test_ensure_first_admin_creates_one_admin_only_once(engine: sa.Engine) -> None:
    # Given an empty user table, when the server starts for the first time
    with db.write(engine) as conn:
        first = auth.ensure_first_admin(conn)
    # Then an admin exists whose printed password and key both work
    assert first is not None
    admin, password, key = first
    assert (admin.name, admin.role, admin.is_admin) == ("admin", Role.ADMIN, True)
    assert len(password) >= 12
    assert login(engine, "admin", password) == admin
    assert by_key(engine, key) == admin
    # When it starts again, then nothing is created or shown
    with db.write(engine) as conn:
        assert auth.ensure_first_admin(conn) is None
        assert auth.count_users(conn) == 1


def test_ensure_first_admin_leaves_an_existing_user_table_alone(
    engine: sa.Engine, user_factory: UserFactory
) -> None:
    user_factory("lee", "viewer", password=None)
    with db.write(engine) as conn:
        assert auth.ensure_first_admin(conn) is None
        assert [u.name for u in auth.list_users(conn)] == ["lee"]


def test_the_real_hasher_is_argon2id_at_full_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the module's own hasher, not the cheap one
    stored = auth.hash_password(PASSWORD)
    assert stored.startswith("$argon2id$")
    assert "m=65536,t=3" in stored
    assert auth.hash_password(PASSWORD) != stored  # salted
    assert auth._hasher.verify(stored, PASSWORD)


# -- what roles allow (no database) ------------------------------------------------------------


def user(role: Role, user_id: int = 1, classes: tuple[str, ...] | None = None) -> auth.User:
    return auth.User(user_id, "u", role, True, classes, False, datetime.now(UTC))


def test_what_each_role_may_do() -> None:
    admin, operator = user(Role.ADMIN), user(Role.OPERATOR)
    submitter, viewer = user(Role.SUBMITTER, user_id=5), user(Role.VIEWER)
    assert [u.can_submit for u in (admin, operator, submitter, viewer)] == [
        True, True, True, False,
    ]  # fmt: skip
    assert [u.is_admin for u in (admin, operator, submitter, viewer)] == [
        True, False, False, False,
    ]  # fmt: skip
    for manager in (admin, operator):
        assert manager.can_manage_job(99) and manager.can_manage_job(None)
        assert manager.can_see_job(99)
    assert submitter.can_manage_job(5)
    assert not submitter.can_manage_job(6)
    assert not submitter.can_manage_job(None)
    assert submitter.can_see_job(5) and not submitter.can_see_job(6)
    assert not viewer.can_manage_job(viewer.id)
    assert viewer.can_see_job(99)


def test_a_user_may_be_limited_to_some_worker_classes() -> None:
    assert user(Role.SUBMITTER).may_use_class("anything")
    limited = user(Role.SUBMITTER, classes=("gpu",))
    assert limited.may_use_class("gpu")
    assert not limited.may_use_class("default")

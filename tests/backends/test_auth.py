"""Users, passwords, API keys and the first admin on every backend.

argon2 at its real cost takes about a quarter of a second per hash, so most tests use a
cheap argon2id (same algorithm, tiny memory and time); one test checks the real settings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher, Type

from jobbalancer import auth, db, errors, refs
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


# -- login throttling, with the database's clock moved by hand -------------------------------

LF = schema.login_failures


def _fail(engine: sa.Engine, name: str, address: str, now: datetime) -> int:
    with db.write(engine) as conn:
        return auth.record_failed_login(conn, name, address, now)


def _wait(engine: sa.Engine, name: str, address: str, now: datetime) -> int:
    with db.read(engine) as conn:
        return auth.login_wait(conn, name, address, now)


def _check(engine: sa.Engine, name: str, password: str, address: str, now: datetime) -> str:
    """What check_login says: the user's name, or the error's code."""
    try:
        with db.read(engine) as conn:
            return auth.check_login(conn, name, password, address, now).name
    except errors.JobBalancerError as exc:
        return exc.code


def _now(engine: sa.Engine) -> datetime:
    with db.read(engine) as conn:
        return db.now(conn)


def test_failures_make_one_address_wait_for_one_name(
    engine: sa.Engine, user_factory: UserFactory
) -> None:
    user_factory("alice")
    now = _now(engine)
    waits = [_fail(engine, "alice", "10.0.0.1", now) for _ in range(auth.FREE_FAILURES + 3)]
    assert waits == [0] * auth.FREE_FAILURES + [1, 2, 4]
    # That address waits for that name, even with the right password …
    assert _wait(engine, "alice", "10.0.0.1", now) == 4
    assert _check(engine, "alice", PASSWORD, "10.0.0.1", now) == "throttled"
    # … not another address, and not another name from that address.
    assert _check(engine, "alice", PASSWORD, "10.0.0.2", now) == "alice"
    assert _wait(engine, "bob", "10.0.0.1", now) == 0
    # Once the wait is over it may try again.
    later = now + timedelta(seconds=4)
    assert _check(engine, "alice", PASSWORD, "10.0.0.1", later) == "alice"


def test_many_names_from_one_address_make_it_wait_for_all(engine: sa.Engine) -> None:
    now = _now(engine)
    for i in range(auth.FREE_ADDRESS_FAILURES):
        assert _fail(engine, f"name{i}", "10.0.0.3", now) == 0
    assert _fail(engine, "one-more", "10.0.0.3", now) == 1
    assert _wait(engine, "never-tried", "10.0.0.3", now) == 1
    assert _wait(engine, "never-tried", "10.0.0.4", now) == 0


def test_old_failures_are_forgotten(engine: sa.Engine) -> None:
    now = _now(engine)
    for _ in range(auth.FREE_FAILURES + 5):
        _fail(engine, "carol", "10.0.0.5", now)
    later = now + auth.FORGET_AFTER + timedelta(seconds=1)
    assert _wait(engine, "carol", "10.0.0.5", later) == 0
    # and the next failure starts the count afresh (the old rows are tidied away)
    assert _fail(engine, "carol", "10.0.0.5", later) == 0
    with db.read(engine) as conn:
        assert conn.execute(sa.select(sa.func.max(LF.c.failures))).scalar() == 1


def test_names_are_counted_without_storing_them_and_case_alike(engine: sa.Engine) -> None:
    now = _now(engine)
    for name in ("Admin", "admin", " ADMIN "):
        _fail(engine, name, "10.0.0.6", now)
    with db.read(engine) as conn:
        rows = conn.execute(sa.select(LF.c.account, LF.c.failures)).all()
    admin = auth._account("admin")
    assert sorted(rows) == sorted([(admin, 3), (admin, 3), (auth.ANY_ACCOUNT, 3)])
    assert all("admin" not in account.lower() for account, _ in rows)


def test_unknown_names_are_answered_and_counted_like_known_ones(
    engine: sa.Engine, user_factory: UserFactory
) -> None:
    user_factory("dave")
    now = _now(engine)
    answers: dict[str, list[str]] = {}
    for name, address in (("dave", "10.0.1.1"), ("nobody", "10.0.1.2")):
        answers[name] = []
        for _ in range(auth.FREE_FAILURES + 4):
            answer = _check(engine, name, "guess", address, now)
            answers[name].append(answer)
            if answer == "unauthorized":
                _fail(engine, name, address, now)
    assert answers["dave"] == answers["nobody"]
    assert answers["dave"].count("throttled") == 3


def test_a_success_forgives_that_name_from_that_address(
    engine: sa.Engine, user_factory: UserFactory
) -> None:
    user_factory("erin")
    now = _now(engine)
    for _ in range(2):
        _fail(engine, "erin", "10.0.0.7", now)
    with db.write(engine) as conn:
        auth.record_login(conn, "erin", "10.0.0.7")
    with db.read(engine) as conn:
        accounts = conn.execute(sa.select(LF.c.account)).scalars().all()
    assert accounts == [auth.ANY_ACCOUNT]  # the address's own count stays


def test_a_password_reset_lifts_every_wait_for_that_name(
    engine: sa.Engine, user_factory: UserFactory
) -> None:
    user = user_factory("fay")
    now = _now(engine)
    for address in ("10.0.0.8", "10.0.0.9"):
        for _ in range(auth.FREE_ADDRESS_FAILURES + 1):
            _fail(engine, "fay", address, now)
    _fail(engine, "someone-else", "10.0.0.99", now)
    update(engine, user.id, password="another password")
    for address in ("10.0.0.8", "10.0.0.9", "10.0.0.77"):  # and the name's own wait
        assert _wait(engine, "fay", address, now) == 0
    with db.read(engine) as conn:  # only someone else's rows stay: name, address, both
        assert conn.execute(sa.select(sa.func.count()).select_from(LF)).scalar() == 3


def test_concurrent_failures_are_all_counted(engine: sa.Engine) -> None:
    now = _now(engine)
    count = 8
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: _fail(engine, "gus", "10.0.0.10", now), range(count)))
    with db.read(engine) as conn:
        counts = conn.execute(sa.select(LF.c.failures)).scalars().all()
    assert counts == [count, count, count]


def _begin(engine: sa.Engine, name: str, address: str, now: datetime) -> int | str:
    """What begin_login says: the wait a failure would set, or the error's code."""
    try:
        with db.write(engine) as conn:
            return auth.begin_login(conn, name, address, now)
    except errors.LoginThrottled as exc:
        return exc.code


def _rows(engine: sa.Engine) -> list[tuple[str, str, int]]:
    with db.read(engine) as conn:
        query = sa.select(LF.c.account, LF.c.address, LF.c.failures)
        return sorted((r.account, r.address, r.failures) for r in conn.execute(query))


@pytest.mark.parametrize("name", ["hal", "no-such-user"])
def test_guesses_at_one_name_from_many_addresses_slow_it_for_all_but_briefly(
    engine: sa.Engine, user_factory: UserFactory, name: str
) -> None:
    user_factory("hal")
    now = _now(engine)
    # One failure from each of many addresses: free at first, then 1 s doubling …
    waits = [_fail(engine, name, f"10.2.0.{i}", now) for i in range(auth.FREE_ACCOUNT_FAILURES + 6)]
    assert waits == [0] * auth.FREE_ACCOUNT_FAILURES + [1, 2, 4, 8, 15, 15]
    # … for every address, one never seen too, up to the low cap and no longer
    cap = int(auth.MAX_ACCOUNT_WAIT.total_seconds())
    assert _wait(engine, name, "10.3.0.1", now) == cap
    assert _check(engine, "hal", PASSWORD, "10.3.0.1", now) == (
        "throttled" if name == "hal" else "hal"
    )
    later = now + auth.MAX_ACCOUNT_WAIT
    assert _wait(engine, name, "10.3.0.1", later) == 0
    if name == "hal":  # the real user gets in once those seconds are over
        assert _check(engine, "hal", PASSWORD, "10.3.0.1", later) == "hal"


def test_a_try_is_counted_before_its_password_is_checked(engine: sa.Engine) -> None:
    now = _now(engine)
    answers = [_begin(engine, "ivy", "10.0.2.1", now) for _ in range(auth.FREE_FAILURES + 3)]
    # Each try counts as a failure up front; once a wait is due the next is refused …
    assert answers == [0] * auth.FREE_FAILURES + [1, "throttled", "throttled"]
    # … and a refused try is not counted (it rolled back)
    expected = auth.FREE_FAILURES + 1
    assert [n for _, _, n in _rows(engine)] == [expected] * 3
    # A success takes its own try back: the name's rows go, the address's count drops by one
    with db.write(engine) as conn:
        auth.record_login(conn, "ivy", "10.0.2.1")
    assert _rows(engine) == [(auth.ANY_ACCOUNT, "10.0.2.1", expected - 1)]


def test_parallel_tries_from_one_address_cannot_all_pass_one_check(engine: sa.Engine) -> None:
    # Given many tries at once, all at the same moment, before any password is checked
    now = _now(engine)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _begin(engine, "jo", "10.0.2.2", now), range(12)))
    # Then only the free ones and the first that sets a wait went on to the password check
    passed = [a for a in answers if a != "throttled"]
    assert len(passed) == auth.FREE_FAILURES + 1
    assert sorted(passed) == [0] * auth.FREE_FAILURES + [1]


# -- ids are never reused ------------------------------------------------------------------


def test_a_deleted_users_id_is_never_given_again(
    engine: sa.Engine, user_factory: UserFactory
) -> None:
    first = user_factory("hal")
    key, _ = new_key(engine, first.id)
    with db.write(engine) as conn:
        auth.delete_user(conn, first.id)
    second = user_factory("hal")
    assert second.id > first.id
    again, _ = new_key(engine, second.id)
    assert again.id > key.id


# -- names --------------------------------------------------------------------------------

BAD_NAMES = {
    "admin\u200b": "invisible",  # zero-width space
    "\u202eadmin": "invisible",  # right-to-left override
    "x\u0085y": "invisible",  # NEL, a C1 control
    "a\tb": "invisible",
    "a\u2028b": "invisible",  # line separator
    "a\ue000b": "invisible",  # private use
    "a\u00a0b": "plain space",  # no-break space
    "\uff41dmin": "plain form",  # fullwidth a
    "\u0430dmin": "Cyrillic and Latin",  # a Cyrillic a among Latin letters
    "\u03b1lpha": "Greek and Latin",
}


@pytest.mark.parametrize("name", sorted(BAD_NAMES), ids=ascii)
def test_names_that_would_deceive_are_refused(name: str) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        refs.check_name(name, "user")
    assert BAD_NAMES[name] in caught.value.message
    assert caught.value.field == "name"


@pytest.mark.parametrize(
    "name", ["alice", "Zoë Smith", "\u0438\u0432\u0430\u043d", "ops-team_2", "日本"]
)
def test_names_of_one_script_are_fine(name: str) -> None:
    assert refs.check_name(name, "user") == name

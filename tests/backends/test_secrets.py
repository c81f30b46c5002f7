"""Secrets on every backend: stored encrypted and bound to their name, limits kept, jobs
carry references (restarts and retries too), and the worker's check at the start
(resolve): the secret still exists, the owner and the class may still use it, the key
opens it. Under the worker's database role: it reads the sealed values and limits, and
nothing else of the secrets table."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from jobbalancer import auth, db, errors, jobs, notify, vault
from jobbalancer.db import schema
from jobbalancer.service import secrets as service
from jobbalancer.settings import Settings
from tests.backends.test_grants import ROLES, as_role, role  # noqa: F401  (fixtures)

KEY_TEXT = vault.new_key_text()
KEY = vault.Key.parse(KEY_TEXT, "test")
VALUE = "pg-pa55-\u00e9-value"


def _user(engine: sa.Engine, name: str, role_: str = "submitter") -> auth.User:
    with db.write(engine) as conn:
        return auth.create_user(conn, name, role_)


def _secret(engine: sa.Engine, name: str = "prod-db", **limits: object) -> vault.Secret:
    with db.write(engine) as conn:
        return vault.create(conn, KEY, name, VALUE, by="admin", **limits)  # type: ignore[arg-type]


def _resolve(engine: sa.Engine, names: list[str], owner: int | None, klass: str = "default",
             key: vault.Key | None = KEY) -> dict[str, str]:  # fmt: skip
    with db.read(engine) as conn:
        return vault.resolve(conn, key, names, owner_id=owner, worker_class=klass, job_id=1)


def test_store_list_update_delete(engine: sa.Engine) -> None:
    alice = _user(engine, "alice")
    made = _secret(engine, description="db", worker_classes=["default"], users=[alice.id])
    assert made.users == (alice.id,) and made.user_names == ("alice",)
    assert made.worker_classes == ("default",) and made.created_by == "admin"
    with db.read(engine) as conn:
        row = conn.execute(sa.select(schema.secrets)).one()
        assert VALUE not in row.value and row.key_id == KEY.id
        assert KEY.decrypt(row.value, "prod-db") == VALUE
        assert [s.name for s in vault.list_secrets(conn)] == ["prod-db"]
    with db.write(engine) as conn, pytest.raises(errors.Conflict):
        vault.create(conn, KEY, "prod-db", "x")
    with db.write(engine) as conn:
        changed = vault.update(conn, KEY, made.id, {"value": "new", "users": None}, by="bob")
    assert changed.users is None and changed.updated_by == "bob"
    assert _resolve(engine, ["prod-db"], alice.id) == {"prod-db": "new"}
    with db.write(engine) as conn:
        vault.delete(conn, made.id)
        assert vault.find(conn, "prod-db") is None


def test_a_value_copied_to_another_name_does_not_open(engine: sa.Engine) -> None:
    owner = _user(engine, "alice").id
    _secret(engine, "prod-db")
    _secret(engine, "test-db")
    s = schema.secrets
    with db.write(engine) as conn:
        stolen = conn.execute(sa.select(s.c.value).where(s.c.name == "prod-db")).scalar_one()
        conn.execute(sa.update(s).where(s.c.name == "test-db").values(value=stolen))
    with pytest.raises(vault.Unusable, match="integrity check"):
        _resolve(engine, ["test-db"], owner)


def test_resolve_checks_again_at_the_start(engine: sa.Engine) -> None:
    alice, bob = _user(engine, "alice"), _user(engine, "bob")
    made = _secret(engine, worker_classes=["default"], users=[alice.id])
    assert _resolve(engine, ["prod-db"], alice.id) == {"prod-db": VALUE}
    with pytest.raises(vault.Unusable, match="owner may not use secret 'prod-db'"):
        _resolve(engine, ["prod-db"], bob.id)
    with pytest.raises(vault.Unusable, match="worker class 'gpu'"):
        _resolve(engine, ["prod-db"], alice.id, "gpu")
    with pytest.raises(vault.Unusable, match="no secret key"):
        _resolve(engine, ["prod-db"], alice.id, key=None)
    other = vault.Key.parse(vault.new_key_text(), "other")
    with pytest.raises(vault.Unusable, match=f"key with id {KEY.id}"):
        _resolve(engine, ["prod-db"], alice.id, key=other)
    with pytest.raises(vault.Unusable, match="'nope' does not exist"):
        _resolve(engine, ["nope"], alice.id)
    # A disabled user's queued jobs get no secrets (enabled again: they do).
    with db.write(engine) as conn:
        auth.update_user(conn, alice.id, {"disabled": True})
    with pytest.raises(vault.Unusable, match="owner is disabled"):
        _resolve(engine, ["prod-db"], alice.id)
    with db.write(engine) as conn:
        auth.update_user(conn, alice.id, {"disabled": False})
    assert _resolve(engine, ["prod-db"], alice.id) == {"prod-db": VALUE}
    # A deleted user leaves the list: their queued jobs fail at the start.
    with db.write(engine) as conn:
        auth.delete_user(conn, alice.id)
        vault.forget_user(conn, alice.id)
        assert vault.get(conn, made.id).users == ()
    with pytest.raises(vault.Unusable, match="owner was deleted"):
        _resolve(engine, ["prod-db"], alice.id)
    # Also for a secret anyone may use.
    _secret(engine, "open-db")
    with pytest.raises(vault.Unusable, match="owner was deleted"):
        _resolve(engine, ["open-db"], alice.id)


def test_submit_checks_with_one_read_per_secret(engine: sa.Engine) -> None:
    alice, bob = _user(engine, "alice"), _user(engine, "bob")
    _secret(engine, users=[alice.id], worker_classes=["default"])
    with db.read(engine) as conn:
        checker = service.Checker(conn)
        checker.check(alice, "default", {"secret_env.P": "prod-db", "secret_env.Q": "prod-db"})
        with pytest.raises(errors.InvalidInput) as missing:
            checker.check(bob, "default", {"secret_env.P": "prod-db"})
        assert missing.value.field == "secret_env.P"
        with pytest.raises(errors.Forbidden):
            checker.check(alice, "gpu", {"params.2": "prod-db"})


def test_jobs_carry_references_through_restarts_and_retries(engine: sa.Engine) -> None:
    spec = jobs.Spec(
        worker_class_id=1, command="psql", params=("x", "api-token"), retries=1,
        secret_env={"PGPASSWORD": "prod-db"}, secret_args={1: "api-token"},
    )  # fmt: skip
    with db.write(engine) as conn:
        [job_id] = jobs.create(conn, [spec], 7, "alice")
        restarted = jobs.restart(conn, job_id, 7, "alice")
        retried = jobs._retry(conn, job_id, jobs.State.FAILED, 1)  # a failed attempt's retry
    assert retried is not None
    with db.read(engine) as conn:
        for found in (jobs.get(conn, job_id), jobs.get(conn, restarted), jobs.get(conn, retried)):
            assert found.secret_env == {"PGPASSWORD": "prod-db"}
            assert found.secret_args == {1: "api-token"}
    with db.write(engine) as conn:
        [plain] = jobs.create(conn, [jobs.Spec(worker_class_id=1, command="true")], 7, "alice")
        assert jobs.get(conn, plain).secret_env == {} and jobs.get(conn, plain).secret_args == {}


def test_target_secrets_are_sealed_and_old_clear_ones_sealed_at_start(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        sealed = notify.create_target(conn, "a", "webhook", url="https://a.test/", secret="s1",
                                      key=KEY)  # fmt: skip
        clear = notify.create_target(conn, "b", "webhook", url="https://b.test/", secret="s2")
        assert vault.is_sealed(sealed.secret) and clear.secret == "s2"
        assert notify.seal_stored(conn, KEY) == 1
        assert vault.anything_sealed(conn)
    with db.read(engine) as conn:
        stored = {t.name: t for t in notify.list_targets(conn)}
    config_key = vault.new_key_text()
    assert all(vault.is_sealed(t.secret) for t in stored.values())
    opened = notify.opened(stored["b"], Settings(secret_key=KEY_TEXT))
    assert opened.secret == "s2"
    with pytest.raises(vault.NoKey):
        notify.opened(stored["b"], Settings(secret_key=config_key))


@ROLES
def test_the_worker_role_reads_only_what_resolving_needs(
    engine: sa.Engine,
    as_role: sa.Engine,  # noqa: F811
) -> None:
    alice = _user(engine, "alice")
    _secret(engine, users=[alice.id], worker_classes=["default"])
    assert _resolve(as_role, ["prod-db"], alice.id) == {"prod-db": VALUE}
    with db.write(engine) as conn:
        auth.update_user(conn, alice.id, {"disabled": True})
    with pytest.raises(vault.Unusable, match="owner is disabled"):
        _resolve(as_role, ["prod-db"], alice.id)
    refused = (
        "SELECT * FROM secrets",
        "SELECT description FROM secrets",
        "SELECT name FROM users",
        "SELECT password_hash FROM users",
        "UPDATE users SET disabled = FALSE",
        "UPDATE secrets SET users = NULL",
    )
    for statement in refused:
        with pytest.raises(errors.DatabaseRefused), db.write(as_role) as conn:
            conn.execute(sa.text(statement))

"""The audit log and scoped keys on every backend: an entry is written in the change's own
transaction (a change that rolls back leaves none), with the database's clock, the actor
and how they came; retention deletes old entries; existing keys keep their rights when
they get a scope; an expired key is refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa

from jobbalancer import audit, auth, db, errors, jobs, monitor
from jobbalancer.db import schema
from jobbalancer.service import access, fleet, inputs, job_actions, submission, users

A, K = schema.audit_log, schema.api_keys


def _entries(engine: sa.Engine) -> list[audit.Entry]:
    with db.read(engine) as conn:
        return [audit.Entry.from_row(r) for r in conn.execute(sa.select(A).order_by(A.c.id))]


def _submit(engine: sa.Engine, user: auth.User, n: int = 1) -> list[jobs.Job]:
    batch = [inputs.JobSubmit(command="true") for _ in range(n)]
    return submission.submit(engine, user, batch, prefix=n > 1, limiter=submission.RateLimiter())


@pytest.fixture
def alice(engine: sa.Engine) -> auth.User:
    with db.write(engine) as conn:
        user = auth.create_user(conn, "alice", "operator")
    return dataclasses.replace(user, via="key jb_abcdefgh", address="127.0.0.9")


def test_an_entry_says_who_how_from_where_and_when_by_the_database_clock(
    engine: sa.Engine, alice: auth.User
) -> None:
    [job] = _submit(engine, alice)
    with db.read(engine) as conn:
        now = db.now(conn)
    [entry] = _entries(engine)
    assert (entry.actor_id, entry.actor_name, entry.via, entry.address) == (
        alice.id, "alice", "key jb_abcdefgh", "127.0.0.9")  # fmt: skip
    assert (entry.action, entry.object_type, entry.object_id, entry.count) == (
        "job.submit", "job", job.id, 1)  # fmt: skip
    assert timedelta(0) <= now - entry.at < timedelta(minutes=1)


def test_a_batch_is_one_entry_with_its_count(engine: sa.Engine, alice: auth.User) -> None:
    made = _submit(engine, alice, 5)
    [entry] = _entries(engine)
    assert entry.count == 5 and entry.object_id == made[0].id
    assert f"jobs {made[0].id} to {made[-1].id}" in entry.summary


def test_a_change_that_rolls_back_writes_no_entry(
    engine: sa.Engine, alice: auth.User, monkeypatch: pytest.MonkeyPatch
) -> None:
    [job] = _submit(engine, alice)

    def broken(conn: sa.Connection, job_id: int) -> jobs.Job:
        raise RuntimeError("after the entry, before the commit")

    # kill records its entry, then reads the job back: failing there rolls it all back
    monkeypatch.setattr(jobs, "get", broken)
    with pytest.raises(RuntimeError):
        job_actions.kill(engine, alice, job.id)
    monkeypatch.undo()
    assert [e.action for e in _entries(engine)] == ["job.submit"]
    assert job_actions.get(engine, alice, job.id).state == jobs.State.WAITING


def test_an_entry_is_rolled_back_with_its_transaction(engine: sa.Engine) -> None:
    with pytest.raises(RuntimeError), db.write(engine) as conn:
        audit.record(conn, access.LOCAL, "setting.update", "settings", summary="x")
        raise RuntimeError("rolled back")
    assert _entries(engine) == []
    with db.write(engine) as conn:
        audit.record(conn, access.LOCAL, "setting.update", "settings", summary="y")
    [entry] = _entries(engine)
    assert (entry.actor_id, entry.actor_name, entry.via) == (None, "local", "cli")


def test_a_script_edit_is_a_bounded_diff(engine: sa.Engine, alice: auth.User) -> None:
    spec = inputs.ScriptIn(name="backup", interpreter="sh", content="echo one\necho two\n")
    script = fleet.create_script(engine, alice, spec)
    fleet.update_script(engine, alice, script.id, {"content": "echo one\necho three\n"})
    big = "".join(f"echo {i}\n" for i in range(5000))
    fleet.update_script(engine, alice, script.id, {"content": big})
    created, edited, huge = _entries(engine)
    assert created.action == "script.create" and "+echo two" in created.summary
    assert edited.action == "script.update"
    assert "-echo two" in edited.summary and "+echo three" in edited.summary
    assert len(huge.summary) <= audit.MAX_SUMMARY and "more characters" in huge.summary


def test_a_script_edit_shows_its_parameters_and_requests_and_a_class_its_requests(
    engine: sa.Engine, alice: auth.User
) -> None:
    crf = {"name": "crf", "type": "int", "min": 0, "max": 51, "default": 23}
    body = {"name": "encode", "interpreter": "sh", "content": "echo $1\n", "parameters": [crf]}
    spec = inputs.ScriptIn.model_validate(body)
    script = fleet.create_script(engine, alice, spec)
    patch = inputs.ScriptPatch.model_validate(
        {"parameters": [{**crf, "max": 63}], "requests": {"cpus": 2}}
    )
    fleet.update_script(engine, alice, script.id, patch.model_dump(exclude_unset=True))
    made = fleet.create_class(engine, alice, inputs.WorkerClassIn(name="gpu"))
    change = inputs.WorkerClassPatch.model_validate({"requests": {"gpus": 1}})
    fleet.update_class(engine, alice, made.id, change.model_dump(exclude_unset=True))
    created, edited, _, klass = _entries(engine)
    assert '+{"default": 23, "max": 51, "min": 0' in created.summary
    assert '-{"default": 23, "max": 51' in edited.summary
    assert '+{"default": 23, "max": 63' in edited.summary
    assert "requests: none → cpus=2" in edited.summary
    assert klass.action == "class.update" and "requests: none → gpus=1" in klass.summary


def test_users_and_keys_are_recorded_without_passwords_or_keys(engine: sa.Engine) -> None:
    spec = inputs.UserIn(name="bob", role="submitter", password="bobs secret pw")
    bob = users.create(engine, access.LOCAL, spec)
    users.update(engine, access.LOCAL, bob.id, {"password": "another secret", "role": "viewer"})
    record, key = users.create_key(engine, access.LOCAL, bob.id, "ci", expires_at="30d")
    users.revoke_key(engine, access.LOCAL, bob.id, record.id)
    entries = _entries(engine)
    assert [e.action for e in entries] == ["user.create", "user.update", "key.create",
                                           "key.revoke"]  # fmt: skip
    assert "role: submitter → viewer" in entries[1].summary
    assert "password (changed)" in entries[1].summary
    text = " ".join(e.summary for e in entries)
    assert "secret" not in text and key not in text and key[11:] not in text


def test_the_actor_filter_finds_a_renamed_users_older_entries(
    engine: sa.Engine, alice: auth.User
) -> None:
    _submit(engine, alice)
    users.update(engine, access.LOCAL, alice.id, {"name": "alicia"})
    renamed = dataclasses.replace(alice, name="alicia")
    _submit(engine, renamed)
    with db.read(engine) as conn:
        found, _ = audit.page(conn, audit.Filters(actor="alicia"), 10, None)
        by_old_name, _ = audit.page(conn, audit.Filters(actor="alice"), 10, None)
    assert [(e.actor_name, e.action) for e in found] == [
        ("alicia", "job.submit"), ("alice", "job.submit")]  # fmt: skip
    assert [e.actor_name for e in by_old_name] == ["alice"]


def test_the_object_filter_finds_a_renamed_scripts_older_entries(
    engine: sa.Engine, alice: auth.User
) -> None:
    spec = inputs.ScriptIn(name="backup-old", interpreter="sh", content="echo one\n")
    script = fleet.create_script(engine, alice, spec)
    fleet.update_script(engine, alice, script.id, {"name": "backup"})
    fleet.update_script(engine, alice, script.id, {"content": "echo two\n"})
    with db.read(engine) as conn:
        found, _ = audit.page(conn, audit.Filters(object="script:backup"), 10, None)
        by_id, _ = audit.page(conn, audit.Filters(object=f"script:{script.id}"), 10, None)
    assert [e.action for e in found] == ["script.update", "script.update", "script.create"]
    assert by_id == found


def test_retention_deletes_old_entries_only(engine: sa.Engine, alice: auth.User) -> None:
    _submit(engine, alice)
    fleet.save_settings(engine, access.LOCAL, {"audit_retention_days": 10})
    with db.write(engine) as conn:
        first = conn.execute(sa.select(sa.func.min(A.c.id))).scalar_one()
        old = db.now(conn) - timedelta(days=11)
        conn.execute(sa.update(A).where(A.c.id == first).values(at=old))
    monitor.apply_retention(engine)
    assert [e.action for e in _entries(engine)] == ["setting.update"]


def test_a_key_that_expires_makes_keys_that_expire_no_later(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        dora = auth.create_user(conn, "dora", "operator")
    _, key = users.create_key(engine, access.LOCAL, dora.id, "ci", expires_at="30d")
    with db.read(engine) as conn:
        by_key = auth.authenticate_key(conn, key)
    assert by_key is not None and by_key.key_expires_at is not None
    for later in (None, "60d"):
        with pytest.raises(errors.InvalidInput, match="expire no later") as refused:
            users.create_key(engine, by_key, dora.id, "forever", expires_at=later)
        assert refused.value.field == "expires_at"
    record, _ = users.create_key(engine, by_key, dora.id, "short", expires_at="7d")
    assert record.expires_at is not None and record.expires_at <= by_key.key_expires_at
    web = dataclasses.replace(dora, via="web")  # a web session may make any
    assert users.create_key(engine, web, dora.id, "laptop")[0].expires_at is None


def test_an_expired_key_is_refused_saying_so(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        user = auth.create_user(conn, "carl", "submitter")
        record, key = auth.create_api_key(conn, user.id, "ci", scope="submit")
    cache = auth.KeyCache()
    with db.read(engine) as conn:
        assert cache.authenticate(conn, key) is not None
    with db.write(engine) as conn:
        past = db.now(conn) - timedelta(seconds=1)
        conn.execute(sa.update(K).where(K.c.id == record.id).values(expires_at=past))
    with db.read(engine) as conn, pytest.raises(auth.errors.Unauthorized, match="expired"):
        auth.authenticate_key(conn, key)


def test_a_key_soon_to_expire_is_not_remembered_past_its_expiry(engine: sa.Engine) -> None:
    clock = [100.0]
    cache = auth.KeyCache(ttl=60, clock=lambda: clock[0])
    with db.write(engine) as conn:
        user = auth.create_user(conn, "dina", "submitter")
        soon = db.now(conn) + timedelta(seconds=5)
        _, key = auth.create_api_key(conn, user.id, "ci", expires_at=soon)
    with db.read(engine) as conn:
        assert cache.authenticate(conn, key) is not None
    clock[0] += 3
    assert cache.get(key) is not None
    clock[0] += 3  # past its expiry: not from the cache, the database says no
    assert cache.get(key) is None


def test_a_keys_rights_are_the_lesser_of_its_scope_and_its_users_role(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        auth.create_user(conn, "other", "admin")  # so that boss may be demoted
        boss = auth.create_user(conn, "boss", "admin")
        _, submit_key = auth.create_api_key(conn, boss.id, "ci", scope="submit")
        _, admin_key = auth.create_api_key(conn, boss.id, "all")
        with pytest.raises(auth.errors.InvalidInput, match="scope"):
            auth.create_api_key(conn, auth.create_user(conn, "v", "viewer").id, scope="submit")
    with db.read(engine) as conn:
        by_submit = auth.authenticate_key(conn, submit_key)
        by_admin = auth.authenticate_key(conn, admin_key)
    assert by_submit is not None and by_submit.role == auth.Role.SUBMITTER
    assert by_submit.scope == auth.Scope.SUBMIT and by_submit.via.startswith("key jb_")
    assert by_admin is not None and by_admin.role == auth.Role.ADMIN
    users.update(engine, access.LOCAL, boss.id, {"role": "viewer"})  # demoted: keys follow
    with db.read(engine) as conn:
        demoted = auth.authenticate_key(conn, admin_key)
    assert demoted is not None and demoted.role == auth.Role.VIEWER


def test_existing_keys_get_the_scope_of_their_users_role(
    backend: str, make_database_url: Callable[..., str]
) -> None:
    engine = db.connect(make_database_url(backend))
    try:
        db.upgrade(engine, "0009")
        with db.write(engine) as conn:
            for i, role in enumerate(("admin", "operator", "submitter", "viewer"), start=1):
                conn.execute(sa.insert(schema.users).values(
                    id=i, name=role, role=role, commands_allowed=True, disabled=False,
                    created_at=db.now(conn)))  # fmt: skip
                conn.execute(sa.text(
                    "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, created_at) "
                    "VALUES (:i, :i, 'k', 'jb_x', :h, :t)"), {"i": i, "h": f"h{i}",
                                                             "t": db.now(conn)})  # fmt: skip
        db.upgrade(engine)
        with db.read(engine) as conn:
            scopes = dict(conn.execute(sa.select(K.c.user_id, K.c.scope)).all())
        assert scopes == {1: "admin", 2: "operate", 3: "submit", 4: "read"}
    finally:
        engine.dispose()


def test_a_submission_costs_the_audit_log_one_insert(engine: sa.Engine, alice: auth.User) -> None:
    _submit(engine, alice)  # warm
    seen: list[str] = []

    def record(*args: object) -> None:
        seen.append(str(args[2]))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        _submit(engine, alice, 20)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    audit_sql = [sql for sql in seen if "audit_log" in sql]
    assert len(audit_sql) == 1 and audit_sql[0].lstrip().upper().startswith("INSERT")

"""The rules hold through the service alone, with no face in front: who may see or change
which job, the last enabled admin, the classes a user may submit to, scripts-only users,
and whose env values a user may read (SQLite; the rules do not depend on the backend)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from jobbalancer import auth, classes, db, errors, jobs
from jobbalancer.service import access, fleet, inputs, job_actions, listing, submission, users


def _user(engine: sa.Engine, name: str, role: str, **options: object) -> auth.User:
    with db.write(engine) as conn:
        return auth.create_user(conn, name, role, **options)  # type: ignore[arg-type]


def _submit(engine: sa.Engine, user: auth.User, **body: object) -> jobs.Job:
    spec = inputs.JobSubmit.model_validate({"command": "true", **body})
    limiter = submission.RateLimiter()
    [job] = submission.submit(engine, user, [spec], prefix=False, limiter=limiter)
    return job


@pytest.fixture
def people(sqlite_engine: sa.Engine) -> dict[str, auth.User]:
    roles = ("admin", "operator", "submitter", "viewer")
    found = {r: _user(sqlite_engine, r, r) for r in roles}
    found["other"] = _user(sqlite_engine, "other", "submitter")
    return found


def test_a_viewer_can_neither_submit_nor_kill(
    sqlite_engine: sa.Engine, people: dict[str, auth.User]
) -> None:
    job = _submit(sqlite_engine, people["submitter"])
    with pytest.raises(errors.Forbidden, match=r"your role \(viewer\) does not allow submitting"):
        _submit(sqlite_engine, people["viewer"])
    with pytest.raises(errors.Forbidden, match="does not allow changing job"):
        job_actions.kill(sqlite_engine, people["viewer"], job.id)
    with pytest.raises(errors.Forbidden):
        job_actions.delete(sqlite_engine, people["viewer"], job.id)
    assert job_actions.get(sqlite_engine, people["viewer"], job.id).state == jobs.State.WAITING


def test_a_submitter_sees_and_changes_only_their_own_jobs(
    sqlite_engine: sa.Engine, people: dict[str, auth.User]
) -> None:
    mine = _submit(sqlite_engine, people["submitter"])
    theirs = _submit(sqlite_engine, people["other"])
    me = people["submitter"]
    # The filters ask for everyone's; the service limits them to the caller's own.
    found, _ = job_actions.list_page(sqlite_engine, me, listing.Filters(), 50, None)
    assert [j.id for j in found] == [mine.id]
    for act in (job_actions.get, job_actions.kill, job_actions.delete):
        with pytest.raises(errors.NotFound, match=f"job {theirs.id} does not exist"):
            act(sqlite_engine, me, theirs.id)
    with pytest.raises(errors.NotFound):
        job_actions.restart(sqlite_engine, me, theirs.id, limiter=submission.RateLimiter())
    assert job_actions.kill(sqlite_engine, me, mine.id).state == jobs.State.KILLED
    everyone, _ = job_actions.list_page(
        sqlite_engine, people["viewer"], listing.Filters(), 50, None
    )
    assert {j.id for j in everyone} == {mine.id, theirs.id}


def test_the_last_enabled_admin_stays(
    sqlite_engine: sa.Engine, people: dict[str, auth.User]
) -> None:
    admin = people["admin"]
    for changes in ({"role": auth.Role.OPERATOR}, {"disabled": True}):
        with pytest.raises(errors.Conflict, match="the last enabled admin"):
            users.update(sqlite_engine, admin, admin.id, changes)
    with pytest.raises(errors.Conflict, match="the last enabled admin"):
        users.delete(sqlite_engine, admin, admin.id)
    assert users.get(sqlite_engine, admin, admin.id).role == auth.Role.ADMIN

    users.update(sqlite_engine, admin, people["operator"].id, {"role": auth.Role.ADMIN})
    assert users.delete(sqlite_engine, admin, admin.id).name == "admin"  # another remains


def test_only_admins_manage_users_and_settings(
    sqlite_engine: sa.Engine, people: dict[str, auth.User]
) -> None:
    operator, submitter = people["operator"], people["submitter"]
    spec = inputs.UserIn(name="newcomer")
    with pytest.raises(errors.Forbidden, match=r"your role \(operator\) does not allow this"):
        users.create(sqlite_engine, operator, spec)
    with pytest.raises(errors.Forbidden):
        users.update(sqlite_engine, operator, submitter.id, {"role": auth.Role.ADMIN})
    with pytest.raises(errors.Forbidden):
        users.list_all(sqlite_engine, operator)
    with pytest.raises(errors.Forbidden):
        fleet.save_settings(sqlite_engine, operator, {"submit_burst": 1})
    with pytest.raises(errors.Forbidden, match="only admins may see or change other users"):
        users.create_key(sqlite_engine, submitter, operator.id, "stolen")
    with pytest.raises(errors.Forbidden):
        users.list_keys(sqlite_engine, submitter, operator.id)
    record, key = users.create_key(sqlite_engine, submitter, submitter.id, "mine")
    assert key and [k.id for k in users.list_keys(sqlite_engine, submitter, submitter.id)] == [
        record.id
    ]


def test_fleet_changes_need_an_operator(
    sqlite_engine: sa.Engine, people: dict[str, auth.User]
) -> None:
    spec = inputs.WorkerClassIn(name="gpu")
    with pytest.raises(errors.Forbidden, match=r"your role \(submitter\) does not allow this"):
        fleet.create_class(sqlite_engine, people["submitter"], spec)
    created = fleet.create_class(sqlite_engine, people["operator"], spec)
    with pytest.raises(errors.Forbidden):
        fleet.delete_class(sqlite_engine, people["viewer"], created.id)
    with pytest.raises(errors.Forbidden):
        fleet.create_script(
            sqlite_engine, people["submitter"], inputs.ScriptIn(name="s", content="#!/bin/sh\n")
        )
    with db.read(sqlite_engine) as conn:
        assert classes.get(conn, created.id).name == "gpu"


def test_a_class_the_user_may_not_use_is_refused(
    sqlite_engine: sa.Engine, people: dict[str, auth.User]
) -> None:
    fleet.create_class(sqlite_engine, people["admin"], inputs.WorkerClassIn(name="gpu"))
    limited = _user(sqlite_engine, "limited", "submitter", worker_classes=["default"])
    with pytest.raises(errors.Forbidden, match="may not submit to worker class 'gpu'") as exc:
        _submit(sqlite_engine, limited, worker_class="gpu")
    assert exc.value.field == "worker_class"
    assert _submit(sqlite_engine, limited).worker_class == "default"


def test_a_scripts_only_user_runs_no_command_and_sets_only_job_env(
    sqlite_engine: sa.Engine, people: dict[str, auth.User]
) -> None:
    scripts_only = _user(sqlite_engine, "scripted", "submitter", commands_allowed=False)
    with pytest.raises(errors.Forbidden, match="stored scripts only") as exc:
        _submit(sqlite_engine, scripts_only)
    assert exc.value.field == "command"
    fleet.create_script(
        sqlite_engine, people["operator"], inputs.ScriptIn(name="s", content="#!/bin/sh\n")
    )
    body = {"command": None, "script": "s"}
    with pytest.raises(errors.InvalidInput, match="'LD_PRELOAD' is not allowed") as bad:
        _submit(sqlite_engine, scripts_only, **body, env={"LD_PRELOAD": "/x.so"})
    assert bad.value.field == "env"
    assert _submit(sqlite_engine, scripts_only, **body, env={"JOB_X": "1"}).script_name == "s"


def test_env_values_are_the_owners_and_admins_only(
    sqlite_engine: sa.Engine, people: dict[str, auth.User]
) -> None:
    job = _submit(sqlite_engine, people["submitter"], env={"TOKEN": "secret"})
    assert access.shown_env(job, people["submitter"]) == {"TOKEN": "secret"}
    assert access.shown_env(job, people["admin"]) == {"TOKEN": "secret"}
    for viewer in ("operator", "viewer"):
        assert access.shown_env(job, people[viewer]) == {"TOKEN": access.ENV_MASK}


@pytest.mark.parametrize(
    ("role", "rule", "allowed"),
    [
        ("viewer", access.ACT, False),
        ("submitter", access.ACT, True),
        ("submitter", access.OPERATE, False),
        ("operator", access.OPERATE, True),
        ("operator", access.ADMIN, False),
        ("viewer", access.SUBMIT, False),
        ("admin", access.ADMIN, True),
    ],
)
def test_require_says_what_the_role_does_not_allow(
    people: dict[str, auth.User], role: str, rule: access.Rule, allowed: bool
) -> None:
    if allowed:
        assert access.require(people[role], rule) is people[role]
        return
    with pytest.raises(errors.Forbidden) as exc:
        access.require(people[role], rule)
    assert exc.value.message == f"your role ({role}) does not allow {rule.what}"


def test_the_local_actor_is_an_admin_and_may_name_classes_made_later(
    sqlite_engine: sa.Engine, people: dict[str, auth.User]
) -> None:
    spec = inputs.UserIn(name="later", worker_classes=["gpu-next"])
    with pytest.raises(errors.InvalidInput, match="'gpu-next' does not exist") as exc:
        users.create(sqlite_engine, access.LOCAL, spec)
    assert exc.value.field == "worker_classes.0"
    created = users.create(sqlite_engine, access.LOCAL, spec, known_classes_only=False)
    assert created.worker_classes == ("gpu-next",)
    assert users.ensure_first_admin(sqlite_engine) is None  # there are users already

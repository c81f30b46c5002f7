"""Typed script parameters on every backend: the declaration stored and read back as
given, and a submission by name stored as argv in declared order."""

from __future__ import annotations

import sqlalchemy as sa

from jobbalancer import auth, db, jobs, scripts
from jobbalancer.service import inputs, submission

DECLARED = [
    {"name": "name", "type": "string", "required": True, "regex": "[A-Za-zé ]+"},
    {"name": "count", "type": "int", "min": 1, "max": 5, "default": 1, "help": "how many"},
    {"name": "ratio", "type": "float", "default": 0.25},
    {"name": "loud", "type": "bool", "default": True},
    {"name": "algo", "type": "choice", "values": ["md5", "sha256"], "default": "sha256"},
]


def test_a_declaration_is_stored_and_read_back(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        made = scripts.create(conn, "hello", "sh", "echo", parameters=DECLARED)
        plain = scripts.create(conn, "plain", "sh", "echo")
    with db.read(engine) as conn:
        got = scripts.get(conn, made.id)
        assert scripts.get(conn, plain.id).parameters == ()
        assert scripts.lookup(conn, "hello") == got
    assert [p.to_json() for p in got.parameters] == [
        {**p, "required": p.get("required", False)} for p in DECLARED
    ]
    with db.write(engine) as conn:
        changed = scripts.update(conn, made.id, {"parameters": DECLARED[:1]})
        assert [p.name for p in changed.parameters] == ["name"]
        assert scripts.update(conn, made.id, {"parameters": []}).parameters == ()


def test_a_submission_by_name_is_stored_as_argv_in_declared_order(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        scripts.create(conn, "hello", "sh", "echo", parameters=DECLARED)
        admin = auth.create_user(conn, "root", auth.Role.ADMIN)
    spec = inputs.JobSubmit.model_validate(
        {"script": "hello", "params": {"algo": "md5", "name": "Zoé", "count": "3"}}
    )
    [job] = submission.submit(engine, admin, [spec], prefix=False, limiter=submission.RateLimiter())
    with db.read(engine) as conn:
        stored = jobs.get(conn, job.id)
    assert stored.params == ("Zoé", "3", "0.25", "true", "md5")

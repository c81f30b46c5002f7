"""Notification targets and rules (admins), test sends, and the list of deliveries.

Targets and rules are admins' alone: a target is an address the server will call, so a
submitter may only name one an admin made (in a job's ``notify``). Everyone who may see
a job sees its notifications.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import sqlalchemy as sa

from jobbalancer import audit, auth, classes, db, errors, notify, vault
from jobbalancer.service import access, inputs
from jobbalancer.settings import Settings


def list_targets(engine: sa.Engine, user: auth.User) -> list[notify.Target]:
    """Every target; everyone may list them (to name one in a job), admins see the URLs."""
    with db.read(engine) as conn:
        return notify.list_targets(conn)


def get_target(engine: sa.Engine, user: auth.User, ref: str | int) -> notify.Target:
    with db.read(engine) as conn:
        return notify.get_target(conn, ref)


def create_target(
    engine: sa.Engine,
    user: auth.User,
    spec: inputs.NotificationTargetIn,
    key: vault.Key | None = None,
) -> notify.Target:
    """A new target; a secret is stored encrypted with the server's ``key`` (none: the
    target cannot have one, vault.NoKey)."""
    access.require(user, access.ADMIN)
    if spec.secret and key is None:
        raise vault.NoKey()
    with db.write(engine) as conn:
        target = notify.create_target(
            conn, spec.name, spec.kind, url=spec.url, secret=spec.secret,
            recipients=spec.recipients, key=key,
        )  # fmt: skip
        audit.record(conn, user, "notification_target.create", "notification_target", target.id,
                     target.name, audit.fields(_target(target), hide=("secret",)))  # fmt: skip
        return target


def _target(t: notify.Target) -> dict[str, Any]:
    """What an audit entry says of a target: never its secret, only whether it has one, and
    of its URL only where it goes (a webhook's path often is its token)."""
    where = None
    if t.url:
        parts = urllib.parse.urlsplit(t.url)
        where = f"{parts.scheme}://{parts.netloc}/…"
    return {"kind": t.kind, "url": where, "recipients": list(t.recipients),
            "secret": t.secret is not None}  # fmt: skip


def update_target(
    engine: sa.Engine,
    user: auth.User,
    ref: str | int,
    patch: inputs.NotificationTargetPatch,
    key: vault.Key | None = None,
) -> notify.Target:
    access.require(user, access.ADMIN)
    changes = patch.model_dump(exclude_unset=True)
    if changes.get("secret") and key is None:
        raise vault.NoKey()
    with db.write(engine) as conn:
        target = notify.get_target(conn, ref)
        updated = notify.update_target(conn, target.id, changes, key)
        summary = audit.changes(_target(target), _target(updated))
        if "secret" in changes and "secret" not in summary:
            summary = "; ".join(s for s in (summary, f"secret {audit.HIDDEN}") if s)
        audit.record(conn, user, "notification_target.update", "notification_target",
                     updated.id, updated.name, summary)  # fmt: skip
        return updated


def delete_target(engine: sa.Engine, user: auth.User, ref: str | int) -> notify.Target:
    access.require(user, access.ADMIN)
    with db.write(engine) as conn:
        target = notify.delete_target(conn, notify.get_target(conn, ref).id)
        audit.record(conn, user, "notification_target.delete", "notification_target",
                     target.id, target.name, audit.fields(_target(target)))  # fmt: skip
        return target


def test_target(engine: sa.Engine, user: auth.User, ref: str | int, config: Settings) -> str | None:
    """Send a test notification now; None if it went through, else why not."""
    access.require(user, access.ADMIN)
    with db.read(engine) as conn:
        target = notify.get_target(conn, ref)
    failure = notify.send_test(engine, target.id, config)
    # Nothing changed in the database: the test is recorded on its own (it calls out).
    audit.record_alone(engine, user, "notification_target.test", "notification_target",
                       target.id, target.name, failure or "delivered")  # fmt: skip
    return failure


def list_rules(engine: sa.Engine, user: auth.User) -> list[notify.Rule]:
    with db.read(engine) as conn:
        return notify.list_rules(conn)


def create_rule(engine: sa.Engine, user: auth.User, spec: inputs.NotificationRuleIn) -> notify.Rule:
    access.require(user, access.ADMIN)
    with db.write(engine) as conn:
        target = notify.find_target(conn, spec.target)
        class_id = None
        if spec.worker_class is not None:
            class_id = classes.find(conn, spec.worker_class).id
        rule = notify.create_rule(conn, spec.on, target.id, class_id)
        audit.record(conn, user, "notification_rule.create", "notification_rule", rule.id,
                     None, _rule(rule))  # fmt: skip
        return rule


def _rule(rule: notify.Rule) -> str:
    where = "every job" if rule.worker_class is None else f"class {rule.worker_class}"
    return f"{where}: on {', '.join(rule.on)} notify {rule.target}"


def delete_rule(engine: sa.Engine, user: auth.User, rule_id: int) -> None:
    access.require(user, access.ADMIN)
    with db.write(engine) as conn:
        notify.delete_rule(conn, rule_id)
        audit.record(conn, user, "notification_rule.delete", "notification_rule", rule_id)


def list_notifications(
    engine: sa.Engine,
    user: auth.User,
    *,
    job_id: int | None = None,
    target: str | int | None = None,
    state: str | None = None,
    limit: int = 100,
) -> list[notify.Notification]:
    """A job's notifications (whoever may see the job), or anyone's (admins)."""
    if state is not None and state not in notify.STATES:
        raise errors.InvalidInput(
            f"unknown state {state!r}; one of {', '.join(notify.STATES)}", field="state"
        )
    with db.read(engine) as conn:
        if job_id is not None:
            access.visible_job(conn, user, job_id)
        else:
            access.require(user, access.ADMIN)
        target_id = notify.find_target(conn, target).id if target is not None else None
        return notify.list_notifications(
            conn, job_id=job_id, target_id=target_id, state=state, limit=limit
        )

"""Notification targets and rules (admins), test sends, and the list of deliveries.

Targets and rules are admins' alone: a target is an address the server will call, so a
submitter may only name one an admin made (in a job's ``notify``). Everyone who may see
a job sees its notifications.
"""

from __future__ import annotations

import sqlalchemy as sa

from jobbalancer import auth, classes, db, errors, notify, vault
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
        return notify.create_target(
            conn, spec.name, spec.kind, url=spec.url, secret=spec.secret,
            recipients=spec.recipients, key=key,
        )  # fmt: skip


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
        return notify.update_target(conn, target.id, changes, key)


def delete_target(engine: sa.Engine, user: auth.User, ref: str | int) -> notify.Target:
    access.require(user, access.ADMIN)
    with db.write(engine) as conn:
        return notify.delete_target(conn, notify.get_target(conn, ref).id)


def test_target(engine: sa.Engine, user: auth.User, ref: str | int, config: Settings) -> str | None:
    """Send a test notification now; None if it went through, else why not."""
    access.require(user, access.ADMIN)
    return notify.send_test(engine, ref, config)


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
        return notify.create_rule(conn, spec.on, target.id, class_id)


def delete_rule(engine: sa.Engine, user: auth.User, rule_id: int) -> None:
    access.require(user, access.ADMIN)
    with db.write(engine) as conn:
        notify.delete_rule(conn, rule_id)


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

"""Users and their API keys. Admins manage everyone; a user manages their own keys. One
enabled admin always stays: nobody could undo demoting, disabling or deleting the last."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from jobbalancer import audit, auth, classes, db, errors, vault
from jobbalancer.service import access, inputs, sessions


def class_names(conn: sa.Connection, refs: Sequence[str | int] | None) -> list[str] | None:
    """The names of the classes ``refs`` names (None: all classes); NotFound naming the
    field ``worker_classes.N`` for an unknown one."""
    if refs is None:
        return None
    return [classes.find(conn, r, field=f"worker_classes.{i}").name for i, r in enumerate(refs)]


def keep_an_admin(conn: sa.Connection, target: auth.User, changes: Mapping[str, Any]) -> None:
    """Refuse to demote, disable or delete the last enabled admin: nobody could undo it."""
    if not target.is_admin or target.disabled:
        return
    demoted = changes.get("role", auth.Role.ADMIN) != auth.Role.ADMIN
    if not (demoted or changes.get("disabled") or changes.get("deleted")):
        return
    # Locked, not just read: under READ COMMITTED two requests demoting one another could
    # otherwise each see the other still an admin and both commit, leaving none.
    others = [i for i in auth.lock_enabled_admins(conn) if i != target.id]
    if not others:
        raise errors.Conflict(f"{target.name} is the last enabled admin: make another admin first")


def list_all(engine: sa.Engine, actor: auth.User) -> list[auth.User]:
    access.require(actor, access.ADMIN)
    with db.read(engine) as conn:
        return auth.list_users(conn)


def get(engine: sa.Engine, actor: auth.User, user_id: int) -> auth.User:
    access.self_or_admin(actor, user_id)
    with db.read(engine) as conn:
        return auth.get_user(conn, user_id)


FirstAdmin = tuple[auth.User, str, str]


def ensure_first_admin(engine: sa.Engine) -> FirstAdmin | None:
    """On an empty user table, an admin: (user, password, API key), to be shown once;
    None if there are users (or another server created the first one at the same time)."""
    try:
        with db.write(engine) as conn:
            return auth.ensure_first_admin(conn)
    except sa.exc.IntegrityError:
        return None


def create(
    engine: sa.Engine, actor: auth.User, spec: inputs.UserIn, *, known_classes_only: bool = True
) -> auth.User:
    """A new user; without a password it can only use API keys. ``known_classes_only``
    False keeps the classes as named, existing or not (for a class made later)."""
    access.require(actor, access.ADMIN)
    with db.write(engine) as conn:
        if known_classes_only or spec.worker_classes is None:
            allowed = class_names(conn, spec.worker_classes)
        else:
            allowed = [str(ref) for ref in spec.worker_classes]
        created = auth.create_user(
            conn,
            spec.name,
            spec.role,
            spec.password,
            commands_allowed=spec.commands_allowed,
            worker_classes=allowed,
        )
        if spec.disabled:
            created = auth.update_user(conn, created.id, {"disabled": True})
        audit.record(conn, actor, "user.create", "user", created.id, created.name,
                     audit.fields(_shown(created)))  # fmt: skip
    return created


def _shown(user: auth.User) -> dict[str, Any]:
    """What an audit entry says of a user (never the password)."""
    return {
        "name": user.name,
        "role": user.role.value,
        "commands_allowed": user.commands_allowed,
        "worker_classes": "all" if user.worker_classes is None else list(user.worker_classes),
        "disabled": user.disabled,
    }


def update(
    engine: sa.Engine, actor: auth.User, user_id: int, changes: Mapping[str, Any]
) -> auth.User:
    """Change name, role, password, commands_allowed, worker_classes (None: all) or
    disabled; a new password or disabling ends the user's web sessions."""
    access.require(actor, access.ADMIN)
    changes = dict(changes)
    with db.write(engine) as conn:
        target = auth.get_user(conn, user_id)
        keep_an_admin(conn, target, changes)
        if "worker_classes" in changes:
            changes["worker_classes"] = class_names(conn, changes["worker_classes"])
        updated = auth.update_user(conn, user_id, changes)
        summary = audit.changes(_shown(target), _shown(updated))
        if changes.get("password") is not None:
            summary = "; ".join(s for s in (summary, f"password {audit.HIDDEN}") if s)
        audit.record(conn, actor, "user.update", "user", user_id, updated.name,
                     summary or "no change")  # fmt: skip
        return updated


def delete(engine: sa.Engine, actor: auth.User, user_id: int) -> auth.User:
    """Delete a user, their sessions and keys (their jobs stay); the user as they were."""
    access.require(actor, access.ADMIN)
    with db.write(engine) as conn:
        target = auth.get_user(conn, user_id)
        keep_an_admin(conn, target, {"deleted": True})
        auth.end_sessions(conn, user_id)
        auth.delete_user(conn, user_id)
        vault.forget_user(conn, user_id)  # their queued jobs lose the secrets they named
        audit.record(conn, actor, "user.delete", "user", user_id, target.name,
                     audit.fields(_shown(target)))  # fmt: skip
    return target


def list_keys(engine: sa.Engine, actor: auth.User, user_id: int) -> list[auth.ApiKey]:
    """The user's keys: names and prefixes, never the keys (NotFound for no such user)."""
    access.self_or_admin(actor, user_id)
    with db.read(engine) as conn:
        auth.get_user(conn, user_id)  # 404 for an unknown user, not an empty list
        return auth.list_api_keys(conn, user_id)


def create_key(
    engine: sa.Engine,
    actor: auth.User,
    user_id: int,
    name: str,
    *,
    scope: auth.Scope | str | None = None,
    expires_at: datetime | str | None = None,
) -> tuple[auth.ApiKey, str]:
    """A new key of the user's: its record, and the key itself (shown this once).
    ``scope`` None is the user's role's; a scope above the user's role, or above what
    the asking key may do itself, is InvalidInput naming ``scope``. ``expires_at``: a
    time, or text (``30d``, ``12h``, a date) counted from the database's clock."""
    access.self_or_admin(actor, user_id)
    if scope is not None and not auth.scope_allowed(auth.parse_scope(scope), actor.role):
        raise errors.InvalidInput(
            f"{access.rights(actor)} may not make a key of scope {auth.parse_scope(scope)}",
            field="scope",
        )
    with db.write(engine) as conn:
        if isinstance(expires_at, str):
            expires_at = auth.parse_expiry(expires_at, db.now(conn))
        _no_later_than_the_asking_key(actor, expires_at)
        if scope is None:  # the owner's role's, but never more than the asking key's
            owner = auth.get_user(conn, user_id)
            scope = auth.ROLE_SCOPES[auth.lesser(owner.role, actor.role)]
        record, key = auth.create_api_key(conn, user_id, name, scope=scope, expires_at=expires_at)
        audit.record(conn, actor, "key.create", "key", record.id, record.name, _key_summary(record))
    return record, key


def _no_later_than_the_asking_key(actor: auth.User, expires_at: datetime | None) -> None:
    """A key that expires makes keys that expire no later: a leaked CI key must not
    outlive itself by making one that never expires."""
    limit = actor.key_expires_at
    if limit is None:
        return
    if expires_at is None or _utc(expires_at) > limit:
        at = limit.strftime("%Y-%m-%d %H:%M:%S UTC")
        raise errors.InvalidInput(
            f"expires_at: this API key expires at {at}; a key it makes must expire no later "
            "(or make it on the account page)",
            field="expires_at",
        )


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _key_summary(key: auth.ApiKey) -> str:
    expires = key.expires_at.isoformat(timespec="seconds") if key.expires_at else "never"
    return f"user {key.user_id}; prefix {key.prefix}; scope {key.scope}; expires {expires}"


def revoke_key(engine: sa.Engine, actor: auth.User, user_id: int, key_id: int) -> None:
    """Revoke a key of the user's: it stops working at once."""
    access.self_or_admin(actor, user_id)
    with db.write(engine) as conn:
        key = auth.get_api_key(conn, user_id, key_id)
        auth.revoke_api_key(conn, user_id, key_id)
        audit.record(conn, actor, "key.revoke", "key", key.id, key.name, _key_summary(key))


MAX_PASSWORD = 1000  # as the login form's


def change_own_password(
    engine: sa.Engine, user: auth.User, current: str, new: str, repeat: str, address: str
) -> str:
    """Change ``user``'s own password, proven by the ``current`` one; a new web session's
    token (every other session of theirs ends). A wrong current password counts as a
    failed login from ``address``, so a borrowed session cannot be used to guess it."""
    _check_new_password(current, new, repeat)
    try:
        sessions.prove_password(engine, user.name, current, address)
    except errors.Unauthorized:
        raise errors.Forbidden("The current password is wrong.") from None
    with db.write(engine) as conn:
        auth.update_user(conn, user.id, {"password": new})  # ends every session of theirs
        token, _ = auth.create_session(conn, user.id)
        audit.record(conn, user, "user.password", "user", user.id, user.name,
                     f"own password {audit.HIDDEN}")  # fmt: skip
    return token


def _check_new_password(current: str, new: str, repeat: str) -> None:
    if max(len(current), len(new)) > MAX_PASSWORD:
        raise errors.InvalidInput(f"A password has at most {MAX_PASSWORD} characters.")
    if new != repeat:
        raise errors.InvalidInput("The new password and its repetition differ.")
    auth.check_password_strength(new)
    if new == current:
        raise errors.InvalidInput("The new password is the same as the current one.")

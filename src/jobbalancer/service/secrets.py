"""Secrets (admins manage them; jobs name them): create, replace, list, delete, and the
checks a submission of a job that names secrets must pass.

Only admins manage secrets, operators included out: a secret's users limit is what keeps
its value from a job of someone else, and whoever may change the limits or replace the
value (with one they know, to see where it is used) holds every secret. Operators may
already kill and restart anyone's jobs; they need not also hold the production password.
Everyone may list the secrets they may use (to name one in a job); admins and operators
see all of them and their limits. A value is never returned by anything here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from jobbalancer import audit, auth, classes, db, errors, jobs, vault
from jobbalancer.service import access, inputs, users


def _shows_all(user: auth.User) -> bool:
    return user.role in (auth.Role.ADMIN, auth.Role.OPERATOR)


def list_secrets(engine: sa.Engine, user: auth.User) -> list[vault.Secret]:
    """Admins and operators: every secret; others: those they may use."""
    with db.read(engine) as conn:
        found = vault.list_secrets(conn)
    if _shows_all(user):
        return found
    return [s for s in found if s.allows_user(user.id)]


def get(engine: sa.Engine, user: auth.User, ref: str | int) -> vault.Secret:
    with db.read(engine) as conn:
        found = vault.find(conn, ref)
    if found is None or not (_shows_all(user) or found.allows_user(user.id)):
        raise errors.NotFound(f"secret {ref!r} does not exist")
    return found


def _limits(conn: sa.Connection, spec: Any) -> dict[str, Any]:
    """The limits of a request as stored: class names, user ids (each checked)."""
    found: dict[str, Any] = {}
    fields = spec.model_fields_set if hasattr(spec, "model_fields_set") else set()
    if "worker_classes" in fields or spec.worker_classes is not None:
        found["worker_classes"] = users.class_names(conn, spec.worker_classes)
    if "users" in fields or spec.users is not None:
        found["users"] = _user_ids(conn, spec.users)
    return found


def _user_ids(conn: sa.Connection, refs: Sequence[str | int] | None) -> list[int] | None:
    if refs is None:
        return None
    ids = []
    for i, ref in enumerate(refs):
        try:
            ids.append(auth.find_user(conn, str(ref)).id)
        except errors.NotFound:
            raise errors.InvalidInput(f"user {ref!r} does not exist", field=f"users.{i}") from None
    return ids


def create(
    engine: sa.Engine, user: auth.User, spec: inputs.SecretIn, key: vault.Key | None
) -> vault.Secret:
    access.require(user, access.ADMIN)
    if key is None:
        raise vault.NoKey()
    with db.write(engine) as conn:
        limits = _limits(conn, spec)
        made = vault.create(
            conn, key, spec.name, spec.value, description=spec.description,
            worker_classes=limits.get("worker_classes"), users=limits.get("users"),
            by=user.name,
        )  # fmt: skip
        _record(conn, user, "secret.create", made, audit.fields(_shown(made)))
        return made


def _shown(s: vault.Secret) -> dict[str, Any]:
    """What an audit entry says of a secret: never its value."""
    return {"description": s.description,
            "worker_classes": "any" if s.worker_classes is None else list(s.worker_classes),
            "users": "any" if s.user_names is None else list(s.user_names)}  # fmt: skip


def _record(
    conn: sa.Connection, user: auth.User, action: str, secret: vault.Secret, summary: str
) -> None:
    audit.record(conn, user, action, "secret", secret.id, secret.name, summary)


def _changed(before: vault.Secret, after: vault.Secret, value: bool) -> str:
    summary = audit.changes(_shown(before), _shown(after))
    if value:  # a new value: said, never shown
        summary = "; ".join(s for s in (f"value {audit.HIDDEN}", summary) if s)
    return summary or "no change"


def put(
    engine: sa.Engine,
    user: auth.User,
    name: str,
    spec: inputs.SecretPut,
    key: vault.Key | None,
) -> tuple[vault.Secret, bool]:
    """Create ``name`` or replace it whole; (the secret, whether it was created)."""
    access.require(user, access.ADMIN)
    if key is None:
        raise vault.NoKey()
    with db.write(engine) as conn:
        current = vault.find(conn, name)
        worker_classes = users.class_names(conn, spec.worker_classes)
        user_ids = _user_ids(conn, spec.users)
        if current is None:
            created = vault.create(
                conn, key, name, spec.value, description=spec.description,
                worker_classes=worker_classes, users=user_ids, by=user.name,
            )  # fmt: skip
            _record(conn, user, "secret.create", created, audit.fields(_shown(created)))
            return created, True
        changes = {
            "value": spec.value, "description": spec.description,
            "worker_classes": worker_classes, "users": user_ids,
        }  # fmt: skip
        updated = vault.update(conn, key, current.id, changes, by=user.name)
        _record(conn, user, "secret.update", updated, _changed(current, updated, value=True))
        return updated, False


def patch(
    engine: sa.Engine,
    user: auth.User,
    ref: str | int,
    spec: inputs.SecretPatch,
    key: vault.Key | None,
) -> vault.Secret:
    access.require(user, access.ADMIN)
    with db.write(engine) as conn:
        current = vault.get(conn, ref)
        changes: dict[str, Any] = {
            k: getattr(spec, k) for k in spec.model_fields_set if k in ("value", "description")
        }
        changes.update(_limits(conn, spec))
        updated = vault.update(conn, key, current.id, changes, by=user.name)
        _record(conn, user, "secret.update", updated,
                _changed(current, updated, value="value" in changes))  # fmt: skip
        return updated


def delete(engine: sa.Engine, user: auth.User, ref: str | int) -> vault.Secret:
    """Delete a secret. Jobs that name it and have not started fail when they would."""
    access.require(user, access.ADMIN)
    with db.write(engine) as conn:
        gone = vault.delete(conn, vault.get(conn, ref).id)
        _record(conn, user, "secret.delete", gone, audit.fields(_shown(gone)))
        return gone


# -- jobs that name secrets ---------------------------------------------------------------


class Checker:
    """The checks at submission, with each secret read once per request (a batch)."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self._found: dict[str, vault.Secret | None] = {}

    def secret(self, name: str) -> vault.Secret | None:
        if name not in self._found:
            self._found[name] = vault.by_names(self.conn, [name]).get(name)
        return self._found[name]

    def check(
        self,
        user: auth.User,
        wclass: classes.WorkerClass | str,
        named: Mapping[str, str],
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Each secret ``named`` (by field) exists, ``user`` may use it, and so may jobs
        of the class. A secret the user may not use is one that does not exist for them.
        ``labels``: a field's name at the start of its message (typed parameters, as the
        other parameter errors: ``params.token: secret 'x' …``)."""
        class_name = wclass if isinstance(wclass, str) else wclass.name
        for field, name in named.items():
            label = f"{labels[field]}: " if labels and field in labels else ""
            secret = self.secret(name)
            if secret is None or not secret.allows_user(user.id):
                raise errors.InvalidInput(
                    f"{label}secret {name!r} does not exist, or you may not use it", field=field
                )
            if not secret.allows_class(class_name):
                raise errors.Forbidden(
                    f"{label}secret {name!r} may not be used by jobs of worker class "
                    f"{class_name!r}",
                    field=field,
                )


def fields_of(
    secret_env: Mapping[str, str], secret_args: Mapping[int, str], where: str = ""
) -> dict[str, str]:
    """The field each secret reference was given in, for messages."""
    named = {f"{where}secret_env.{k}": v for k, v in secret_env.items()}
    named.update({f"{where}params.{i}": v for i, v in secret_args.items()})
    return named


def check_env_names(env: Mapping[str, str], secret_env: Mapping[str, str], where: str) -> None:
    both = sorted(set(env) & set(secret_env))
    if both:
        raise errors.InvalidInput(
            f"{both[0]!r} is set both by env and by secret_env: give it once",
            field=f"{where}secret_env.{both[0]}",
        )


def check_rerun(conn: sa.Connection, job: jobs.Job) -> None:
    """A restart runs as the job's owner: they (still there and enabled) and the class must
    still be allowed the secrets it names (the worker checks again at the start)."""
    if not job.secret_env and not job.secret_args:
        return
    try:
        owner = auth.get_user(conn, job.user_id or 0)
    except errors.NotFound:
        raise errors.Conflict(
            f"job {job.id} uses secrets and its owner was deleted: it cannot be restarted"
        ) from None
    if owner.disabled:  # the worker would refuse it its secrets (vault.resolve)
        raise errors.Conflict(
            f"job {job.id} uses secrets and its owner {owner.name!r} is disabled: it cannot "
            "be restarted"
        )
    Checker(conn).check(owner, job.worker_class, fields_of(job.secret_env, job.secret_args))

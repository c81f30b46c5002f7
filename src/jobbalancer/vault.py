"""Named secrets: encrypted at rest, limited to worker classes and users, resolved for a
job by its worker just before it starts.

A value is encrypted with AES-256-GCM (``cryptography``) under a key that is never in the
database: ``JOBBALANCER_SECRET_KEY`` or the key file (``secret_key_file``, by default
``<data_dir>/secret.key``, made with mode 0600 by the first ``server``/``up``). The
secret's name is the associated data, so a ciphertext copied to another name's row does
not decrypt. Stored as ``v1:<key id>:<base64 of nonce + ciphertext>``; the key id (the
first 8 bytes of the key's SHA-256, in hex) lets a wrong key be told from a damaged value.

Values are write-only: nothing here returns one except :func:`resolve`, which only a
worker calls for the job it is about to start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets as random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from jobbalancer import errors, procsec, refs, settings
from jobbalancer.db import schema
from jobbalancer.db.types import AnyRow, utcnow

log = logging.getLogger(__name__)

S = schema.secrets
MAX_VALUE_BYTES = 64 * 1024
KEY_ID_SETTING = "secret_key_id"  # the key id the secrets of this database use
_FORMAT = "v1"
_NONCE = 12


class NoKey(errors.JobBalancerError):
    """This server has no secret key, so it stores no secrets: set JOBBALANCER_SECRET_KEY or secret_key_file (docs/operations.md, 'Secrets')."""  # noqa: E501

    status = 503
    code = "no_secret_key"


class CannotDecrypt(Exception):
    """A stored value that this key cannot open; the message says why (never the value)."""


class Unusable(Exception):
    """A job may not have, or cannot get, a secret it names; the message says why."""


# -- the key ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """A 256-bit AES-GCM key; ``id`` names it (never the key itself) in messages."""

    raw: bytes
    source: str  # where it came from, for messages: the variable or the file

    def __repr__(self) -> str:
        return f"Key(id={self.id!r}, source={self.source!r})"

    @property
    def id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]

    @classmethod
    def parse(cls, text: str, source: str) -> Key:
        """A key from its text form (urlsafe base64 of 32 bytes); ConfigError if it is not one."""
        try:
            raw = base64.urlsafe_b64decode(text.strip().encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raw = b""
        if len(raw) != 32:
            raise errors.ConfigError(
                f"the secret key from {source} is not 32 bytes in urlsafe base64 (44 "
                "characters); make one with: python3 -c 'import base64, os; "
                "print(base64.urlsafe_b64encode(os.urandom(32)).decode())'",
                field="secret_key",
            )
        return cls(raw, source)

    def encrypt(self, value: str, context: str) -> str:
        """``value`` sealed and bound to ``context`` (a secret's name)."""
        # Imported when used: a worker on SQLite or PostgreSQL whose jobs use no secret
        # never loads cryptography (about 6 MiB of its idle memory; PyMySQL loads it
        # anyway). The first secret a process seals or opens pays the import (~10 ms).
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(_NONCE)
        sealed = AESGCM(self.raw).encrypt(nonce, value.encode("utf-8"), _aad(context))
        return f"{_FORMAT}:{self.id}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def decrypt(self, stored: str, context: str) -> str:
        """The value ``stored`` holds for ``context``; CannotDecrypt says why not."""
        version, _, rest = stored.partition(":")
        key_id, _, body = rest.partition(":")
        if version != _FORMAT or not body:
            raise CannotDecrypt("its stored form is not one this version reads")
        if key_id != self.id:
            raise CannotDecrypt(
                f"it was encrypted with the key with id {key_id}, and this process has the "
                f"key with id {self.id} (from {self.source}): give it the same key as the "
                "server (docs/operations.md, 'Secrets')"
            )
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            data = base64.b64decode(body.encode("ascii"), validate=True)
            plain = AESGCM(self.raw).decrypt(data[:_NONCE], data[_NONCE:], _aad(context))
            return plain.decode("utf-8")
        except (InvalidTag, binascii.Error, ValueError, UnicodeError):
            raise CannotDecrypt(
                "it failed its integrity check (changed in the database, or copied from "
                "another secret)"
            ) from None


def _aad(context: str) -> bytes:
    return b"jobbalancer:" + context.encode("utf-8")


def new_key_text() -> str:
    return base64.urlsafe_b64encode(random.token_bytes(32)).decode("ascii")


def from_settings(config: settings.Settings) -> Key | None:
    """This process's key, from its settings; None when it has none."""
    return load_key(config.secret_key, config.secret_key_path)


def load_key(text: str, path: str | Path | None) -> Key | None:
    """The key given as ``text`` (JOBBALANCER_SECRET_KEY), else read from the file at
    ``path``; None when neither is there. A file others may read is refused (ConfigError)."""
    if text:
        return Key.parse(text, "JOBBALANCER_SECRET_KEY")
    if path is None or not Path(path).exists():
        return None
    text = settings.read_secret_file(Path(path), "secret_key_file", "secret key file")
    return Key.parse(text, str(path))


def ensure_key_file(text: str, path: str | Path) -> tuple[Key, bool]:
    """The key (``text``, else the file), the file made (mode 0600) when there is neither;
    and whether it was made now."""
    found = load_key(text, path)
    if found is not None:
        return found, False
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Whole or not at all: a process starting at the same moment reads the winner's key.
    if not procsec.create_whole(target, new_key_text() + "\n", sync=True):
        key = load_key("", target)
        assert key is not None
        return key, False
    log.warning(
        "made a new secret key in %s (mode 0600): workers that run jobs with secrets, and "
        "other servers, need the same file (docs/operations.md, 'Secrets')",
        target,
    )
    key = load_key("", target)
    assert key is not None
    return key, True


def check_key_id(conn: sa.Connection, key: Key) -> str:
    """The key id stored for this database (stored now, ours, if none was); a mismatch
    means this process's key cannot open the secrets stored so far."""
    t = schema.settings
    stored = conn.execute(sa.select(t.c.value).where(t.c.key == KEY_ID_SETTING)).scalar()
    if stored is None:
        conn.execute(sa.insert(t).values(key=KEY_ID_SETTING, value=key.id))
        return key.id
    return str(stored)


def take_key_id(conn: sa.Connection, key: Key) -> None:
    """Record ``key`` as this database's (nothing was sealed with the one stored)."""
    t = schema.settings
    conn.execute(sa.update(t).where(t.c.key == KEY_ID_SETTING).values(value=key.id))


def anything_sealed(conn: sa.Connection) -> bool:
    """Whether any value in the database is encrypted (a secret, a target's secret)."""
    if conn.execute(sa.select(S.c.id).limit(1)).first() is not None:
        return True
    t = schema.notification_targets
    query = sa.select(t.c.id).where(t.c.secret.like(_FORMAT + ":%")).limit(1)
    return conn.execute(query).first() is not None


def stored_key_id(conn: sa.Connection) -> str | None:
    t = schema.settings
    found = conn.execute(sa.select(t.c.value).where(t.c.key == KEY_ID_SETTING)).scalar()
    return None if found is None else str(found)


# -- the secrets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """A secret as shown: never its value."""

    id: int
    name: str
    description: str
    worker_classes: tuple[str, ...] | None  # None: any class
    users: tuple[int, ...] | None  # user ids; None: anyone who may submit
    user_names: tuple[str, ...] | None
    created_at: datetime
    created_by: str | None
    updated_at: datetime
    updated_by: str | None

    @classmethod
    def from_row(cls, row: AnyRow, names: Mapping[int, str]) -> Secret:
        m = row._mapping
        users = None if m["users"] is None else tuple(int(u) for u in m["users"])
        return cls(
            id=m["id"], name=m["name"], description=m["description"] or "",
            worker_classes=None if m["worker_classes"] is None else tuple(m["worker_classes"]),
            users=users,
            user_names=None if users is None else tuple(names.get(u, f"#{u}") for u in users),
            created_at=m["created_at"], created_by=m["created_by"],
            updated_at=m["updated_at"], updated_by=m["updated_by"],
        )  # fmt: skip

    def allows_user(self, user_id: int | None) -> bool:
        """Whether jobs of ``user_id`` may use it: listed, or no one is (admins too: an
        admin who wants one adds themselves; the worker checks again knowing only ids)."""
        return self.users is None or (user_id is not None and user_id in self.users)

    def allows_class(self, class_name: str) -> bool:
        return self.worker_classes is None or class_name in self.worker_classes


_COLUMNS = [c for c in S.c if c.name not in ("value",)]


def _user_names(conn: sa.Connection, rows: Sequence[AnyRow]) -> dict[int, str]:
    ids = {int(u) for r in rows for u in (r._mapping["users"] or ())}
    if not ids:
        return {}
    u = schema.users
    rows = conn.execute(sa.select(u.c.id, u.c.name).where(u.c.id.in_(ids))).all()
    return {int(r.id): str(r.name) for r in rows}


def list_secrets(conn: sa.Connection) -> list[Secret]:
    rows = conn.execute(sa.select(*_COLUMNS).order_by(S.c.name)).all()
    names = _user_names(conn, rows)
    return [Secret.from_row(r, names) for r in rows]


def get(conn: sa.Connection, ref: str | int) -> Secret:
    """A secret by name or id; NotFound when there is none."""
    found = find(conn, ref)
    if found is None:
        raise errors.NotFound(f"secret {ref!r} does not exist")
    return found


def find(conn: sa.Connection, ref: str | int) -> Secret | None:
    row = refs.find_row(conn, S, ref)
    if row is None:
        return None
    return Secret.from_row(row, _user_names(conn, [row]))


def by_names(conn: sa.Connection, names: Iterable[str]) -> dict[str, Secret]:
    wanted = sorted(set(names))
    if not wanted:
        return {}
    rows = conn.execute(sa.select(*_COLUMNS).where(S.c.name.in_(wanted))).all()
    found = _user_names(conn, rows)
    return {r.name: Secret.from_row(r, found) for r in rows}


def check_value(value: str) -> None:
    if not value:
        raise errors.InvalidInput("a secret's value must not be empty", field="value")
    if "\x00" in value:
        raise errors.InvalidInput("must not contain NUL characters", field="value")
    if len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise errors.InvalidInput(f"must be at most {MAX_VALUE_BYTES // 1024} KiB", field="value")


def create(
    conn: sa.Connection,
    key: Key,
    name: str,
    value: str,
    *,
    description: str = "",
    worker_classes: Sequence[str] | None = None,
    users: Sequence[int] | None = None,
    by: str | None = None,
) -> Secret:
    refs.check_name(name, "secret")
    refs.ensure_free_name(conn, S, name, "secret")
    check_value(value)
    values: dict[str, Any] = {
        "name": name, "description": description, "value": key.encrypt(value, name),
        "key_id": key.id, "worker_classes": _list(worker_classes), "users": _list(users),
        "created_by": by, "updated_by": by,
    }  # fmt: skip
    result = conn.execute(sa.insert(S).values(**values, created_at=utcnow(), updated_at=utcnow()))
    new = result.inserted_primary_key
    assert new is not None
    return get(conn, int(new[0]))


def update(
    conn: sa.Connection,
    key: Key | None,
    secret_id: int,
    changes: Mapping[str, Any],
    *,
    by: str | None = None,
) -> Secret:
    """Change a secret: ``value``, ``description``, ``worker_classes``, ``users`` (only
    those given). Its name stays (the ciphertext is bound to it)."""
    current = get(conn, secret_id)
    values: dict[str, Any] = {}
    if "value" in changes:
        if key is None:
            raise NoKey()
        check_value(changes["value"])
        values["value"] = key.encrypt(changes["value"], current.name)
        values["key_id"] = key.id
    if "description" in changes:
        values["description"] = changes["description"] or ""
    for limit in ("worker_classes", "users"):
        if limit in changes:
            values[limit] = _list(changes[limit])
    conn.execute(
        sa.update(S).where(S.c.id == secret_id).values(**values, updated_at=utcnow(), updated_by=by)
    )
    return get(conn, secret_id)


def delete(conn: sa.Connection, secret_id: int) -> Secret:
    secret = get(conn, secret_id)
    conn.execute(sa.delete(S).where(S.c.id == secret_id))
    return secret


def forget_user(conn: sa.Connection, user_id: int) -> None:
    """A deleted user leaves every secret's user list, so their jobs still queued fail at
    the start (a list left empty allows no one, not everyone)."""
    for row in conn.execute(sa.select(S.c.id, S.c.users).where(S.c.users.is_not(None))).all():
        listed = [int(u) for u in row.users or ()]
        if user_id in listed:
            kept = [u for u in listed if u != user_id]
            conn.execute(sa.update(S).where(S.c.id == row.id).values(users=kept))


def _list(items: Sequence[Any] | None) -> list[Any] | None:
    return None if items is None else list(dict.fromkeys(items))


# -- a job's secrets ----------------------------------------------------------------------


def names_of(secret_env: Mapping[str, str], secret_args: Mapping[int, str]) -> list[str]:
    """Every secret a job names, once each, in a stable order."""
    return list(dict.fromkeys([*secret_env.values(), *secret_args.values()]))


_VALUES = sa.select(S.c.name, S.c.value, S.c.worker_classes, S.c.users).where(
    S.c.name.in_(sa.bindparam("b_names", expanding=True))
)
# Whether the job's owner is still there and enabled (the worker's role reads these two).
_OWNER = sa.select(schema.users.c.disabled).where(schema.users.c.id == sa.bindparam("b_owner"))


def resolve(
    conn: sa.Connection,
    key: Key | None,
    names: Sequence[str],
    *,
    owner_id: int | None,
    worker_class: str,
    job_id: int,
) -> dict[str, str]:
    """The values of the secrets job ``job_id`` names, by name, after checking again
    that the job's owner is still there and enabled, that the secrets exist and that the
    owner and class may still use them. Unusable says
    why not; the job must then not run. Only a worker calls this, just before the start
    (its database role reads the secrets' sealed values and limits, and of the users only
    their ids and whether they are disabled)."""
    if not names:
        return {}
    if owner_id is not None:
        owner = conn.execute(_OWNER, {"b_owner": owner_id}).first()
        if owner is None:
            raise Unusable("the job's owner was deleted: their jobs get no secrets")
        if owner.disabled:
            raise Unusable("the job's owner is disabled: their jobs get no secrets")
    rows = {r.name: r for r in conn.execute(_VALUES, {"b_names": list(names)})}
    found: dict[str, str] = {}
    for name in names:
        row = rows.get(name)
        if row is None:
            raise Unusable(f"secret {name!r} does not exist (any more)")
        if row.users is not None and owner_id not in {int(u) for u in row.users}:
            raise Unusable(f"the job's owner may not use secret {name!r} (any more)")
        if row.worker_classes is not None and worker_class not in row.worker_classes:
            raise Unusable(f"secret {name!r} may not be used in worker class {worker_class!r}")
        if key is None:
            raise Unusable(
                f"this worker has no secret key, so it cannot decrypt secret {name!r}: give "
                "it the server's key (JOBBALANCER_SECRET_KEY or secret_key_file; "
                "docs/operations.md, 'Secrets')"
            )
        try:
            found[name] = key.decrypt(row.value, name)
        except CannotDecrypt as exc:
            raise Unusable(f"cannot decrypt secret {name!r} on this worker: {exc}") from None
    return found


# -- other stored secrets (notification targets' signing secrets) -------------------------


def seal(key: Key | None, value: str | None, context: str) -> str | None:
    """A secret kept by another table, encrypted for ``context``; None stays None."""
    if not value:
        return None
    if key is None:
        raise NoKey()
    return key.encrypt(value, context)


def unseal(key: Key | None, stored: str | None, context: str) -> str | None:
    """The value :func:`seal` made; one stored in clear by an older version is returned as
    it is (it is encrypted the next time it is written)."""
    if stored is None:
        return None
    if not stored.startswith(_FORMAT + ":"):
        return stored
    if key is None:
        raise NoKey()
    try:
        return key.decrypt(stored, context)
    except CannotDecrypt as exc:
        raise NoKey(f"cannot decrypt a stored secret: {exc}") from None


def is_sealed(stored: str | None) -> bool:
    return stored is not None and stored.startswith(_FORMAT + ":")

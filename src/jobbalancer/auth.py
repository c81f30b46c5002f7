"""Users, roles, passwords and API keys.

Passwords are hashed with argon2id. API keys are 32 random bytes shown once; the database
keeps a SHA-256 of each (a key has full entropy, so a slow hash would only slow every
request) and an 8-character prefix to tell keys apart in lists.

Web sessions (the last section) work the same way: the cookie holds a random token, the
database its SHA-256 and the session's CSRF token. Failed logins slow down the address
they come from (see "Login throttling"); nobody can lock an account for everyone.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from jobbalancer import db, errors, refs
from jobbalancer.db import schema
from jobbalancer.db.types import AnyRow, utcnow

U, K, WS, LF = schema.users, schema.api_keys, schema.web_sessions, schema.login_failures
KEY_PREFIX = "jb_"
_hasher = PasswordHasher()


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything
    OPERATOR = "operator"  # submit; kill, restart, delete any job
    SUBMITTER = "submitter"  # submit; see and manage own jobs
    VIEWER = "viewer"  # read-only


class Scope(enum.StrEnum):
    """What an API key may do: at most what its user's role allows, checked per request."""

    READ = "read"  # look only: every request that changes something is refused
    SUBMIT = "submit"  # submit, and manage its own jobs (a submitter's rights)
    OPERATE = "operate"  # also kill, restart, delete others' jobs (an operator's rights)
    ADMIN = "admin"  # everything its user may do


# The role whose rights each scope stands for, and the roles in order of their rights.
SCOPE_ROLES = {Scope.READ: Role.VIEWER, Scope.SUBMIT: Role.SUBMITTER,
               Scope.OPERATE: Role.OPERATOR, Scope.ADMIN: Role.ADMIN}  # fmt: skip
ROLE_SCOPES = {role: scope for scope, role in SCOPE_ROLES.items()}
_RANK = {Role.VIEWER: 0, Role.SUBMITTER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


def lesser(a: Role, b: Role) -> Role:
    """The role with fewer rights of ``a`` and ``b``."""
    return a if _RANK[a] <= _RANK[b] else b


def scope_allowed(scope: Scope, role: Role) -> bool:
    """Whether a key of ``scope`` gives no more than ``role`` has."""
    return _RANK[SCOPE_ROLES[scope]] <= _RANK[role]


@dataclass(frozen=True)
class User:
    """A user as read from the database (never with its password hash)."""

    id: int
    name: str
    role: Role
    commands_allowed: bool
    worker_classes: tuple[str, ...] | None  # None: every class
    disabled: bool
    created_at: datetime
    # How this request came, for the audit log (never stored with the user): "key jb_…"
    # (the key's prefix), "web" or "cli"; the client's address; a key's scope (None: not
    # a key). ``role`` is then the lesser of the user's role and the scope's.
    via: str = field(default="", compare=False)
    address: str = field(default="", compare=False)
    scope: Scope | None = field(default=None, compare=False)
    # When the key expires (None: never, or not a key): keys it makes expire no later.
    key_expires_at: datetime | None = field(default=None, compare=False)

    @classmethod
    def from_row(cls, row: AnyRow) -> User:
        m = row._mapping
        classes = m["worker_classes"]
        return cls(
            id=m["id"],
            name=m["name"],
            role=Role(m["role"]),
            commands_allowed=bool(m["commands_allowed"]),
            worker_classes=None if classes is None else tuple(classes),
            disabled=bool(m["disabled"]),
            created_at=m["created_at"],
        )

    # -- what the role allows ---------------------------------------------------------

    @property
    def can_submit(self) -> bool:
        return self.role in (Role.ADMIN, Role.OPERATOR, Role.SUBMITTER)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def can_manage_job(self, owner_id: int | None) -> bool:
        """Kill, restart or delete a job owned by ``owner_id``."""
        if self.role in (Role.ADMIN, Role.OPERATOR):
            return True
        return self.role == Role.SUBMITTER and owner_id == self.id

    def can_see_job(self, owner_id: int | None) -> bool:
        return self.role != Role.SUBMITTER or owner_id == self.id

    def may_use_class(self, class_name: str) -> bool:
        return self.worker_classes is None or class_name in self.worker_classes


_USER_COLUMNS = [U.c.id, U.c.name, U.c.role, U.c.commands_allowed, U.c.worker_classes,
                 U.c.disabled, U.c.created_at]  # fmt: skip


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def check_password_strength(password: str) -> None:
    if len(password) < 8:
        raise errors.InvalidInput("password must have at least 8 characters", field="password")


def get_user(conn: sa.Connection, user_id: int) -> User:
    row = conn.execute(sa.select(*_USER_COLUMNS).where(U.c.id == user_id)).first()
    if row is None:
        raise errors.NotFound(f"user {user_id} does not exist")
    return User.from_row(row)


def find_user(conn: sa.Connection, name_or_id: str) -> User:
    """A user by name, or by id when given digits that name nobody."""
    row = conn.execute(sa.select(*_USER_COLUMNS).where(U.c.name == name_or_id)).first()
    user_id = refs.parse_id(name_or_id)
    if row is None and user_id is not None:
        return get_user(conn, user_id)
    if row is None:
        raise errors.NotFound(f"user {name_or_id!r} does not exist")
    return User.from_row(row)


def list_users(conn: sa.Connection) -> list[User]:
    return [User.from_row(r) for r in conn.execute(sa.select(*_USER_COLUMNS).order_by(U.c.name))]


def lock_enabled_admins(conn: sa.Connection) -> list[int]:
    """The ids of the enabled admins, their rows locked until this transaction ends: two
    changes that each would leave "another admin" take turns, and the second sees the
    first's outcome (so they cannot both demote, disable or delete the other)."""
    query = (
        sa.select(U.c.id)
        .where(U.c.role == Role.ADMIN.value, U.c.disabled.is_(False))
        .order_by(U.c.id)
    )
    return [int(row.id) for row in db.lock_rows(conn, query)]


def count_users(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(U)).scalar_one())


def create_user(
    conn: sa.Connection,
    name: str,
    role: Role | str,
    password: str | None = None,
    *,
    commands_allowed: bool = True,
    worker_classes: Sequence[str] | None = None,
) -> User:
    """Create a user; ``password`` None makes one that can only use API keys."""
    name = refs.check_name(name, "user")
    try:
        role = Role(role)
    except ValueError:
        raise errors.InvalidInput(
            f"role must be one of {', '.join(r.value for r in Role)}", field="role"
        ) from None
    if password is not None:
        check_password_strength(password)
    refs.ensure_free_name(conn, U, name, "user")
    result = conn.execute(
        sa.insert(U).values(
            name=name,
            role=role.value,
            password_hash=None if password is None else hash_password(password),
            commands_allowed=commands_allowed,
            worker_classes=None if worker_classes is None else list(worker_classes),
            disabled=False,
            created_at=utcnow(),
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return get_user(conn, int(key[0]))


def update_user(conn: sa.Connection, user_id: int, changes: Mapping[str, Any]) -> User:
    """Change role, password, commands_allowed, worker_classes or disabled."""
    target = get_user(conn, user_id)  # raises NotFound
    values: dict[str, Any] = {}
    for key in ("commands_allowed", "disabled"):
        if key in changes:
            values[key] = bool(changes[key])
    if "worker_classes" in changes:
        classes = changes["worker_classes"]
        values["worker_classes"] = None if classes is None else list(classes)
    if "role" in changes:
        try:
            values["role"] = Role(changes["role"]).value
        except ValueError:
            raise errors.InvalidInput("unknown role", field="role") from None
    if changes.get("password") is not None:
        check_password_strength(changes["password"])
        values["password_hash"] = hash_password(changes["password"])
    if "name" in changes:
        name = refs.check_name(str(changes["name"]), "user")
        refs.ensure_free_name(conn, U, name, "user", except_id=user_id)
        values["name"] = name
    if "password_hash" in values:  # a reset also lifts the throttling of logins by name
        forget_failed_logins(conn, str(values.get("name", target.name)))
        if "name" in values:
            forget_failed_logins(conn, target.name)
    if values:
        conn.execute(sa.update(U).where(U.c.id == user_id).values(**values))
        keys_changed(conn)
    if "password_hash" in values or values.get("disabled"):
        end_sessions(conn, user_id)  # whoever was logged in must log in again (or cannot)
    return get_user(conn, user_id)


def delete_user(conn: sa.Connection, user_id: int) -> None:
    get_user(conn, user_id)
    conn.execute(sa.delete(K).where(K.c.user_id == user_id))
    conn.execute(sa.delete(U).where(U.c.id == user_id))
    keys_changed(conn)


def authenticate_password(conn: sa.Connection, name: str, password: str) -> User | None:
    """The user if ``password`` is theirs and they are enabled; None otherwise."""
    row = conn.execute(sa.select(*_USER_COLUMNS, U.c.password_hash).where(U.c.name == name)).first()
    if not _password_fits(row, password):
        return None
    user = User.from_row(row)
    return None if user.disabled else user


def _password_fits(row: AnyRow | None, password: str) -> TypeGuard[AnyRow]:
    """Whether ``row`` is a user whose password is ``password``. When there is no such user
    or it has no password (key-only), the password is checked against a dummy hash of the
    same cost, so timing does not tell names apart."""
    password_hash = None if row is None else row._mapping["password_hash"]
    try:
        fits = _hasher.verify(password_hash or _dummy_hash(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return fits and password_hash is not None


_dummy: tuple[PasswordHasher, str] | None = None


def _dummy_hash() -> str:
    """A hash of a random password, made by the current hasher (tests swap in a cheap
    one: the dummy must cost what a real hash costs)."""
    global _dummy
    if _dummy is None or _dummy[0] is not _hasher:
        _dummy = (_hasher, _hasher.hash(secrets.token_urlsafe(16)))
    return _dummy[1]


# -- API keys -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    """An API key's record: never the key itself."""

    id: int
    user_id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    scope: Scope
    expires_at: datetime | None

    @classmethod
    def from_row(cls, row: AnyRow) -> ApiKey:
        values = {n: row._mapping[n] for n in cls.__dataclass_fields__}
        return cls(**{**values, "scope": Scope(values["scope"])})


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(
    conn: sa.Connection,
    user_id: int,
    name: str = "default",
    *,
    scope: Scope | str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key for the user: its record and the key, which is shown this once. ``scope``
    None is the user's role's; one above it is InvalidInput, as an ``expires_at`` past."""
    owner = get_user(conn, user_id)
    scope = ROLE_SCOPES[owner.role] if scope is None else parse_scope(scope)
    if not scope_allowed(scope, owner.role):
        raise errors.InvalidInput(
            f"a key of {owner.name} (role {owner.role}) may have scope "
            f"{', '.join(s for s in Scope if scope_allowed(s, owner.role))}, not {scope}",
            field="scope",
        )
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= db.now(conn):
            raise errors.InvalidInput("expires_at: must be in the future", field="expires_at")
    name = name.strip() or "default"
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    result = conn.execute(
        sa.insert(K).values(
            user_id=user_id,
            name=name[:200],
            prefix=key[: len(KEY_PREFIX) + 8],
            key_hash=_digest(key),
            created_at=utcnow(),
            scope=scope.value,
            expires_at=expires_at,
        )
    )
    pk = result.inserted_primary_key
    assert pk is not None
    row = conn.execute(sa.select(K).where(K.c.id == int(pk[0]))).one()
    return ApiKey.from_row(row), key


_DURATION = re.compile(r"^\s*(\d{1,6})\s*([hdw])\s*$", re.IGNORECASE)
_DURATION_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(text: str | None, now: datetime) -> datetime | None:
    """When a key given ``--expires TEXT`` expires: a duration from ``now`` (``12h``,
    ``30d``, ``2w``), a date (``2027-03-01``: its start, UTC) or a time (UTC unless it
    says); None for nothing. InvalidInput naming ``expires_at`` otherwise."""
    if text is None or not text.strip():
        return None
    duration = _DURATION.match(text)
    if duration:
        unit = _DURATION_UNITS[duration.group(2).lower()]
        return now + timedelta(**{unit: int(duration.group(1))})
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise errors.InvalidInput(
            "expires_at: give a duration (12h, 30d, 2w), a date (2027-03-01) or a time "
            "(2027-03-01T12:00:00Z)",
            field="expires_at",
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_scope(value: Scope | str) -> Scope:
    try:
        return Scope(str(value).strip().lower())
    except ValueError:
        raise errors.InvalidInput(
            f"scope must be one of {', '.join(Scope)}, not {str(value)[:40]!r}", field="scope"
        ) from None


def get_api_key(conn: sa.Connection, user_id: int, key_id: int) -> ApiKey:
    row = conn.execute(sa.select(K).where(K.c.id == key_id, K.c.user_id == user_id)).first()
    if row is None:
        raise errors.NotFound(f"user {user_id} has no API key {key_id}")
    return ApiKey.from_row(row)


def list_api_keys(conn: sa.Connection, user_id: int) -> list[ApiKey]:
    rows = conn.execute(sa.select(K).where(K.c.user_id == user_id).order_by(K.c.id))
    return [ApiKey.from_row(r) for r in rows]


def revoke_api_key(conn: sa.Connection, user_id: int, key_id: int) -> None:
    result = conn.execute(sa.delete(K).where(K.c.id == key_id, K.c.user_id == user_id))
    if result.rowcount != 1:
        raise errors.NotFound(f"user {user_id} has no API key {key_id}")
    keys_changed(conn)


def record_key_use(conn: sa.Connection, key: str) -> None:
    """Stamp the key's last_used_at (callers throttle this: it is a write)."""
    conn.execute(sa.update(K).where(K.c.key_hash == _digest(key)).values(last_used_at=utcnow()))


def authenticate_key(conn: sa.Connection, key: str) -> User | None:
    """The enabled user owning ``key``, with the rights its scope leaves them (``role``
    the lesser of theirs and the scope's), or None. Unauthorized, saying so, for a key
    that expired."""
    found = _key_user(conn, key)
    return None if found is None else found[0]


def _key_user(conn: sa.Connection, key: str) -> tuple[User, float | None] | None:
    """:func:`authenticate_key`, and the seconds until the key expires (None: never)."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    row = conn.execute(
        sa.select(*_USER_COLUMNS, K.c.prefix, K.c.scope, K.c.expires_at,
                  utcnow().label("db_now"))
        .select_from(K.join(U, U.c.id == K.c.user_id))
        .where(K.c.key_hash == _digest(key))
    ).first()  # fmt: skip
    if row is None:
        return None
    user = User.from_row(row)
    if user.disabled:
        return None
    left = None
    if row.expires_at is not None:
        left = (row.expires_at - row.db_now).total_seconds()
        if left <= 0:
            at = row.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise errors.Unauthorized(
                f"the API key {row.prefix}… expired at {at}; ask for a new one (or make one "
                "on your account page)"
            )
    scope = Scope(row.scope)
    return dataclasses.replace(
        user,
        role=scoped_role(user.role, scope),
        via=f"key {row.prefix}",
        scope=scope,
        key_expires_at=None if row.expires_at is None else row.expires_at.astimezone(UTC),
    ), left


def scoped_role(role: Role, scope: Scope) -> Role:
    """The rights a key of ``scope`` leaves its user of ``role``: the lesser of the two,
    except that a scope narrows what a key may *do*, never widens what it may *see*. A
    viewer sees every job and a submitter only their own, so a submitter's ``read`` key
    keeps a submitter's sight (its scope refuses every change: api/deps.py), rather than
    becoming a viewer's key that reads everyone's jobs."""
    if role is Role.SUBMITTER:
        return role
    return lesser(role, SCOPE_ROLES[scope])


# -- verified keys, remembered briefly -------------------------------------------------
#
# Checking a key is a read transaction of its own, about a tenth of a small request. A
# server remembers the keys it verified for KEY_CACHE_SECONDS. A change made through this
# module (a key revoked, a user disabled, deleted or given another role or limits) voids
# every remembered key of this process at once and again when it commits, so the next
# request reads the database; a change made by another server or a `jobbalancer users`
# command reaches this one within KEY_CACHE_SECONDS. Unknown keys are never remembered.

KEY_CACHE_SECONDS = 2.0


class _Generation:
    """A process-wide count of changes to users and keys."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def bump(self, *_: object) -> None:
        with self._lock:
            self.value += 1


_KEY_GENERATION = _Generation()


def keys_changed(conn: sa.Connection) -> None:
    """Forget the keys verified so far, now and once ``conn``'s transaction commits (a
    check that read the old rows before the commit must not be remembered). SQLAlchemy's
    ``commit`` event comes just before the database commits, so a check in between still
    read the old rows: in a ``db.write`` the keys are forgotten once more after it."""
    _KEY_GENERATION.bump()
    sa.event.listen(conn, "commit", _KEY_GENERATION.bump, once=True)
    db.after_commit(conn, _KEY_GENERATION.bump)


class KeyCache:
    """API keys this server verified, each remembered for ``ttl`` seconds (see above)."""

    MAX_KEYS = 10_000

    def __init__(
        self, ttl: float = KEY_CACHE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._known: dict[str, tuple[User, float, int]] = {}  # digest: user, until, generation

    def get(self, key: str) -> User | None:
        """The user of ``key`` if it was verified lately and nothing changed since."""
        found = self._known.get(_digest(key))
        if found is None:
            return None
        user, until, generation = found
        if generation != _KEY_GENERATION.value or self._clock() >= until:
            return None
        return user

    def authenticate(self, conn: sa.Connection, key: str) -> User | None:
        """:func:`authenticate_key`, remembering a valid key."""
        generation, now = _KEY_GENERATION.value, self._clock()  # before the read
        found = _key_user(conn, key)
        if found is None:
            return None
        user, left = found
        if len(self._known) >= self.MAX_KEYS:  # forget them all rather than grow
            self._known = {}
        # A key about to expire is remembered no longer than it lives (by the database's
        # clock, read with the key: counted from before the read, so never too long).
        ttl = self.ttl if left is None else min(self.ttl, left)
        self._known[_digest(key)] = (user, now + ttl, generation)
        return user


def ensure_first_admin(conn: sa.Connection) -> tuple[User, str, str] | None:
    """On an empty user table: an admin with a random password and an API key.

    Returns (user, password, key) the one time it creates them, else None.
    """
    if count_users(conn) > 0:
        return None
    password = generate_password()
    user = create_user(conn, "admin", Role.ADMIN, password)
    _, key = create_api_key(conn, user.id, "first-start")
    return user, password, key


# -- login throttling ------------------------------------------------------------------------
#
# Failed logins are counted per (name tried, source address), per address alone, and per
# name alone (from any address). An address is the client's IPv4 address, or its IPv6 /64
# (one host usually holds a whole /64; see service.sessions.address). Past a few free
# failures each one makes the next try wait, twice as long every time up to a cap:
#
# * (name, address) and address: from 1 s up to 5 minutes, for that address only.
# * name alone: past 10 failures from anywhere, 1 s up to 15 s, for every address. This is
#   what slows a botnet guessing the admin's password from many addresses to about four
#   guesses a minute. Its cap is low on purpose: the wait applies to the real admin too, so
#   it must stay a delay, never a lockout; an attacker can make the admin wait 15 s, no more.
#
# Every attempt is counted as a failure before the password is checked (in one short write
# transaction, which locks the rows it counts on), and a success takes that count back: so
# parallel guesses queue on the rows and each sees the ones before it; none slips through
# on a count read before the others were written. Names that exist and names that do not
# are counted (under a digest of the name), answered and timed alike.

ANY_ACCOUNT = "*"  # the account of an address's row for failures against any name
ANY_ADDRESS = "*"  # the address of a name's row for failures from any address
FREE_FAILURES = 3  # failures for one name from one address before waits begin …
FREE_ADDRESS_FAILURES = 20  # … for any names from one address …
FREE_ACCOUNT_FAILURES = 10  # … and for one name from any addresses
FIRST_WAIT = timedelta(seconds=1)  # the first wait; each further failure doubles it …
MAX_WAIT = timedelta(minutes=5)  # … up to this for an address
MAX_ACCOUNT_WAIT = timedelta(seconds=15)  # … and up to this for a name (everyone waits it)
FORGET_AFTER = timedelta(hours=1)  # failures older than this count no more


def _account(name: str) -> str:
    """The key a name is counted under: a digest, so the table holds no names (nor the
    passwords people type into the name field) and treats every name alike."""
    folded = name.strip().casefold().encode("utf-8", "surrogatepass")
    return hashlib.sha256(folded).hexdigest()


def _counters(name: str, address: str) -> list[tuple[str, str, int, timedelta]]:
    """The rows a try of ``name`` from ``address`` counts on: (account, address, free
    failures, longest wait), in one order for every caller, so two transactions that share
    two rows lock them in the same order and cannot deadlock."""
    account = _account(name)
    return [
        (account, address, FREE_FAILURES, MAX_WAIT),
        (ANY_ACCOUNT, address, FREE_ADDRESS_FAILURES, MAX_WAIT),
        (account, ANY_ADDRESS, FREE_ACCOUNT_FAILURES, MAX_ACCOUNT_WAIT),
    ]


def wait_after(failures: int, free: int, cap: timedelta | None = None) -> timedelta:
    """How long to wait after the ``failures``-th failure of ``free`` free ones (at most
    ``cap``, by default MAX_WAIT)."""
    if failures <= free:
        return timedelta(0)
    doublings: int = min(failures - free - 1, 30)
    return min(cap or MAX_WAIT, FIRST_WAIT * (1 << doublings))


def login_wait(conn: sa.Connection, name: str, address: str, now: datetime) -> int:
    """Whole seconds ``address`` must wait before trying ``name`` again; 0 if it may now."""
    rows = _counters(name, address)
    keys = [sa.and_(LF.c.account == a, LF.c.address == b) for a, b, _, _ in rows]
    fresh = LF.c.last_failure_at > now - FORGET_AFTER
    tries = conn.execute(sa.select(LF.c.next_try_at).where(sa.or_(*keys), fresh)).scalars()
    latest = max(tries, default=now)
    return max(0, math.ceil((latest - now).total_seconds()))


def _count(
    conn: sa.Connection, key: dict[str, str], free: int, cap: timedelta, now: datetime
) -> tuple[timedelta, timedelta]:
    """Count one failure on the row ``key`` (locking it until commit): (how long the try
    had still to wait before this one, the wait this failure sets)."""
    stamps = {"last_failure_at": now}
    failures = db.count_up(conn, LF, key, "failures", stamps, new={"next_try_at": now})
    where = [LF.c.account == key["account"], LF.c.address == key["address"]]
    next_try = conn.execute(sa.select(LF.c.next_try_at).where(*where)).scalar_one()
    this = wait_after(failures, free, cap)
    conn.execute(sa.update(LF).where(*where).values(next_try_at=now + this))
    return max(timedelta(0), next_try - now), this


def record_failed_login(
    conn: sa.Connection, name: str, address: str, now: datetime | None = None
) -> int:
    """Count a failed login of ``name`` from ``address``; the seconds it must now wait."""
    return _record_attempt(conn, name, address, now, refuse_early=False)


def begin_login(conn: sa.Connection, name: str, address: str, now: datetime | None = None) -> int:
    """Count a try of ``name`` from ``address`` as a failure before its password is checked
    (record_login takes it back on success); the seconds a failure makes it wait. Raises
    LoginThrottled, counting nothing, while it must still wait. Run it in a transaction of
    its own and commit before checking the password: the rows stay locked until then."""
    return _record_attempt(conn, name, address, now, refuse_early=True)


def _record_attempt(
    conn: sa.Connection, name: str, address: str, now: datetime | None, *, refuse_early: bool
) -> int:
    now = now or db.now(conn)
    conn.execute(sa.delete(LF).where(LF.c.last_failure_at <= now - FORGET_AFTER))
    early, wait = timedelta(0), timedelta(0)
    for account, where, free, cap in _counters(name, address):
        left, this = _count(conn, {"account": account, "address": where}, free, cap, now)
        early, wait = max(early, left), max(wait, this)
    if refuse_early and early > timedelta(0):
        raise _throttled(math.ceil(early.total_seconds()))  # the caller's rollback uncounts it
    return math.ceil(wait.total_seconds())


def _throttled(wait: int) -> errors.LoginThrottled:
    return errors.LoginThrottled(
        wait,
        f"too many failed logins from your address or for this name: try again in {wait} "
        "seconds (or ask an admin to reset the password)",
    )


def record_login(conn: sa.Connection, name: str, address: str) -> None:
    """A successful login: that name's failures are forgiven, from that address and from
    anywhere, and the address's overall count gives back the one begin_login added (no
    more, or a user of one's own could reset it between guesses)."""
    # One row at a time, in begin_login's order, so the two cannot deadlock.
    account = _account(name)
    conn.execute(sa.delete(LF).where(LF.c.account == account, LF.c.address == address))
    conn.execute(
        sa.update(LF)
        .where(LF.c.account == ANY_ACCOUNT, LF.c.address == address, LF.c.failures > 0)
        .values(failures=LF.c.failures - 1)
    )
    conn.execute(sa.delete(LF).where(LF.c.account == account, LF.c.address == ANY_ADDRESS))


def forget_failed_logins(conn: sa.Connection, name: str) -> None:
    """After a password reset: ``name`` may be tried at once from everywhere it failed."""
    account = _account(name)
    addresses = sa.select(LF.c.address).where(LF.c.account == account).scalar_subquery()
    conn.execute(sa.delete(LF).where(LF.c.account == ANY_ACCOUNT, LF.c.address.in_(addresses)))
    conn.execute(sa.delete(LF).where(LF.c.account == account))


# -- web sessions ----------------------------------------------------------------------------

SESSION_COOKIE = "jb_session"  # the cookie that carries the token
CSRF_HEADER = "X-CSRF-Token"  # htmx and scripts send the CSRF token here; forms as csrf_token
SESSION_IDLE = timedelta(hours=8)  # a session unused this long ends
SESSION_MAX = timedelta(days=7)  # and none lasts longer than this, used or not
SESSION_TOUCH = timedelta(minutes=1)  # last_seen_at is written at most this often


@dataclass(frozen=True)
class WebSession:
    """A logged-in browser: its user, and the CSRF token its forms must carry."""

    user: User
    token_hash: str
    csrf_token: str
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime


def check_login(
    conn: sa.Connection, name: str, password: str, address: str, now: datetime | None = None
) -> User:
    """The user ``name`` if ``password`` is theirs; read-only, so the slow hash runs
    outside a write transaction. Raises LoginThrottled while ``address`` must wait (without
    looking at the password or the name), else as verify_login."""
    wait = login_wait(conn, name, address, now or db.now(conn))
    if wait > 0:
        raise _throttled(wait)
    return verify_login(conn, name, password)


def verify_login(conn: sa.Connection, name: str, password: str) -> User:
    """The user ``name`` if ``password`` is theirs (no throttling: begin_login did that).
    Unauthorized for a wrong name or password, Forbidden for a disabled account (told only
    to whoever knows its password)."""
    row = None
    if "\x00" not in name:  # no name has one, and PostgreSQL refuses it in a query
        query = sa.select(*_USER_COLUMNS, U.c.password_hash).where(U.c.name == name)
        row = conn.execute(query).first()
    if not _password_fits(row, password):
        raise errors.Unauthorized("wrong user name or password")
    user = User.from_row(row)
    if user.disabled:
        raise errors.Forbidden(f"the account {name!r} is disabled; ask an admin")
    return user


def create_session(conn: sa.Connection, user_id: int) -> tuple[str, WebSession]:
    """A new session for a user who just logged in: (cookie token, session).

    Every login gets a fresh token, so a token planted before login is worth nothing.
    """
    now = db.now(conn)
    conn.execute(sa.delete(WS).where(WS.c.expires_at <= now))  # tidy up on the way
    token = secrets.token_urlsafe(32)
    conn.execute(
        sa.insert(WS).values(
            token_hash=_digest(token),
            user_id=user_id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
            expires_at=now + SESSION_IDLE,
        )
    )
    session = _find_session(conn, _digest(token))
    assert session is not None
    return token, session


def _find_session(conn: sa.Connection, token_hash: str) -> WebSession | None:
    row = conn.execute(
        sa.select(*_USER_COLUMNS, WS.c.token_hash, WS.c.csrf_token, WS.c.expires_at,
                  WS.c.last_seen_at, WS.c.created_at.label("session_created_at"))
        .select_from(WS.join(U, U.c.id == WS.c.user_id))
        .where(WS.c.token_hash == token_hash, WS.c.expires_at > utcnow())
    ).first()  # fmt: skip
    if row is None:
        return None
    user = dataclasses.replace(User.from_row(row), via="web")
    if user.disabled:
        return None
    return WebSession(
        user=user,
        token_hash=row.token_hash,
        csrf_token=row.csrf_token,
        created_at=row.session_created_at,
        expires_at=row.expires_at,
        last_seen_at=row.last_seen_at,
    )


def find_session(conn: sa.Connection, token: str) -> WebSession | None:
    """The live session of the cookie ``token`` (its user enabled), or None."""
    if not token or len(token) > 200:
        return None
    return _find_session(conn, _digest(token))


def session_needs_touch(session: WebSession, now: datetime) -> bool:
    return now - session.last_seen_at >= SESSION_TOUCH


def touch_session(conn: sa.Connection, session: WebSession) -> None:
    """Slide the session's expiry: idle time counts from now, up to its maximum age."""
    now = db.now(conn)
    expires = min(now + SESSION_IDLE, session.created_at + SESSION_MAX)
    conn.execute(
        sa.update(WS)
        .where(WS.c.token_hash == session.token_hash)
        .values(last_seen_at=now, expires_at=expires)
    )


def end_session(conn: sa.Connection, token: str) -> None:
    """Log out: the session's row goes, so the cookie is worth nothing anywhere."""
    conn.execute(sa.delete(WS).where(WS.c.token_hash == _digest(token)))


def end_sessions(conn: sa.Connection, user_id: int) -> int:
    """Log a user out everywhere (after a password reset, or when disabled); how many."""
    return int(conn.execute(sa.delete(WS).where(WS.c.user_id == user_id)).rowcount)


def csrf_matches(session: WebSession, token: str | None) -> bool:
    return token is not None and secrets.compare_digest(session.csrf_token, token)

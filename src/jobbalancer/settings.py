"""Settings: the TOML file, JOBBALANCER_<SECTION>_<KEY> environment variables, and defaults.

Two kinds live here. :class:`Settings` is how a process starts (database URL, ports, the
worker's name): read once from the file and the environment. :class:`Tunables` are the
cluster-wide knobs an admin changes at run time (balancing algorithm, timeouts, caps):
kept in the database's ``settings`` table and re-read by every process, so a change takes
effect without a restart.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobbalancer.db import schema
from jobbalancer.errors import ConfigError, InvalidInput
from jobbalancer.worker import jobenv, uids

ENV_PREFIX = "JOBBALANCER_"
DEFAULT_DATA_DIR = "jobbalancer-data"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(_Section):
    """Where the shared database is: a SQLAlchemy URL. Empty means SQLite in the data dir."""

    url: str = ""
    pool_size: int = Field(default=10, ge=1, le=200)


class ServerSettings(_Section):
    """The HTTP server and its background loops."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    tls_cert: str = ""
    tls_key: str = ""
    allow_root: bool = False  # the server needs no privileges: refused as root without this
    metrics_public: bool = False
    balance_interval: float = Field(default=1.0, gt=0, le=60)
    monitor_interval: float = Field(default=1.0, gt=0, le=60)


class WorkerSettings(_Section):
    """One worker process."""

    name: str = ""
    worker_class: str = "default"
    max_jobs: int | None = Field(default=None, ge=1, le=10_000)
    # A user name, or "dynamic": each job a uid of its own from dynamic_uids (worker/uids.py).
    run_as: str = ""
    dynamic_uids: str = uids.DEFAULT_RANGE
    # The PATH jobs get (and their interpreters are looked up on), not the worker's own.
    job_path: str = jobenv.DEFAULT_PATH
    allow_root: bool = False
    # Track each job by a cgroup of its own where the host allows (see worker/cgroups.py).
    cgroups: bool = True
    heartbeat_interval: float = Field(default=3.0, gt=0, le=60)
    poll_min: float = Field(default=0.01, gt=0, le=5)
    poll_max: float = Field(default=0.1, gt=0, le=10)
    flush_interval: float = Field(default=0.2, gt=0, le=10)
    flush_bytes: int = Field(default=65536, ge=1024)
    buffer_max_bytes: int = Field(default=64 * 1024 * 1024, ge=65536)

    @field_validator("dynamic_uids")
    @classmethod
    def _uid_range(cls, value: str) -> str:
        uids.UidRange.parse(value)  # its ValueError names what is wrong
        return value

    @field_validator("job_path")
    @classmethod
    def _absolute_dirs(cls, value: str) -> str:
        if not value or not all(os.path.isabs(part) for part in value.split(":")):
            raise ValueError("give absolute directories separated by ':'")
        return value


class Settings(_Section):
    """Everything a jobbalancer process needs to start."""

    data_dir: str = DEFAULT_DATA_DIR
    log_level: str = "info"
    database: DatabaseSettings = DatabaseSettings()
    server: ServerSettings = ServerSettings()
    worker: WorkerSettings = WorkerSettings()

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        path = Path(self.data_dir).resolve() / "jobbalancer.db"
        return f"sqlite:///{path}"


def load(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read settings: defaults, then the TOML file, then the environment, then overrides.

    ``path`` defaults to ``$JOBBALANCER_CONFIG``, else ``./jobbalancer.toml`` if it exists.
    ``overrides`` are dotted keys (``"worker.name"``) with values from CLI flags; ``None``
    values are ignored so unset flags do not clobber the file.
    """
    data = _read_file(path)
    _merge_env(data, os.environ)
    for dotted, value in overrides.items():
        if value is not None:
            _put(data, dotted.split("."), value)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"setting {where}: {first['msg']}", field=where) from exc


def _read_file(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    explicit = path or os.environ.get(ENV_PREFIX + "CONFIG")
    candidate = Path(explicit) if explicit else Path("jobbalancer.toml")
    if not candidate.exists():
        if explicit:
            raise ConfigError(f"config file {candidate} does not exist")
        return {}
    try:
        return tomllib.loads(candidate.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {candidate}: {exc}") from exc


def _merge_env(data: dict[str, Any], environ: os._Environ[str] | dict[str, str]) -> None:
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        section, _, name = rest.partition("_")
        if section in ("database", "server", "worker") and name:
            _put(data, [section, name], value)
        elif rest in Settings.model_fields:
            _put(data, [rest], value)


def _put(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value


Algorithm = Literal["round_robin", "least_loaded", "random", "fill_first"]


class Tunables(BaseModel):
    """Cluster-wide settings kept in the database; admins change them at run time."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    algorithm: Algorithm = "round_robin"
    worker_timeout: float = Field(default=15.0, ge=2, le=3600)
    kill_grace: float = Field(default=5.0, ge=0, le=600)
    max_log_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=10 * 1024**3)
    retention_days: int = Field(default=30, ge=0, le=36500)
    metrics_public: bool = False

    @field_validator("algorithm", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


def load_tunables(conn: sa.Connection) -> Tunables:
    """The cluster-wide settings as stored, defaults where none is stored."""
    t = schema.settings
    rows = conn.execute(sa.select(t.c.key, t.c.value).where(t.c.key.in_(Tunables.model_fields)))
    stored = {key: value for key, value in rows}
    try:
        return Tunables.model_validate(stored)
    except ValidationError:
        # A value stored by an older version that no longer validates: fall back per key.
        good = {}
        for key, value in stored.items():
            try:
                Tunables.model_validate({key: value})
            except ValidationError:
                continue
            good[key] = value
        return Tunables.model_validate(good)


def save_tunables(conn: sa.Connection, changes: Mapping[str, Any]) -> Tunables:
    """Validate and store changed cluster-wide settings; the whole new set."""
    current = load_tunables(conn).model_dump()
    unknown = set(changes) - set(current)
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidInput(f"unknown setting {name!r}", field=name)
    try:
        new = Tunables.model_validate({**current, **changes})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{name}: {first['msg']}", field=name) from exc
    for key in changes:
        put_value(conn, key, getattr(new, key))
    return new


def get_value(conn: sa.Connection, key: str) -> Any:
    t = schema.settings
    return conn.execute(sa.select(t.c.value).where(t.c.key == key)).scalar_one_or_none()


def put_value(conn: sa.Connection, key: str, value: Any) -> None:
    """Store one value under ``key`` (update, or insert the first time)."""
    t = schema.settings
    if conn.execute(sa.update(t).where(t.c.key == key).values(value=value)).rowcount == 0:
        conn.execute(sa.insert(t).values(key=key, value=value))

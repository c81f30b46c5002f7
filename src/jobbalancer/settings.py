"""Settings: the TOML file, JOBBALANCER_<SECTION>_<KEY> environment variables, and defaults.

Two kinds live here. :class:`Settings` is how a process starts (database URL, ports, the
worker's name): read once from the file and the environment. :class:`Tunables` are the
cluster-wide knobs an admin changes at run time (balancing algorithm, timeouts, caps):
kept in the database's ``settings`` table and re-read by every process, so a change takes
effect without a restart.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from jobbalancer import resources
from jobbalancer.db import schema
from jobbalancer.errors import ConfigError, InvalidInput
from jobbalancer.worker import jobenv, uids

log = logging.getLogger(__name__)

ENV_PREFIX = "JOBBALANCER_"
DEFAULT_DATA_DIR = "jobbalancer-data"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(_Section):
    """Where the shared database is: a SQLAlchemy URL. Empty means SQLite in the data dir.

    ``url_file`` names a file (mode 0600) holding the URL instead: the way to give a
    password that is neither on a command line nor in a process's environment.
    """

    url: str = ""
    url_file: str = ""
    pool_size: int = Field(default=10, ge=1, le=200)


class ServerSettings(_Section):
    """The HTTP server and its background loops."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    tls_cert: str = ""
    tls_key: str = ""
    allow_root: bool = False  # the server needs no privileges: refused as root without this
    metrics_public: bool = False
    # Seconds a job's start or end must be old before /metrics counts it (jobbalancer.tally).
    metrics_settle: float = Field(default=15.0, ge=0, le=3600)
    balance_interval: float = Field(default=1.0, gt=0, le=60)
    monitor_interval: float = Field(default=1.0, gt=0, le=60)


class WorkerSettings(_Section):
    """One worker process."""

    name: str = ""
    # The file keeping this machine's worker id (worker/identity.py); "": <data_dir>/worker-id.
    id_file: str = ""
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
    # Placement (jobbalancer/resources.py): what jobs may request here. None: detected (CPUs
    # and memory it may use, cgroup limits included; GPUs from nvidia-smi -L).
    cpus: float | None = Field(default=None, gt=0, le=resources.MAX_CPUS)
    memory: int | None = None
    gpus: int | None = Field(default=None, ge=0, le=resources.MAX_GPUS)
    # name=value or a bare name; in the environment, separated by commas.
    labels: list[str] = Field(default_factory=list)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        size = resources.parse_memory(value)
        if size <= 0:
            raise ValueError("must be more than 0")
        return size

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            resources.parse_labels(str(v) for v in value)  # its ValueError names the label
        return value

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


class NotifySettings(_Section):
    """Notifications (jobbalancer/notify.py): the job page's address in their links, and
    the mail server for ``email`` targets. ``smtp_security``: ``starttls`` (port 587),
    ``tls`` (port 465) or ``none`` (a relay on localhost)."""

    # How people reach the web UI, e.g. https://jobs.example.com; "": http(s)://host:port.
    base_url: str = ""
    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_user: str = ""
    smtp_password: str = Field(default="", repr=False)
    smtp_from: str = ""
    # How long a server holds a notification it is sending before another may send it
    # again (a server that died mid-send); longer than a delivery may take (15 s).
    delivery_lease: float = Field(default=60.0, ge=20, le=3600)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("give an http:// or https:// address")
        return value.rstrip("/")


class Settings(_Section):
    """Everything a jobbalancer process needs to start."""

    data_dir: str = DEFAULT_DATA_DIR
    log_level: str = "info"
    database: DatabaseSettings = DatabaseSettings()
    server: ServerSettings = ServerSettings()
    worker: WorkerSettings = WorkerSettings()
    notify: NotifySettings = NotifySettings()
    # Secrets (jobbalancer/vault.py): the key that encrypts them, as urlsafe base64
    # (JOBBALANCER_SECRET_KEY), else read from this file (mode 0600; "": <data_dir>/secret.key,
    # made by the first `server` or `up`). Workers that run jobs with secrets need it too.
    secret_key: str = Field(default="", repr=False)
    secret_key_file: str = ""

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        path = Path(self.data_dir).resolve() / "jobbalancer.db"
        return f"sqlite:///{path}"

    @property
    def web_url(self) -> str:
        """Where people reach the web UI: ``notify.base_url``, else this server's address."""
        if self.notify.base_url:
            return self.notify.base_url
        scheme = "https" if self.server.tls_cert else "http"
        return f"{scheme}://{self.server.host}:{self.server.port}"

    @property
    def secret_key_path(self) -> Path:
        """Where the secret key file is (used when ``secret_key`` is not given)."""
        return Path(self.secret_key_file or Path(self.data_dir).resolve() / "secret.key")

    @property
    def worker_id_file(self) -> str:
        """Where the worker keeps this machine's worker id."""
        return self.worker.id_file or str(Path(self.data_dir).resolve() / "worker-id")

    @property
    def private_data_dir(self) -> Path | None:
        """The data dir, when the database is SQLite in it: then it is jobbalancer's
        alone (mode 0700). A ``sqlite:///`` URL's directory is left as it is (it may be
        shared, /tmp say); its files are made private all the same."""
        return None if self.database.url else Path(self.data_dir).resolve()


def load(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read settings: defaults, then the TOML file, then the environment, then overrides.

    ``path`` defaults to ``$JOBBALANCER_CONFIG``, else ``./jobbalancer.toml`` if it exists.
    ``overrides`` are dotted keys (``"worker.name"``) with values from CLI flags; ``None``
    values are ignored so unset flags do not clobber the file.
    """
    config, data = _read_file(path)
    section = data.get("database")
    file_url = str(section.get("url", "")) if isinstance(section, dict) else ""
    # The file's URL is the one used unless a variable or a flag gives another (as `up`
    # does for its children: then `up` itself has warned already).
    if ENV_PREFIX + "DATABASE_URL" in os.environ or overrides.get("database.url") is not None:
        file_url = ""
    _merge_env(data, os.environ)
    for dotted, value in overrides.items():
        if value is not None:
            _put(data, dotted.split("."), value)
    try:
        loaded = Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"setting {where}: {first['msg']}", field=where) from exc
    if config is not None and file_url:
        _check_config_mode(config, file_url)
    return _with_url_from_file(loaded)


def has_password(url: str) -> bool:
    """Whether a database URL carries a password (an unparsable one: assume it may)."""
    try:
        return bool(make_url(url).password)
    except ArgumentError:
        return ":" in url.partition("@")[0].rpartition("//")[2]


def _check_config_mode(config: Path, url: str) -> None:
    """Warn when the config file that gives the database password is readable by others."""
    mode = stat.S_IMODE(config.stat().st_mode)
    if has_password(url) and mode & 0o044:
        log.warning(
            "config file %s holds the database password and is readable by other users "
            "(mode %04o): chmod 600 %s",
            config,
            mode,
            config,
        )


def _with_url_from_file(loaded: Settings) -> Settings:
    """``database.url`` read from ``database.url_file``, which only its owner may read."""
    name = loaded.database.url_file
    if not name:
        return loaded
    if loaded.database.url:
        raise ConfigError(
            "database.url and database.url_file are both set: give the URL one way "
            f"(the file {name}, or --database-url / {ENV_PREFIX}DATABASE_URL)",
            field="database.url_file",
        )
    path = Path(name)
    url = _read_secret_file(path, "database.url_file", "database URL file")
    if not url:
        raise ConfigError(f"database URL file {path} is empty", field="database.url_file")
    database = loaded.database.model_copy(update={"url": url})
    return loaded.model_copy(update={"database": database})


def _read_secret_file(path: Path, field: str, what: str) -> str:
    """The stripped text of ``path``, a file only we (or root) own and only its owner may
    read. Opened without following a symlink, and checked through the open descriptor, so
    the file checked is the file read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        hint = " (a symlink is not followed)" if exc.errno == errno.ELOOP else ""
        raise ConfigError(
            f"cannot read the {what} {path}: {exc.strerror or exc}{hint}", field=field
        ) from exc
    try:
        _check_private(path, os.fstat(fd), field, what)
        with os.fdopen(fd, "r", encoding="utf-8", closefd=False) as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc}", field=field) from exc
    finally:
        os.close(fd)


read_secret_file = _read_secret_file  # the secret key file is read the same way (vault.py)


def _check_private(path: Path, info: os.stat_result, field: str, what: str) -> None:
    """ConfigError unless ``info`` is a regular file that we (or root) own and only its
    owner may read."""
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file", field=field)
    if info.st_uid not in (os.geteuid(), 0):
        # Another user who owns it could rewrite it (and point us at their database).
        raise ConfigError(
            f"{what} {path} belongs to uid {info.st_uid}, not to this user "
            f"(uid {os.geteuid()}) or root: chown it",
            field=field,
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        # Refused, not warned about: the file exists only to keep the secret, and one
        # chmod fixes it (as ssh does with a private key).
        raise ConfigError(
            f"{what} {path} may be read by other users (mode {mode:04o}): chmod 600 {path}",
            field=field,
        )


def _read_file(path: str | os.PathLike[str] | None) -> tuple[Path | None, dict[str, Any]]:
    """The config file read (None if there is none) and its contents."""
    explicit = path or os.environ.get(ENV_PREFIX + "CONFIG")
    candidate = Path(explicit) if explicit else Path("jobbalancer.toml")
    if not candidate.exists():
        if explicit:
            raise ConfigError(f"config file {candidate} does not exist")
        return None, {}
    try:
        return candidate, tomllib.loads(candidate.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {candidate}: {exc}") from exc


def _merge_env(data: dict[str, Any], environ: os._Environ[str] | dict[str, str]) -> None:
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        section, _, name = rest.partition("_")
        if section in ("database", "server", "worker", "notify") and name:
            _put(data, [section, name], value)
        elif rest in Settings.model_fields:
            _put(data, [rest], value)


def _put(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value


Algorithm = Literal["round_robin", "least_loaded", "random", "fill_first", "binpack"]


class Tunables(BaseModel):
    """Cluster-wide settings kept in the database; admins change them at run time."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    algorithm: Algorithm = "round_robin"
    worker_timeout: float = Field(default=15.0, ge=2, le=3600)
    kill_grace: float = Field(default=5.0, ge=0, le=600)
    max_log_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=10 * 1024**3)
    retention_days: int = Field(default=30, ge=0, le=36500)
    metrics_public: bool = False
    # Limits on one submitter (admins and operators are exempt): waiting jobs at a time,
    # submit requests per second with a burst (per server process), the highest priority
    # they may set; and open log streams per user (any role, per server process).
    max_waiting_per_user: int = Field(default=10_000, ge=1, le=100_000_000)
    submit_rate: float = Field(default=20.0, gt=0, le=1_000_000)
    submit_burst: int = Field(default=100, ge=1, le=1_000_000)
    max_submitter_priority: int = Field(default=100, ge=-1_000_000_000, le=1_000_000_000)
    max_streams_per_user: int = Field(default=20, ge=1, le=100_000)
    # Audit log entries older than this many days are deleted by the leader (0: kept).
    audit_retention_days: int = Field(default=365, ge=0, le=36500)

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

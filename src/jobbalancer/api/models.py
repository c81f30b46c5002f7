"""Request and response bodies of the JSON API (docs/api.md).

Their docstrings and field descriptions are what ``/docs`` shows. Requests reject unknown
fields (a typo should not be silently ignored) and any text a database could not store
(NUL characters, lone surrogates), naming the field; responses are built from the core's
frozen records with ``from_*`` constructors.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    field_validator,
)

from jobbalancer import auth, classes, jobs, refs, registry, scripts, stats
from jobbalancer.refs import MAX_ID

# Linux refuses a single argv or environment string longer than this (MAX_ARG_STRLEN).
ARG_MAX_BYTES = 128 * 1024 - 1
MAX_WATCHDOG = 10 * 366 * 86400  # seconds; also fits MariaDB's single-precision FLOAT
MAX_PRIORITY = 1_000_000_000
# Used with fullmatch: "$" would also match before a trailing newline.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]*")


# -- text every backend can store ---------------------------------------------------------


def clean_text(value: str) -> str:
    """``value`` if PostgreSQL, MariaDB and SQLite can all store it, else ValueError."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _plain_name(value: str) -> str:
    problem = refs.name_problem(clean_text(value))
    if problem is not None:
        raise ValueError(problem)
    return value


def _clean_optional(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


def _fits_argv(value: str) -> str:
    if len(value.encode()) > ARG_MAX_BYTES:
        raise ValueError("must be at most 128 KiB: the OS refuses longer arguments")
    return value


Text = Annotated[str, AfterValidator(clean_text)]
QueryText = Annotated[str | None, AfterValidator(_clean_optional)]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_plain_name),
]
Description = Annotated[str, StringConstraints(max_length=10_000), AfterValidator(clean_text)]


def _name_or_id(value: Any) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= MAX_ID:
            return value
        raise ValueError(f"an id must be 1 to {MAX_ID}")
    if isinstance(value, str):
        text = clean_text(value).strip()
        if 1 <= len(text) <= 200:
            return text
        raise ValueError("a name must have 1 to 200 characters")
    raise ValueError("must be a name (string) or an id (integer)")


def _param(value: Any) -> str:
    # Numbers are welcome as params (callers write 10 for "10"); objects and booleans are
    # refused rather than guessed at.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be a string or a number")
    text = value if isinstance(value, str) else str(value)
    return _fits_argv(clean_text(text))


def _env(value: dict[str, str]) -> dict[str, str]:
    for key, item in value.items():
        if not _ENV_NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        if len(key.encode()) + len(item.encode()) + 1 > ARG_MAX_BYTES:
            raise ValueError(f"{key} must be at most 128 KiB: the OS refuses longer entries")
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    for key, item in value.items():
        if len(key) > 100 or not LABEL_KEY.fullmatch(key):
            raise ValueError(
                f"label name {key!r}: use 1 to 100 letters, digits, '_', '.', '-' or '/', "
                "starting with a letter or digit"
            )
        if len(item) > 1000:
            raise ValueError(f"label {key}: the value must be at most 1000 characters")
    return value


NameOrId = Annotated[str | int, PlainValidator(_name_or_id, json_schema_input_type=str | int)]
Param = Annotated[str, PlainValidator(_param, json_schema_input_type=str | int | float)]
Command = Annotated[str, AfterValidator(clean_text), AfterValidator(_fits_argv)]
Env = Annotated[dict[Text, Text], AfterValidator(_env)]
Labels = Annotated[dict[Text, Text], AfterValidator(_labels)]


def format_time(value: datetime) -> str:
    """UTC ISO-8601 with milliseconds and ``Z``: ``2026-11-28T10:00:00.000Z``."""
    utc = value.astimezone(UTC) if value.tzinfo else value
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


Time = Annotated[datetime, PlainSerializer(format_time, return_type=str)]


class Input(BaseModel):
    """A request body: unknown fields are refused, so a typo is an error, not a no-op."""

    model_config = ConfigDict(extra="forbid")


# -- jobs ---------------------------------------------------------------------------------


class JobSubmit(Input):
    """A job to run: exactly one of ``command`` or ``script``."""

    command: Command | None = Field(
        None, description="Shell command, run as `/bin/sh -c COMMAND`.", examples=["sleep 5"]
    )
    script: NameOrId | None = Field(None, description="A stored script, by name or id.")
    params: list[Param] = Field(
        default_factory=list,
        max_length=10_000,
        description="Arguments passed as separate argv entries (to a script; to a command as "
        "`$1`…), never pasted into a shell string. Numbers are turned into strings.",
    )
    watchdog: float | None = Field(
        None,
        ge=0,
        le=MAX_WATCHDOG,
        description="Kill the job after this many seconds; 0/null: no limit.",
    )
    worker_class: NameOrId = Field("default", description="Worker class, by name or id.")
    need_realtime: bool = Field(
        False, description="Reject (409, state `occupied`) if no worker has a free slot now."
    )
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="Higher runs first.")
    retries: int = Field(0, ge=0, le=100, description="Re-run this many times if failed or lost.")
    env: Env = Field(default_factory=dict, description="Added to the job's environment.")
    labels: Labels = Field(default_factory=dict, description="Free-form tags; filterable.")


class JobBatch(Input):
    """Up to 1000 jobs, submitted together: all are accepted, or none."""

    jobs: list[JobSubmit] = Field(min_length=1, max_length=1000)


class Ref(BaseModel):
    """Another object, by id and name."""

    id: int
    name: str


class Job(BaseModel):
    """A job and everything known about its run."""

    id: int
    state: jobs.State
    command: str | None
    script: Ref | None = Field(description="The stored script it runs (copied at submit).")
    params: list[str]
    interpreter: str | None
    watchdog: float | None
    worker_class: str
    need_realtime: bool
    priority: int
    retries: int
    attempt: int = Field(description="1 for the first run; +1 for each automatic retry.")
    retry_of: int | None = Field(description="The job whose failure this attempt retries.")
    restarted_from: int | None = Field(description="The job this one was restarted from.")
    env: dict[str, str] = Field(
        description="Names and values; the values are `****` except to the job's owner and admins."
    )
    labels: dict[str, str]
    user: str | None
    worker: Ref | None
    pid: int | None
    exit_code: int | None
    signal: int | None
    error: str | None
    kill_requested: bool = Field(description="A kill was asked for; the worker is stopping it.")
    output_bytes: int
    created_at: Time
    assigned_at: Time | None
    started_at: Time | None
    finished_at: Time | None

    @classmethod
    def from_job(cls, job: jobs.Job, viewer: auth.User) -> Job:
        """The job as ``viewer`` may see it: env values masked unless theirs or an admin."""
        script = None
        if job.script_name is not None:
            script = Ref(id=job.script_id or 0, name=job.script_name)
        worker = None
        if job.worker_id is not None:
            worker = Ref(id=job.worker_id, name=job.worker_name or "")
        return cls(
            **{n: getattr(job, n) for n in _JOB_PLAIN},
            script=script,
            params=list(job.params),
            env=shown_env(job, viewer),
            labels=dict(job.labels),
            user=job.user_name,
            worker=worker,
        )


ENV_MASK = "****"


def may_see_env(job: jobs.Job, viewer: auth.User) -> bool:
    """Env values are the owner's and admins' only: they often hold tokens."""
    return viewer.is_admin or (job.user_id is not None and job.user_id == viewer.id)


def shown_env(job: jobs.Job, viewer: auth.User) -> dict[str, str]:
    """The job's env as ``viewer`` may see it: every name, values masked if not theirs."""
    if may_see_env(job, viewer):
        return dict(job.env)
    return dict.fromkeys(job.env, ENV_MASK)


_JOB_PLAIN = [
    n for n in Job.model_fields if n not in ("script", "params", "env", "labels", "user", "worker")
]


class JobList(BaseModel):
    """One page of jobs, newest first."""

    items: list[Job]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class JobsCreated(BaseModel):
    jobs: list[Job]


# -- workers ------------------------------------------------------------------------------


class Memory(BaseModel):
    total: int | None = Field(description="Bytes.")
    available: int | None = Field(description="Bytes.")


class Worker(BaseModel):
    """A worker process and what its last heartbeat said about its machine."""

    id: int
    name: str
    host: str
    state: str = Field(description="online | draining | offline | disabled")
    enabled: bool
    worker_class: str
    max_jobs: int = Field(description="Effective limit: its own, else its class's.")
    own_max_jobs: int | None = Field(description="Its own limit; null: the class's.")
    active_jobs: int
    load: float | None
    cpu_count: int | None
    memory: Memory | None
    version: str
    pid: int | None
    started_at: Time
    last_heartbeat_at: Time

    @classmethod
    def from_worker(cls, w: registry.Worker) -> Worker:
        memory = None
        if w.memory_total is not None or w.memory_available is not None:
            memory = Memory(total=w.memory_total, available=w.memory_available)
        return cls(
            **{n: getattr(w, n) for n in _WORKER_PLAIN},
            state=w.display_state,
            memory=memory,
        )


_WORKER_PLAIN = [n for n in Worker.model_fields if n not in ("state", "memory")]


class WorkerPatch(Input):
    """Change a worker: send only what changes."""

    max_jobs: int | None = Field(
        None, ge=1, le=classes.MAX_JOBS_LIMIT, description="null: use the class's max_jobs."
    )
    worker_class: NameOrId | None = None
    enabled: bool | None = Field(None, description="false: takes no new jobs, finishes its own.")

    @field_validator("worker_class", "enabled", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null")
        return value


# -- worker classes -----------------------------------------------------------------------


class WorkerClassIn(Input):
    """A new worker class."""

    name: Name
    max_jobs: int = Field(5, ge=1, le=classes.MAX_JOBS_LIMIT, description="Per worker, by default.")
    description: Description = ""


class WorkerClassPatch(Input):
    """Change a worker class: send only what changes."""

    name: Name | None = None
    max_jobs: int | None = Field(None, ge=1, le=classes.MAX_JOBS_LIMIT)
    description: Description | None = None

    @field_validator("name", "max_jobs", "description", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null")
        return value


class WorkerClass(BaseModel):
    id: int
    name: str
    max_jobs: int
    description: str

    @classmethod
    def from_class(cls, c: classes.WorkerClass) -> WorkerClass:
        return cls(id=c.id, name=c.name, max_jobs=c.max_jobs, description=c.description)


# -- scripts ------------------------------------------------------------------------------


class ScriptIn(Input):
    """A new stored script."""

    name: Name
    interpreter: Annotated[str, AfterValidator(clean_text)] | None = Field(
        None,
        description="Program name (`bash`, `python3`) or absolute path (`/usr/bin/php`); "
        "empty when the content starts with a `#!` line.",
    )
    content: Annotated[str, AfterValidator(clean_text)] = Field(description="The script body.")
    description: Description = ""


class ScriptPatch(Input):
    """Change a script: send only what changes."""

    name: Name | None = None
    interpreter: Annotated[str, AfterValidator(clean_text)] | None = None
    content: Annotated[str, AfterValidator(clean_text)] | None = None
    description: Description | None = None

    @field_validator("name", "content", "description", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null")
        return value


class Script(BaseModel):
    id: int
    name: str
    interpreter: str | None
    content: str
    description: str
    created_at: Time
    updated_at: Time

    @classmethod
    def from_script(cls, s: scripts.Script) -> Script:
        return cls(**{n: getattr(s, n) for n in cls.model_fields})


# -- users and keys -----------------------------------------------------------------------

Password = Annotated[str, StringConstraints(max_length=1000), AfterValidator(clean_text)]


class UserIn(Input):
    """A new user. Without a password the user can only use API keys."""

    name: Name
    role: auth.Role = auth.Role.SUBMITTER
    password: Password | None = Field(None, description="At least 8 characters.")
    commands_allowed: bool = Field(True, description="false: stored scripts only.")
    worker_classes: list[NameOrId] | None = Field(
        None, description="Classes the user may submit to; null: all."
    )
    disabled: bool = False


class UserPatch(Input):
    """Change a user: send only what changes."""

    name: Name | None = None
    role: auth.Role | None = None
    password: Password | None = None
    commands_allowed: bool | None = None
    worker_classes: list[NameOrId] | None = None
    disabled: bool | None = None

    @field_validator("name", "role", "commands_allowed", "disabled", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null")
        return value


class User(BaseModel):
    id: int
    name: str
    role: auth.Role
    commands_allowed: bool
    worker_classes: list[str] | None
    disabled: bool
    created_at: Time

    @classmethod
    def from_user(cls, u: auth.User) -> User:
        classes_ = None if u.worker_classes is None else list(u.worker_classes)
        return cls(
            id=u.id,
            name=u.name,
            role=u.role,
            commands_allowed=u.commands_allowed,
            worker_classes=classes_,
            disabled=u.disabled,
            created_at=u.created_at,
        )


class ApiKeyIn(Input):
    name: Annotated[str, StringConstraints(max_length=200), AfterValidator(clean_text)] = "default"


class ApiKey(BaseModel):
    """An API key's record; the key itself is never shown again."""

    id: int
    name: str
    prefix: str
    created_at: Time
    last_used_at: Time | None

    @classmethod
    def from_key(cls, k: auth.ApiKey) -> ApiKey:
        return cls(**{n: getattr(k, n) for n in cls.model_fields})


class ApiKeyCreated(BaseModel):
    """A new API key. ``key`` is shown this once: store it now."""

    id: int
    name: str
    key: str
    prefix: str
    created_at: Time


# -- statistics ---------------------------------------------------------------------------


class WorkerStats(BaseModel):
    id: int
    name: str
    state: str
    max_jobs: int
    active_jobs: int
    jobs: dict[str, int] = Field(description="Jobs it ran or runs, by state.")


class Slots(BaseModel):
    total: int
    used: int
    free: int


class MinuteCount(BaseModel):
    minute: Time
    count: int


class Stats(BaseModel):
    """Jobs per state, per worker, and finished per minute over the last hour."""

    jobs: dict[str, int]
    workers: list[WorkerStats]
    slots: Slots
    finished_per_minute: list[MinuteCount]

    @classmethod
    def from_summary(cls, s: stats.Summary) -> Stats:
        return cls(
            jobs=s.jobs,
            workers=[WorkerStats(**vars(w)) for w in s.workers],
            slots=Slots(total=s.slots.total, used=s.slots.used, free=s.slots.free),
            finished_per_minute=[MinuteCount(minute=m, count=n) for m, n in s.finished_per_minute],
        )


# -- legacy -------------------------------------------------------------------------------


class LegacyJob(BaseModel):
    """The body of the original Job Balancer's ``/addJob`` (ids and numbers may be strings)."""

    command: str | None = None
    scriptId: int | str | None = None  # the original's names
    params: list[str | int | float] | None = None
    watchdog: float | str | None = None
    workerClassId: int | str | None = Field(None, description="1 is the `default` class.")
    need_realtime: bool | int | str | None = None
    userName: str | None = Field(None, description="Accepted and ignored: the key says who.")
    apiKey: str | None = Field(None, description="Or the usual Authorization header.")


class LegacyResult(BaseModel):
    result: bool
    message: str
    jobId: int | None = None

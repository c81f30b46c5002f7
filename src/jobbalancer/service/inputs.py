"""The requests every face accepts, validated: the JSON API's bodies (their docstrings and
field descriptions are what ``/docs`` shows), which the web forms and the CLI are read as.

Requests reject unknown fields (a typo should not be silently ignored) and any text a
database could not store (NUL characters, lone surrogates), naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from jobbalancer import auth, classes, cron, jobs, procsec, refs, resources
from jobbalancer.chains import MAX_PARENTS
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


# Linux's PATH_MAX: no longer path can be a working directory.
MAX_WORKDIR_BYTES = 4096


def _workdir(value: str) -> str:
    # Checked only for its form: whether it exists is the worker's to say (docs/api.md).
    clean_text(value)
    if not value.startswith("/"):
        raise ValueError("must be an absolute path (starting with '/')")
    if len(value.encode()) > MAX_WORKDIR_BYTES:
        raise ValueError(f"must be at most {MAX_WORKDIR_BYTES} bytes (the OS's PATH_MAX)")
    return value


def _env(value: dict[str, str]) -> dict[str, str]:
    for key, item in value.items():
        if not _ENV_NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        if len(key.encode()) + len(item.encode()) + 1 > ARG_MAX_BYTES:
            raise ValueError(f"{key} must be at most 128 KiB: the OS refuses longer entries")
    problem = procsec.at_start_problem(value)  # as a worker would refuse to start it
    if problem is not None:
        raise ValueError(problem)
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


def _memory(value: Any) -> int | None:
    return None if value is None else resources.parse_memory(value)


def _constraints(value: Any) -> dict[str, str | bool] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError('must be an object such as {"ffmpeg": "6", "ssd": true}')
    for key in value:
        if not isinstance(key, str):
            raise ValueError("label names must be strings")
        clean_text(key)
    for item in value.values():
        if isinstance(item, str):
            clean_text(item)
    # {} stays {}: "no constraints", which a class's or script's default does not replace.
    return resources.check_constraints(value)


Memory = Annotated[int | None, PlainValidator(_memory, json_schema_input_type=str | int | None)]
Constraints = Annotated[
    dict[str, str | bool] | None,
    PlainValidator(_constraints, json_schema_input_type=dict[str, str | bool] | None),
]
NameOrId = Annotated[str | int, PlainValidator(_name_or_id, json_schema_input_type=str | int)]
Param = Annotated[str, PlainValidator(_param, json_schema_input_type=str | int | float)]
Command = Annotated[str, AfterValidator(clean_text), AfterValidator(_fits_argv)]
Env = Annotated[dict[Text, Text], AfterValidator(_env)]
Labels = Annotated[dict[Text, Text], AfterValidator(_labels)]
Workdir = Annotated[str, AfterValidator(_workdir)]


def _param_value(value: Any) -> Any:
    # A value given by name: its type is the declaration's to check (scriptparams).
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _fits_argv(clean_text(value))
    raise ValueError("must be a string, a number, true/false or null")


ParamName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ParamValue = Annotated[
    str | int | float | bool | None,
    PlainValidator(_param_value, json_schema_input_type=str | int | float | bool | None),
]
# The two forms of ``params``, told apart by the value's own type so an error names the
# form's own field (``params.1``, ``params.crf``); field_name drops these tags, which no
# field or parameter name can be.
_BY_POSITION, _BY_NAME = "(list)", "(object)"
Params = Annotated[
    Annotated[list[Param], Field(max_length=10_000), Tag(_BY_POSITION)]
    | Annotated[dict[ParamName, ParamValue], Field(max_length=100), Tag(_BY_NAME)],
    Discriminator(lambda v: _BY_NAME if isinstance(v, dict) else _BY_POSITION),
]


def _not_null(cls: Any, value: Any) -> Any:
    # On the optional fields of a patch: leaving a field out keeps it, null is refused.
    if value is None:
        raise ValueError("must not be null")
    return value


class Input(BaseModel):
    """A request body: unknown fields are refused, so a typo is an error, not a no-op."""

    model_config = ConfigDict(extra="forbid")


# -- jobs ---------------------------------------------------------------------------------


class NotifyRule(Input):
    """A job's own notification rule: when it reaches one of ``on``, tell ``target``."""

    on: list[Annotated[str, StringConstraints(max_length=20)]] = Field(
        min_length=1,
        max_length=10,
        description="States: done, failed, timeout, killed, lost, occupied, skipped, started.",
        examples=[["failed", "timeout"]],
    )
    target: NameOrId = Field(description="A notification target an admin made, by name or id.")


def _bare_id(value: Any) -> Any:
    # A bare id is the short form of {"job": ID} (on success).
    if isinstance(value, int) and not isinstance(value, bool):
        return {"job": value}
    return value


class AfterIn(Input):
    """A job this one waits for: ``job`` (an id) or, in a batch, ``ref`` (the index of an
    earlier job of the same batch), and how it must end."""

    job: int | None = Field(None, ge=1, le=MAX_ID, description="The parent's id.")
    ref: int | None = Field(
        None, ge=0, le=999, description="In a batch: the index of an earlier job of the batch."
    )
    on: Literal["success", "failure", "any"] = Field(
        "success",
        description="success: the parent ended `done`; failure: `failed`, `timeout`, `lost` "
        "or `occupied`; any: whatever its end (also `killed` or `skipped`).",
    )

    @model_validator(mode="after")
    def _one_parent(self) -> AfterIn:
        if (self.job is None) == (self.ref is None):
            raise ValueError("give exactly one of 'job' or 'ref'")
        return self


After = Annotated[AfterIn, BeforeValidator(_bare_id, json_schema_input_type=AfterIn | int)]


# -- starting later, retrying later -------------------------------------------------------

MAX_DELAY = jobs.MAX_DELAY  # a year, in seconds
RETRY_ON_STATES = tuple(s.value for s in jobs.RETRY_ENDS)


def _not_before(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            "must have a time zone offset (2026-12-24T18:00:00+01:00, or Z for UTC): a time "
            "without one could mean any of them"
        )
    try:
        if value - datetime.now(UTC) > timedelta(seconds=MAX_DELAY):
            raise ValueError("must be at most a year from now")
        return value.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset that leaves the calendar
        raise ValueError("is out of range") from None


def _retry_end(value: Any) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= 255:
            return value
        raise ValueError("an exit code must be 1 to 255")
    if isinstance(value, str) and value in RETRY_ON_STATES:
        return value
    raise ValueError(f"must be one of {', '.join(RETRY_ON_STATES)} or an exit code (1 to 255)")


def _distinct(value: list[str | int]) -> list[str | int]:
    return list(dict.fromkeys(value))


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float | None:
    """``"10m"`` → 600.0 (units s, m, h, d; none: seconds); None if it is not one."""
    match = _DURATION.fullmatch(text.strip().lower())
    return None if match is None else float(match[1]) * _UNITS[match[2]]


NotBefore = Annotated[datetime, AfterValidator(_not_before)]
RetryEnd = Annotated[str | int, PlainValidator(_retry_end, json_schema_input_type=str | int)]


def _secret_env(value: dict[str, str]) -> dict[str, str]:
    for key, name in value.items():
        if not _ENV_NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        if not 1 <= len(name.strip()) <= 200:
            raise ValueError(f"{key}: name a secret (1 to 200 characters)")
    return {key: name.strip() for key, name in value.items()}


SecretEnv = Annotated[dict[Text, Text], Field(max_length=100), AfterValidator(_secret_env)]


class JobSubmitSecrets(BaseModel):
    """Secrets a job names (jobbalancer/vault.py); mixed into :class:`JobSubmit`."""

    secret_env: SecretEnv = Field(
        default_factory=dict,
        description='Environment variables set from named secrets: `{"PGPASSWORD": "prod-db"}`. '
        "The worker decrypts them just before the start; the values never show in the job, "
        "and in its output they are `****`.",
        examples=[{"PGPASSWORD": "prod-db"}],
    )


class JobSubmit(JobSubmitSecrets, Input):
    """A job to run: exactly one of ``command`` or ``script``."""

    command: Command | None = Field(
        None, description="Shell command, run as `/bin/sh -c COMMAND`.", examples=["sleep 5"]
    )
    script: NameOrId | None = Field(None, description="A stored script, by name or id.")
    params: Params = Field(
        default_factory=list,
        description="Arguments passed as separate argv entries (to a script; to a command as "
        "`$1`…), never pasted into a shell string. Numbers are turned into strings. For a "
        'script that declares parameters, also by name: `{"input": "a.mp4", "crf": 23}`; '
        "either way they are checked against the declaration and passed in declared order.",
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
    workdir: Workdir | None = Field(
        None,
        description="Absolute path of the directory on the worker to run in; it must exist "
        "there and be usable by the job's user, or the job fails saying why. null: a private "
        "temporary directory, removed when the job ends.",
        examples=["/srv/media"],
    )
    notify: list[NotifyRule] = Field(
        default_factory=list,
        max_length=20,
        description="Notify targets when the job reaches these states.",
    )
    after: list[After] = Field(
        default_factory=list,
        max_length=MAX_PARENTS,
        description='Jobs to wait for: `{"job": ID, "on": "success"}` (or a bare id: '
        "success). The job is `held` until each has ended for good, then runs; `skipped` if "
        "one ended in a way it did not want.",
    )
    not_before: NotBefore | None = Field(
        None,
        description="Do not start before this time (RFC 3339 with an offset, at most a year "
        "ahead); the job is `delayed` until then. A time already past runs at once. Not "
        "with `delay`, nor with `need_realtime`.",
        examples=["2026-12-24T18:00:00+01:00"],
    )
    delay: float | None = Field(
        None,
        ge=0,
        le=MAX_DELAY,
        allow_inf_nan=False,
        description="Do not start for this many seconds (at most a year); the job is "
        "`delayed` until then. Not with `not_before`, nor with `need_realtime`.",
        examples=[600],
    )
    retry_delay: float | None = Field(
        None,
        ge=0,
        le=MAX_DELAY,
        allow_inf_nan=False,
        description="Seconds between the end of a failed attempt and its retry (the first "
        "one; see `retry_backoff`); the retry is `delayed` until then. null/0: at once.",
    )
    retry_backoff: float | None = Field(
        None,
        ge=1,
        le=100,
        allow_inf_nan=False,
        description="Each retry waits this many times longer than the one before (2: 30 s, "
        "60 s, 120 s …). null: 1 (always `retry_delay`).",
    )
    retry_max_delay: float | None = Field(
        None,
        ge=0,
        le=MAX_DELAY,
        allow_inf_nan=False,
        description="No retry waits longer than this many seconds (after the jitter).",
    )
    retry_jitter: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="A fraction (0 to 1): each wait is moved at random by up to ± this much "
        "of itself (0.1: 27 to 33 s for 30 s), so retries of many jobs do not come at once.",
    )
    retry_on: Annotated[list[RetryEnd], AfterValidator(_distinct)] | None = Field(
        None,
        min_length=1,
        max_length=50,
        description='Which ends are retried: any of "failed", "timeout", "lost", and exit '
        "codes (a `failed` end with that code: [75] retries exit 75 only). null: "
        '["failed", "lost"].',
        examples=[["timeout", 75]],
    )
    # Placement (docs/api.md, "Placement").
    cpus: float | None = Field(
        None,
        ge=0,
        le=resources.MAX_CPUS,
        description="CPUs it needs (may be fractional: 0.5); enforced as cpu.max where the "
        "worker makes job cgroups. null: none asked for (the job needs one slot).",
        examples=[2],
    )
    memory: Memory = Field(
        None,
        description='Memory it needs: bytes, or a size with a binary unit: "512M", "2G" '
        "(K, M, G, T = powers of 1024; MB, MiB, Mi mean the same). Enforced as memory.max "
        "(no swap) where the worker makes job cgroups: past it the job fails 'out of memory'.",
        examples=["512M"],
    )
    gpus: int | None = Field(
        None,
        ge=0,
        le=resources.MAX_GPUS,
        description="GPUs it needs; the worker gives it CUDA_VISIBLE_DEVICES of its own.",
    )
    constraints: Constraints = Field(
        None,
        description='Worker labels it needs: {"ffmpeg": "6"} (equals), {"os": "!windows"} '
        '(missing or another value), {"ssd": true} (exists), {"old": false} (does not exist).',
        examples=[{"ffmpeg": "6", "ssd": True}],
    )


class JobBatch(Input):
    """Up to 1000 jobs, submitted together: all are accepted, or none."""

    jobs: list[JobSubmit] = Field(min_length=1, max_length=1000)


class Requests(Input):
    """What a class's or a script's jobs request unless they say (docs/api.md,
    "Placement"): the same fields, meaning and checks as a job's."""

    cpus: float | None = Field(None, ge=0, le=resources.MAX_CPUS)
    memory: Memory = None
    gpus: int | None = Field(None, ge=0, le=resources.MAX_GPUS)
    constraints: Constraints = None

    def stored(self) -> dict[str, Any] | None:
        """As kept in the database: only what is asked for; None for nothing."""
        return {k: v for k, v in self.model_dump().items() if v} or None


# -- workers, classes, scripts ------------------------------------------------------------


class WorkerPatch(Input):
    """Change a worker: send only what changes."""

    max_jobs: int | None = Field(
        None, ge=1, le=classes.MAX_JOBS_LIMIT, description="null: use the class's max_jobs."
    )
    worker_class: NameOrId | None = None
    enabled: bool | None = Field(None, description="false: takes no new jobs, finishes its own.")

    _no_nulls = field_validator("worker_class", "enabled", mode="before")(_not_null)


class WorkerClassIn(Input):
    """A new worker class."""

    name: Name
    max_jobs: int = Field(5, ge=1, le=classes.MAX_JOBS_LIMIT, description="Per worker, by default.")
    description: Description = ""
    requests: Requests | None = Field(
        None, description="What its jobs request unless they say (cpus, memory, gpus, constraints)."
    )


class WorkerClassPatch(Input):
    """Change a worker class: send only what changes."""

    name: Name | None = None
    max_jobs: int | None = Field(None, ge=1, le=classes.MAX_JOBS_LIMIT)
    description: Description | None = None
    requests: Requests | None = Field(None, description="null: none.")

    _no_nulls = field_validator("name", "max_jobs", "description", mode="before")(_not_null)


PARAMETERS_HELP = (
    "The typed parameters the script takes, in argv order: submissions may then give "
    '`params` by name, checked against these rules (docs/api.md, "Typed parameters").'
)


class ParameterIn(Input):
    """One parameter a script declares (checked further by the server: the default fits
    the rules, the regex compiles, names are unique)."""

    name: Annotated[str, StringConstraints(max_length=64)] = Field(examples=["crf"])
    type: Literal["string", "int", "float", "bool", "choice", "secret"] = "string"
    required: bool = False
    default: str | int | float | bool | None = None
    regex: Annotated[str, StringConstraints(max_length=1000)] | None = Field(
        None, description="string: RE2 syntax, matched against the whole value."
    )
    min: int | float | None = Field(None, description="int and float: the least value.")
    max: int | float | None = Field(None, description="int and float: the greatest value.")
    values: list[str | int | float] | None = Field(
        None, max_length=200, description="choice: the values to choose from."
    )
    help: Annotated[str, StringConstraints(max_length=1000)] = ""

    def declared(self) -> dict[str, Any]:
        """As scripts.create takes it: the keys given."""
        return self.model_dump(exclude_unset=True)


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
    parameters: list[ParameterIn] | None = Field(None, max_length=100, description=PARAMETERS_HELP)
    requests: Requests | None = Field(
        None, description="What its jobs request unless they say (cpus, memory, gpus, constraints)."
    )


class ScriptPatch(Input):
    """Change a script: send only what changes."""

    name: Name | None = None
    interpreter: Annotated[str, AfterValidator(clean_text)] | None = None
    content: Annotated[str, AfterValidator(clean_text)] | None = None
    description: Description | None = None
    parameters: list[ParameterIn] | None = Field(
        None, max_length=100, description=PARAMETERS_HELP + " `[]` removes them."
    )
    requests: Requests | None = Field(None, description="null: none.")

    _no_nulls = field_validator("name", "content", "description", "parameters", mode="before")(
        _not_null
    )


# -- notifications ------------------------------------------------------------------------

MAX_RECIPIENTS = 50
_EMAIL = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+")


def _http_url(value: str) -> str:
    clean_text(value)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if len(value) > 2000:
        raise ValueError("must be at most 2000 characters")
    if any(not "!" <= c <= "~" for c in value):
        raise ValueError(
            "must be printable ASCII without spaces (percent-encode the path, "
            "give a host in its xn-- form)"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ValueError("has no valid port (1-65535)")
    if parts.username is not None or parts.password is not None:
        # never sent (no Basic auth is made from it), and it would show on the page
        raise ValueError("must not hold a user or password (user:password@); use a secret")
    return value


def _recipients(value: list[str]) -> list[str]:
    for address in value:
        if not _EMAIL.fullmatch(address):
            raise ValueError(f"{address!r} is not a mail address")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
Recipients = Annotated[list[Text], Field(max_length=MAX_RECIPIENTS), AfterValidator(_recipients)]
Secret = Annotated[str, StringConstraints(max_length=500), AfterValidator(clean_text)]


class NotificationTargetIn(Input):
    """A new notification target (admins). ``secret`` is write-only: never shown again."""

    name: Name
    kind: Literal["webhook", "slack", "email"] = Field(examples=["webhook"])
    url: HttpUrl | None = Field(None, description="webhook and slack: where to POST.")
    secret: Secret | None = Field(
        None, description="webhook: signs each body (X-Jobbalancer-Signature, HMAC-SHA256)."
    )
    recipients: Recipients = Field(default_factory=list, description="email: mail addresses.")


class NotificationTargetPatch(Input):
    """Change a target: send only what changes (its kind stays; "" clears the secret)."""

    name: Name | None = None
    url: HttpUrl | None = None
    secret: Secret | None = None
    recipients: Recipients | None = None

    _no_nulls = field_validator("name", "url", "recipients", mode="before")(_not_null)


class NotificationRuleIn(Input):
    """An admin's rule: jobs of ``worker_class`` (null: every job) reaching ``on`` notify
    ``target``."""

    on: list[Annotated[str, StringConstraints(max_length=20)]] = Field(min_length=1, max_length=10)
    target: NameOrId
    worker_class: NameOrId | None = None


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

    _no_nulls = field_validator("name", "role", "commands_allowed", "disabled", mode="before")(
        _not_null
    )


class ApiKeyIn(Input):
    name: Annotated[str, StringConstraints(max_length=200), AfterValidator(clean_text)] = "default"
    # What the key may do (default: its user's role's), never more than the role allows.
    scope: Literal["read", "submit", "operate", "admin"] | None = None
    # When it stops working (UTC unless it says; default: never).
    expires_at: datetime | None = None


# -- schedules ----------------------------------------------------------------------------


def _cron(value: str) -> str:
    return cron.check(clean_text(value))


def _timezone(value: str) -> str:
    cron.zone(clean_text(value).strip())
    return value.strip()


Cron = Annotated[
    str,
    AfterValidator(_cron),
    Field(
        description="5 fields (minute hour day-of-month month day-of-week), an alias "
        "(@hourly, @daily, @weekly, @monthly, @yearly), or 6 fields with seconds in front.",
        examples=["30 2 * * *"],
    ),
]
TimeZone = Annotated[
    str,
    AfterValidator(_timezone),
    Field(description="IANA time zone the expression is read in.", examples=["Europe/Berlin"]),
]
Overlap = Literal["allow", "skip", "queue", "replace"]
CatchUp = Literal["none", "latest", "all"]
_OVERLAP_HELP = (
    "While the previous run has not ended: allow (run anyway), skip (record a skip), queue "
    "(wait for it; at most one waits), replace (kill it, then run)."
)
_CATCH_UP_HELP = (
    "Occurrences missed while no server ran: none (skip them), latest (run the latest), "
    "all (run them, up to catch_up_max)."
)


class ScheduleIn(Input):
    """A new schedule: ``job`` (the body of POST /api/v1/jobs) submitted at the times of
    ``cron`` read in ``timezone``, as its creator."""

    name: Name
    description: Description = ""
    job: JobSubmit
    cron: Cron
    timezone: TimeZone = "UTC"
    enabled: bool = True
    overlap: Overlap = Field("skip", description=_OVERLAP_HELP)
    catch_up: CatchUp = Field("latest", description=_CATCH_UP_HELP)
    catch_up_max: int = Field(10, ge=1, le=1000, description="catch_up all: at most this many.")
    start_at: pydantic.AwareDatetime | None = Field(None, description="No occurrence before.")
    end_at: pydantic.AwareDatetime | None = Field(None, description="No occurrence after.")


class SchedulePatch(Input):
    """Change a schedule: send only what changes (null clears start_at or end_at)."""

    name: Name | None = None
    description: Description | None = None
    job: JobSubmit | None = None
    cron: Cron | None = None
    timezone: TimeZone | None = None
    enabled: bool | None = None
    overlap: Overlap | None = None
    catch_up: CatchUp | None = None
    catch_up_max: int | None = Field(None, ge=1, le=1000)
    start_at: pydantic.AwareDatetime | None = None
    end_at: pydantic.AwareDatetime | None = None

    _no_nulls = field_validator(
        "name", "description", "job", "cron", "timezone", "enabled", "overlap", "catch_up",
        "catch_up_max", mode="before",
    )(_not_null)  # fmt: skip


class SchedulePreview(Input):
    """The next fire times of an expression, without saving anything."""

    cron: Cron
    timezone: TimeZone = "UTC"
    count: int = Field(5, ge=1, le=100)
    start_at: pydantic.AwareDatetime | None = None
    end_at: pydantic.AwareDatetime | None = None


# -- naming the field of a validation error -----------------------------------------------

# Where FastAPI says an input came from; not part of the field's name.
_SOURCES = ("body", "query", "path", "header", "cookie")


def field_name(loc: Sequence[int | str]) -> str:
    """``("body", "jobs", 3, "params", 1)`` → ``"jobs.3.params.1"``."""
    parts = [p for p in loc if p not in (_BY_POSITION, _BY_NAME)]
    if parts and parts[0] in _SOURCES:
        parts = parts[1:]
    return ".".join(str(p) for p in parts)


def describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """The field and a message that names it, for one pydantic error."""
    field = field_name(error.get("loc", ()))
    kind = error.get("type", "")
    msg = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
    if kind == "missing":
        msg = "is required"
    elif kind == "extra_forbidden":
        return field, f"unknown field {field!r}"
    if not field:
        if kind in ("missing", "model_attributes_type", "dict_type"):
            return "", "the request body must be a JSON object (Content-Type: application/json)"
        return "", msg
    return field, f"{field}: {msg[0].lower()}{msg[1:]}" if msg else field


def first_message(exc: pydantic.ValidationError) -> str:
    """The message of ``exc``'s first error, naming its field (what a form shows)."""
    return describe(exc.errors()[0])[1]


# -- secrets ------------------------------------------------------------------------------

SecretValue = Annotated[str, Field(min_length=1, max_length=65536), AfterValidator(clean_text)]


class SecretIn(Input):
    """A new secret (admins). ``value`` is write-only: never shown again. ``worker_classes``
    and ``users`` (names or ids) limit where and by whom it may be used; null: no limit."""

    name: Name
    value: SecretValue = Field(repr=False)
    description: Description = ""
    worker_classes: list[NameOrId] | None = Field(
        None, max_length=1000, description="Worker classes whose jobs may use it; null: any."
    )
    users: list[NameOrId] | None = Field(
        None,
        max_length=10_000,
        description="Users whose jobs may use it (admins too); null: anyone who submits.",
    )


class SecretPut(Input):
    """A secret's whole new content (``PUT``: what is left out is reset to its default)."""

    value: SecretValue = Field(repr=False)
    description: Description = ""
    worker_classes: list[NameOrId] | None = Field(None, max_length=1000)
    users: list[NameOrId] | None = Field(None, max_length=10_000)


class SecretPatch(Input):
    """Change a secret: send only what changes (its name stays)."""

    value: SecretValue | None = Field(None, repr=False)
    description: Description | None = None
    worker_classes: list[NameOrId] | None = Field(None, max_length=1000)
    users: list[NameOrId] | None = Field(None, max_length=10_000)

    _no_nulls = field_validator("value", "description", mode="before")(_not_null)

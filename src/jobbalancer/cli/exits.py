"""The command's exit codes, and the one place an error becomes a message and a code.

Exit codes are part of the command's contract (scripts test them), so they are public and
re-exported as ``jobbalancer.cli.RET_*``. Which error gets which code is a table, looked up
along the error's class hierarchy: the most specific entry wins.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from rich.markup import escape

from jobbalancer import db, errors
from jobbalancer.cli import formatting
from jobbalancer.settings import ENV_PREFIX as ENV

if TYPE_CHECKING:
    from jobbalancer import client

RET_OK = 0
RET_ERROR = 1  # anything else; the message says what
RET_USAGE = 2  # bad options or input (also what the server rejects as invalid)
RET_CONNECT = 3  # the server cannot be reached
RET_CONFIG = 4  # bad configuration (file, variables, flags), or a port in use
RET_ROOT = 5  # a worker refused to run jobs as root
RET_CHILD = 6  # `up`: the server or a worker stopped unexpectedly
RET_AUTH = 7  # no or wrong API key (401), or a role that does not allow it (403)
RET_NOT_FOUND = 8  # no such job, user, key …
RET_CONFLICT = 9  # the object is not in a state that allows this
RET_DATABASE = 10  # the database cannot be reached
# The database schema is not this version's (older: the server or `jobbalancer db upgrade`
# upgrades it; newer: upgrade jobbalancer here).
RET_SCHEMA = 11
RET_TEMPFAIL = 75  # a job was lost, or rejected as occupied: try again (EX_TEMPFAIL)
RET_JOB_TIMEOUT = 124  # the job's watchdog fired (as timeout(1))
RET_INTERRUPTED = 130  # Ctrl-C while following or waiting; the job goes on
RET_JOB_KILLED = 137  # the job was killed (128 + SIGKILL, as a shell reports it)

# The HTTP client (httpx) is imported only once a command meets an error: `jobbalancer
# worker` never uses it, and keeps it out of its memory.


def reported() -> tuple[type[Exception], ...]:
    """What becomes a message and an exit code rather than a traceback."""
    from jobbalancer import client

    return (errors.JobBalancerError, client.ClientError, *db.UNAVAILABLE)


@functools.cache
def _by_error() -> Mapping[type[Exception], int]:
    """Errors of our own, of the client and of the database driver, by class. A class not
    here is looked up by its bases (errors.RootRefused is a ConfigError, but found first)."""
    from jobbalancer import client

    return {
        errors.RootRefused: RET_ROOT,
        errors.ConfigError: RET_CONFIG,
        errors.NotFound: RET_NOT_FOUND,
        errors.Conflict: RET_CONFLICT,
        errors.InvalidInput: RET_USAGE,
        errors.BadRequest: RET_USAGE,
        errors.Unauthorized: RET_AUTH,
        errors.Forbidden: RET_AUTH,
        errors.SchemaMismatch: RET_SCHEMA,
        errors.DatabaseRefused: RET_AUTH,
        client.ConnectionFailed: RET_CONNECT,
        **dict.fromkeys(db.UNAVAILABLE, RET_DATABASE),
    }


# The server's answers, by HTTP status.
_BY_STATUS: Mapping[int, int] = {
    400: RET_USAGE,
    401: RET_AUTH,
    403: RET_AUTH,
    404: RET_NOT_FOUND,
    409: RET_CONFLICT,
    422: RET_USAGE,
    503: RET_DATABASE,
}


def report(exc: Exception, database_url: str | None = None) -> int:
    """Print what went wrong and what to do about it; the exit code.
    ``database_url`` (password hidden) is named when the database is the trouble."""
    code, message = describe(exc, database_url)
    formatting.err().print(f"[bold red]error:[/] {escape(message)}")
    return code


def describe(exc: Exception, database_url: str | None = None) -> tuple[int, str]:
    """The exit code for ``exc``, and a message that says what to do next."""
    from jobbalancer import client

    if isinstance(exc, client.ApiError):
        return _describe_answer(exc)
    by_error = _by_error()
    code = next((by_error[t] for t in type(exc).__mro__ if t in by_error), RET_ERROR)
    if isinstance(exc, errors.JobBalancerError):
        message = errors.with_field(exc.message, exc.field)
    elif isinstance(exc, sa.exc.SQLAlchemyError):
        message = f"cannot use the database: {getattr(exc, 'orig', exc)}"
    else:
        message = str(exc)
    if code == RET_CONNECT:
        return code, _connect_hint(message)
    if code == RET_DATABASE:
        return code, _database_hint(message, database_url)
    return code, message


def _describe_answer(exc: client.ApiError) -> tuple[int, str]:
    """An error the server answered with."""
    message = errors.with_field(exc.message, exc.field)
    if exc.code == "occupied":
        return RET_TEMPFAIL, _occupied_hint(exc.job or {})
    code = _BY_STATUS.get(exc.status)
    if code is None:
        return RET_ERROR, f"the server answered {exc.status}: {message}. See the server's log."
    if exc.status == 401:
        message += (
            f". Pass an API key with --api-key or {ENV}API_KEY; an admin makes one with "
            "`jobbalancer keys create NAME --user USER`."
        )
    elif exc.status == 403:
        message += ". Ask an admin for a role that allows this."
    elif exc.status == 503:
        message += ". The server cannot reach its database; try again."
    return code, message


def _connect_hint(message: str) -> str:
    return (
        f"{message}. Is the server running? Start it with `jobbalancer server` (or "
        f"`jobbalancer up`), or point --url / {ENV}URL at it."
    )


def _database_hint(message: str, database_url: str | None) -> str:
    shown = f" at {database_url}" if database_url else ""
    return (
        f"{message}. Is the database{shown} running and reachable? Check --database-url / "
        f"{ENV}DATABASE_URL."
    )


def _occupied_hint(job: dict[str, Any]) -> str:
    kept = f" (kept as job {job['id']}, state occupied)" if "id" in job else ""
    return (
        f"no worker had a free slot{kept}: try again later, or submit without --realtime "
        "to let it wait for one"
    )


def job_exit_code(job: Mapping[str, Any]) -> int:
    """The exit code that stands for how a job ended, as a shell would give it."""
    state, code, sig = job.get("state"), job.get("exit_code"), job.get("signal")
    if state == "done":
        return int(code or 0)
    if state == "failed":
        if code:
            return int(code) & 0xFF or 1
        return 128 + int(sig) if sig else RET_ERROR
    if state == "timeout":
        return RET_JOB_TIMEOUT
    if state == "killed":
        return RET_JOB_KILLED
    if state == "skipped":  # it never ran: a parent ended as it did not want
        return RET_ERROR
    return RET_TEMPFAIL  # lost, occupied

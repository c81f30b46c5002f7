"""The ``jobbalancer`` command: run the server and workers, manage users, submit jobs.

Every option can also be set by an environment variable (``--help`` names it). Errors
end in one place, which prints what to do next and exits with one of the ``RET_*`` codes
(:mod:`~jobbalancer.cli.exits`; they are part of the command's contract).

Where things are: ``base`` (the command tree, shared options, settings), ``exits``,
``formatting``, ``up`` and ``children`` (`up` and its child processes), ``run`` (server,
worker), ``admin`` (db, users, keys: straight on the database), ``submit`` and
``remote`` (client commands, through a server's API), ``parallel`` and ``fanout``
(one job per input).
"""

from __future__ import annotations

# Importing the command modules registers their commands on ``app``, in the order
# ``--help`` lists them: `up` first, the way most people start.
from jobbalancer.cli import up  # noqa: F401

# isort: split
from jobbalancer.cli import run  # noqa: F401

# isort: split
from jobbalancer.cli import admin, notify, remote, submit  # noqa: F401

# isort: split
from jobbalancer.cli import parallel  # noqa: F401
from jobbalancer.cli.base import app
from jobbalancer.cli.exits import (
    RET_AUTH,
    RET_CHILD,
    RET_CONFIG,
    RET_CONFLICT,
    RET_CONNECT,
    RET_DATABASE,
    RET_ERROR,
    RET_INTERRUPTED,
    RET_JOB_KILLED,
    RET_JOB_TIMEOUT,
    RET_NOT_FOUND,
    RET_OK,
    RET_ROOT,
    RET_SCHEMA,
    RET_TEMPFAIL,
    RET_USAGE,
    job_exit_code,
)

__all__ = [
    "RET_AUTH",
    "RET_CHILD",
    "RET_CONFIG",
    "RET_CONFLICT",
    "RET_CONNECT",
    "RET_DATABASE",
    "RET_ERROR",
    "RET_INTERRUPTED",
    "RET_JOB_KILLED",
    "RET_JOB_TIMEOUT",
    "RET_NOT_FOUND",
    "RET_OK",
    "RET_ROOT",
    "RET_SCHEMA",
    "RET_TEMPFAIL",
    "RET_USAGE",
    "app",
    "job_exit_code",
    "main",
]


def main() -> None:
    """The ``jobbalancer`` entry point."""
    app()

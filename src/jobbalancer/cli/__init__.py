"""The ``jobbalancer`` command: run the server and workers, manage users, submit jobs.

Every option can also be set by an environment variable (``--help`` names it). Errors
end in one place, which prints what to do next and exits with one of the ``RET_*`` codes
(:mod:`~jobbalancer.cli.exits`; they are part of the command's contract).

Where things are: ``base`` (the command tree, shared options, settings), ``exits``,
``formatting``, ``up`` and ``children`` (`up` and its child processes), ``run`` (server,
worker), ``admin`` (db, users, keys: straight on the database), ``submit`` and
``remote`` (client commands, through a server's API), ``parallel`` and ``fanout``
(one job per input), ``audit`` (the audit log, through the API).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from jobbalancer.cli import base
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

# The command modules, in the order ``--help`` lists their commands: `up` first, the way
# most people start. Importing one registers its commands on ``app``.
_COMMANDS = (
    "up", "run", "admin", "notify", "secrets", "submit", "remote", "parallel", "scripts",
    "schedules", "audit",
)  # fmt: skip


def _load_commands(names: tuple[str, ...] = _COMMANDS) -> None:
    for name in names:
        importlib.import_module(f"jobbalancer.cli.{name}")
    # In --help's order whichever module was imported first (a test may import one).
    order = {f"jobbalancer.cli.{name}": i for i, name in enumerate(_COMMANDS)}
    base.app.registered_commands.sort(
        key=lambda c: order.get(getattr(c.callback, "__module__", ""), len(order))
    )


def __getattr__(name: str) -> Any:
    """``app``, every command on it: the command modules are imported on first use, so
    that ``jobbalancer worker`` can go without them (see :func:`main`)."""
    if name == "app":
        _load_commands()
        globals()["app"] = base.app
        return base.app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "app",  # see __getattr__
    "job_exit_code",
    "main",
]


def main() -> None:
    """The ``jobbalancer`` entry point.

    ``jobbalancer worker`` loads its own command only: a worker runs for months, and what
    the other commands import (the HTTP client, password hashing, the admin services)
    would sit in its memory all that time.
    """
    _load_commands(("run",) if sys.argv[1:2] == ["worker"] else _COMMANDS)
    base.app()

"""The ``jobbalancer`` command: run the server and workers, manage users, submit jobs.

Every option can also be set by an environment variable (``--help`` names it). Options
that are settings use the settings' own variables (``JOBBALANCER_<SECTION>_<KEY>``).
Errors end in one place (:func:`_report`), which prints what to do next and exits with
one of the ``RET_*`` codes below.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import httpx
import sqlalchemy as sa
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from jobbalancer import __version__, auth, db, errors, procsec
from jobbalancer import client as client_mod
from jobbalancer import settings as settings_mod
from jobbalancer.settings import Settings

# -- exit codes ----------------------------------------------------------------------------

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
RET_TEMPFAIL = 75  # a job was lost, or rejected as occupied: try again (EX_TEMPFAIL)
RET_JOB_TIMEOUT = 124  # the job's watchdog fired (as timeout(1))
RET_INTERRUPTED = 130  # Ctrl-C while following or waiting; the job goes on
RET_JOB_KILLED = 137  # the job was killed (128 + SIGKILL, as a shell reports it)

DEFAULT_URL = "http://127.0.0.1:8080"
ENV = "JOBBALANCER_"
_HEALTH_WAIT = 60.0  # seconds `up` waits for its server to answer /healthz
_STOP_GRACE = 15.0  # seconds `up` gives a child to stop before insisting
_SIGNAL_DEBOUNCE = 1.0  # seconds within which a repeated stop signal counts once


# -- the command tree, and the one place errors become messages and exit codes ------------


# What becomes a message and an exit code rather than a traceback.
_REPORTED: tuple[type[Exception], ...] = (
    errors.JobBalancerError,
    client_mod.ClientError,
    *db.UNAVAILABLE,
)


class _Group(TyperGroup):
    def invoke(self, ctx: Any) -> Any:  # Any: typer's vendored click Context
        try:
            return super().invoke(ctx)
        except _REPORTED as exc:
            raise typer.Exit(_report(exc, ctx)) from None


app = typer.Typer(
    cls=_Group,
    name="jobbalancer",
    help="Spread shell commands and stored scripts over a cluster of worker machines.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Users (straight on the database).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (straight on the database).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")


def main() -> None:
    """The ``jobbalancer`` entry point."""
    app()


def _report(exc: Exception, ctx: typer.Context | None = None) -> int:
    """Print what went wrong and what to do about it; the exit code."""
    code, message = _describe(exc, ctx)
    _err().print(f"[bold red]error:[/] {escape(message)}")
    return code


def _describe(exc: Exception, ctx: typer.Context | None) -> tuple[int, str]:
    if isinstance(exc, client_mod.ConnectionFailed):
        return RET_CONNECT, (
            f"{exc}. Is the server running? Start it with `jobbalancer server` (or "
            f"`jobbalancer up`), or point --url / {ENV}URL at it."
        )
    if isinstance(exc, client_mod.ApiError):
        return _describe_api_error(exc)
    if isinstance(exc, client_mod.ClientError):
        return RET_ERROR, str(exc)
    if isinstance(exc, db.UNAVAILABLE) and not isinstance(exc, errors.JobBalancerError):
        return RET_DATABASE, _database_hint(
            f"cannot use the database: {getattr(exc, 'orig', exc)}", ctx
        )
    assert isinstance(exc, errors.JobBalancerError)
    return _describe_error(exc, ctx)


def _describe_api_error(exc: client_mod.ApiError) -> tuple[int, str]:
    message = errors.with_field(exc.message, exc.field)
    if exc.status == 401:
        return RET_AUTH, (
            f"{message}. Pass an API key with --api-key or {ENV}API_KEY; an admin makes "
            "one with `jobbalancer keys create USER`."
        )
    if exc.status == 403:
        return RET_AUTH, f"{message}. Ask an admin for a role that allows this."
    if exc.code == "occupied":
        job = exc.job or {}
        kept = f" (kept as job {job['id']}, state occupied)" if "id" in job else ""
        return RET_TEMPFAIL, (
            f"no worker had a free slot{kept}: try again later, or submit without --realtime "
            "to let it wait for one"
        )
    by_status = {404: RET_NOT_FOUND, 409: RET_CONFLICT, 400: RET_USAGE, 422: RET_USAGE}
    if exc.status in by_status:
        return by_status[exc.status], message
    if exc.status == 503:
        return RET_DATABASE, f"{message}. The server cannot reach its database; try again."
    return RET_ERROR, f"the server answered {exc.status}: {message}. See the server's log."


def _describe_error(exc: errors.JobBalancerError, ctx: typer.Context | None) -> tuple[int, str]:
    message = errors.with_field(exc.message, exc.field)
    if isinstance(exc, errors.RootRefused):
        return RET_ROOT, message
    if isinstance(exc, errors.ConfigError):
        return RET_CONFIG, message
    if isinstance(exc, errors.DatabaseUnavailable):
        return RET_DATABASE, _database_hint(message, ctx)
    if isinstance(exc, errors.NotFound):
        return RET_NOT_FOUND, message
    if isinstance(exc, errors.Conflict):
        return RET_CONFLICT, message
    if isinstance(exc, errors.InvalidInput | errors.BadRequest):
        return RET_USAGE, message
    if isinstance(exc, errors.Unauthorized | errors.Forbidden):
        return RET_AUTH, message
    return RET_ERROR, message


def _database_hint(message: str, ctx: typer.Context | None) -> str:
    url = ctx.meta.get("jobbalancer.database_url") if ctx else None
    shown = f" at {url}" if url else ""
    return (
        f"{message}. Is the database{shown} running and reachable? Check --database-url / "
        f"{ENV}DATABASE_URL."
    )


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(code: int, message: str) -> NoReturn:
    _err().print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


# -- options shared by several commands ---------------------------------------------------


def _opt(*names: str, env: str, help: str, **kwargs: Any) -> Any:
    """An option that ``JOBBALANCER_<env>`` sets too; ``--help`` names the variable."""
    return typer.Option(*names, envvar=ENV + env, help=help, show_envvar=True, **kwargs)


ConfigOpt = Annotated[
    Path | None,
    _opt(
        "--config",
        env="CONFIG",
        help="Settings file (TOML). Default: ./jobbalancer.toml when it exists.",
    ),
]
DatabaseUrlOpt = Annotated[
    str | None,
    _opt(
        "--database-url",
        env="DATABASE_URL",
        help="SQLAlchemy URL of the shared database. Default: SQLite in the data dir. "
        "A password here is visible to every local user: use the variable or "
        "--database-url-file instead.",
    ),
]
DatabaseUrlFileOpt = Annotated[
    str | None,
    _opt(
        "--database-url-file",
        env="DATABASE_URL_FILE",
        help="File (mode 0600) holding the database URL: keeps its password off command lines.",
    ),
]
DataDirOpt = Annotated[
    str | None,
    _opt(
        "--data-dir",
        env="DATA_DIR",
        help=f"Where the SQLite database lives. Default: ./{settings_mod.DEFAULT_DATA_DIR}.",
    ),
]
HostOpt = Annotated[
    str | None,
    _opt(
        "--host",
        env="SERVER_HOST",
        help="Address to serve on (0.0.0.0: every interface). Default: 127.0.0.1.",
    ),
]
LogLevelOpt = Annotated[
    str | None,
    _opt("--log-level", env="LOG_LEVEL", help="debug, info, warning or error. Default: info."),
]
UrlOpt = Annotated[
    str,
    _opt("--url", env="URL", help="Base URL of the jobbalancer server."),
]
ApiKeyOpt = Annotated[
    str | None,
    _opt(
        "--api-key",
        env="API_KEY",
        help="API key (printed on first start, or `jobbalancer keys create USER`).",
    ),
]
TimeoutOpt = Annotated[
    float,
    _opt("--timeout", env="TIMEOUT", min=0.1, help="Seconds any one request may take."),
]
JsonOpt = Annotated[
    bool,
    _opt("--json", env="JSON", help="Print JSON instead of a table."),
]


class LogStream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    ALL = "all"


JobIdArg = Annotated[int, typer.Argument(help="The job's id.", min=1, show_default=False)]
PasswordStdinOpt = Annotated[
    bool,
    _opt(
        "--password-stdin",
        env="PASSWORD_STDIN",
        help="Read the password from standard input instead of generating one.",
    ),
]


def _load_settings(ctx: typer.Context, config: Path | None, **overrides: Any) -> Settings:
    """Settings from file, environment and flags; remembers the database URL for messages.

    Every command that opens the database comes through here: it warns about a password
    given on the command line, and makes the SQLite data dir private (0700).
    """
    _warn_password_flag(ctx)
    overrides.setdefault("database.url_file", ctx.params.get("database_url_file"))
    loaded = settings_mod.load(config, **overrides)
    ctx.meta["jobbalancer.database_url"] = _safe_url(loaded.database_url)
    data_dir = loaded.private_data_dir
    if data_dir is not None and (repaired := procsec.make_private_dir(data_dir)):
        logging.getLogger(__name__).warning(
            "made the data dir private to its user (others could read it): %s", repaired
        )
    return loaded


def _warn_password_flag(ctx: typer.Context) -> None:
    """One line on stderr when --database-url carries a password: every local user can
    read a command line (/proc/PID/cmdline, ps)."""
    url = ctx.params.get("database_url")
    source = ctx.get_parameter_source("database_url")  # typer's own click's enum
    if not url or getattr(source, "name", None) != "COMMANDLINE":
        return
    if settings_mod.has_password(url):
        _err().print(
            "[yellow]warning:[/] the password in --database-url is visible to every local "
            "user in /proc/PID/cmdline; give the URL by "
            f"{ENV}DATABASE_URL, --database-url-file (mode 0600) or the config file "
            "(mode 0600) instead"
        )


def _safe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return db.normalize_url(url).render_as_string(hide_password=True)
    except errors.ConfigError:
        return url


@contextlib.contextmanager
def _database(
    ctx: typer.Context,
    config: Path | None,
    database_url: str | None,
    data_dir: str | None,
    *,
    upgrade: bool = True,
) -> Iterator[sa.Engine]:
    """An engine on the configured database, with the schema brought up to date."""
    loaded = _load_settings(ctx, config, data_dir=data_dir, **{"database.url": database_url})
    engine = db.connect(loaded.database_url, pool_size=2)
    try:
        if upgrade:
            db.upgrade(engine)
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def _client(url: str, api_key: str | None, timeout: float) -> Iterator[client_mod.Client]:
    with client_mod.Client(url, api_key, timeout) as c:
        yield c


def _setup_logging(level_name: str) -> None:
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        raise errors.ConfigError(
            f"log level {level_name!r} is not one of debug, info, warning, error",
            field="log_level",
        )
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if level > logging.DEBUG:  # every process upgrades the schema at start: no need to say so
        logging.getLogger("alembic").setLevel(logging.WARNING)


# -- running: up, server, worker ----------------------------------------------------------


@app.command()
def up(
    ctx: typer.Context,
    workers: Annotated[
        int,
        _opt("--workers", env="UP_WORKERS", min=0, max=256, help="Local workers to start."),
    ] = 2,
    port: Annotated[
        int | None,
        _opt(
            "--port", env="SERVER_PORT", min=1, max=65535, help="Port to serve on. Default: 8080."
        ),
    ] = None,
    host: HostOpt = None,
    data_dir: DataDirOpt = None,
    run_as: Annotated[
        str | None,
        _opt(
            "--run-as",
            env="WORKER_RUN_AS",
            help="Run jobs as this user, or 'dynamic': each job a uid of its own (when "
            "started as root). Default under root: dynamic.",
        ),
    ] = None,
    allow_root: Annotated[
        bool,
        _opt("--allow-root", env="WORKER_ALLOW_ROOT", help="Let jobs run as root."),
    ] = False,
    config: ConfigOpt = None,
    database_url: DatabaseUrlOpt = None,
    database_url_file: DatabaseUrlFileOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Start everything on this machine: the server and local workers, on SQLite.

    Creates the database and the first admin if needed, prints the URL and (on the first
    start) the admin's credentials. Ctrl-C stops it: workers finish their running jobs
    first; press Ctrl-C again to kill them.
    """
    loaded = _load_settings(
        ctx,
        config,
        data_dir=data_dir,
        log_level=log_level,
        **{
            "database.url": database_url,
            "server.host": host,
            "server.port": port,
            "worker.run_as": run_as,
            "worker.allow_root": allow_root or None,
        },
    )
    plan = _UpPlan.make(loaded, workers, config)
    plan.check_privileges()
    procsec.make_undumpable()  # `up` holds the database URL, maybe in its environment
    first_admin = _prepare_database(loaded.database_url)
    code = _Supervisor(plan).run(lambda: _print_up_panel(plan, first_admin))
    raise typer.Exit(code)


@dataclass(frozen=True)
class _UpPlan:
    """What `up` starts: the settings, the children's command lines, and what to say."""

    settings: Settings
    workers: int
    config: Path | None
    run_as: str
    default_run_as: bool  # root without --run-as/--allow-root: each job a uid of its own

    @classmethod
    def make(cls, loaded: Settings, workers: int, config: Path | None) -> _UpPlan:
        ws = loaded.worker
        dynamic = os.geteuid() == 0 and not ws.run_as and not ws.allow_root
        run_as = "dynamic" if dynamic else ws.run_as
        return cls(loaded, workers, config, run_as, dynamic)

    @property
    def scheme(self) -> str:
        tls = self.settings.server.tls_cert and self.settings.server.tls_key
        return "https" if tls else "http"

    @property
    def url(self) -> str:
        """Where to reach the server from this machine."""
        host = self.settings.server.host
        local = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}  # noqa: S104
        shown = local.get(host, f"[{host}]" if ":" in host else host)
        return f"{self.scheme}://{shown}:{self.settings.server.port}"

    def check_privileges(self) -> None:
        from jobbalancer.worker.loop import check_privileges

        check_privileges(self.settings.worker.model_copy(update={"run_as": self.run_as}))

    def common_args(self) -> list[str]:
        # No database URL here: a command line is world-readable (/proc/PID/cmdline).
        # It goes by the children's environment (child_env), which only they may read.
        args = ["--data-dir", self.settings.data_dir, "--log-level", self.settings.log_level]
        return args + (["--config", str(self.config)] if self.config else [])

    def child_env(self) -> dict[str, str]:
        """The environment of the server and workers: ours, plus the database URL as
        resolved here (from a flag, a variable, a file or the config), and no URL file
        to read (a config file naming one must not make it two ways)."""
        env = dict(os.environ)
        env[ENV + "DATABASE_URL"] = self.settings.database_url
        env[ENV + "DATABASE_URL_FILE"] = ""
        return env

    def server_argv(self) -> list[str]:
        server = self.settings.server
        argv = ["server", "--host", server.host, "--port", str(server.port), *self.common_args()]
        # `up` is the all-in-one for one box, and as root its jobs already run under uids
        # of their own (or as told): starting it as root is the documented way, so its
        # server may too.
        return argv + (["--allow-root"] if os.geteuid() == 0 else [])

    def worker_names(self) -> list[str]:
        host = socket.gethostname().split(".")[0] or "worker"
        return [f"{host}-{i}" for i in range(1, self.workers + 1)]

    def worker_argv(self, name: str) -> list[str]:
        argv = ["worker", "--name", name, *self.common_args()]
        if self.run_as:
            argv += ["--run-as", self.run_as]
        if self.settings.worker.allow_root:
            argv.append("--allow-root")
        return argv


def _prepare_database(url: str) -> tuple[auth.User, str, str] | None:
    """Schema up to date and, on an empty user table, the first admin: before anything
    starts, so the server finds the admin there and the credentials are shown once, here."""
    engine = db.connect(url, pool_size=1)
    try:
        db.upgrade(engine)
        with db.write(engine) as conn:
            return auth.ensure_first_admin(conn)
    finally:
        engine.dispose()


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    is_worker: bool

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def describe_exit(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"


class _ChildFailed(Exception):
    def __init__(self, child: _Child, when: str) -> None:
        super().__init__(f"the {child.name} {child.describe_exit()} {when}")


@dataclass
class _Supervisor:
    """Runs `up`'s children, forwards Ctrl-C/SIGTERM to them, and notices deaths."""

    plan: _UpPlan
    children: list[_Child] = field(default_factory=list)
    signals: int = 0  # how many stop signals arrived
    last_signal: float = -_SIGNAL_DEBOUNCE

    def run(self, announce: Callable[[], None]) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run(announce)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self, announce: Callable[[], None]) -> int:
        try:
            server = self._spawn("server", self.plan.server_argv(), is_worker=False)
            self._wait_healthy(server)
            for name in self.plan.worker_names():
                self._spawn(f"worker {name}", self.plan.worker_argv(name), is_worker=True)
        except _ChildFailed as exc:
            return self._abort(f"{exc}; see its messages above")
        if self.signals:
            self._stop(insist_after=None)
            return RET_OK
        announce()
        return self._watch()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # One keypress or `kill` can arrive twice (a wrapper that signals its whole process
        # group, a service manager); only a later one means "insist".
        now = time.monotonic()
        if now - self.last_signal >= _SIGNAL_DEBOUNCE:
            self.signals += 1
            self.last_signal = now

    def _spawn(self, name: str, args: Sequence[str], *, is_worker: bool) -> _Child:
        argv = [sys.executable, "-m", "jobbalancer", *args]
        # Own process group: Ctrl-C reaches only `up`, which forwards it once, in order.
        process = subprocess.Popen(  # noqa: S603
            argv,
            stdin=subprocess.DEVNULL,
            env=self.plan.child_env(),
            process_group=0,
            preexec_fn=_die_with_parent,
        )
        child = _Child(name, process, is_worker)
        self.children.append(child)
        return child

    def _wait_healthy(self, server: _Child) -> None:
        deadline = time.monotonic() + _HEALTH_WAIT
        url = f"{self.plan.url}/healthz"
        while time.monotonic() < deadline and not self.signals:
            if not server.running:
                raise _ChildFailed(server, "while starting")
            if _answers(url):
                return
            time.sleep(0.1)
        if not self.signals:
            server.signal(signal.SIGTERM)
            server.process.wait()
            raise _ChildFailed(server, f"after {url} did not answer for {_HEALTH_WAIT:g} s")

    def _watch(self) -> int:
        """Until a stop signal (then stop in order) or a child's unexpected death."""
        while not self.signals:
            for child in self.children:
                if not child.running:
                    return self._abort(f"the {child.name} {child.describe_exit()} unexpectedly")
            time.sleep(0.2)
        _err().print(
            "[yellow]stopping:[/] workers finish their running jobs first. "
            "Press Ctrl-C again to kill the jobs and stop now."
        )
        self._stop(insist_after=None)
        return RET_OK

    def _abort(self, message: str) -> int:
        """A child died: say which, stop the rest, exit non-zero."""
        others = " Stopping the others." if any(c.running for c in self.children) else ""
        _err().print(f"[bold red]error:[/] {escape(message)}.{others}")
        self._stop(insist_after=_STOP_GRACE)
        return RET_CHILD

    def _stop(self, *, insist_after: float | None) -> None:
        """Workers first (they drain), then the server. Each further stop signal insists
        (kill the jobs, then kill everything); so does ``insist_after`` seconds passing."""
        level, seen = 1, self.signals
        self._escalate(level)
        next_insist = None if insist_after is None else time.monotonic() + insist_after
        server_told = False
        while any(c.running for c in self.children):
            overdue = next_insist is not None and time.monotonic() >= next_insist
            if self.signals > seen or overdue:
                level, seen = level + 1, self.signals
                self._escalate(level)
                if insist_after is not None:
                    next_insist = time.monotonic() + insist_after
            if not server_told and not any(c.running for c in self.children if c.is_worker):
                self._signal_all(signal.SIGTERM, workers=False)
                server_told = True
            time.sleep(0.1)

    def _escalate(self, level: int) -> None:
        if level == 1:
            self._signal_all(signal.SIGTERM, workers=True)
        elif level == 2:
            _err().print("[yellow]stopping now:[/] killing running jobs.")
            self._signal_all(signal.SIGTERM, workers=True)
            self._signal_all(signal.SIGTERM, workers=False)
        else:
            _err().print("[yellow]still not stopped: killing every process.[/]")
            self._signal_all(signal.SIGKILL, workers=True)
            self._signal_all(signal.SIGKILL, workers=False)

    def _signal_all(self, sig: int, *, workers: bool) -> None:
        for child in self.children:
            if child.is_worker == workers:
                child.signal(sig)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if `up` itself dies (Linux), no orphans."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _answers(url: str) -> bool:
    try:
        # Our own server on this machine, maybe with a self-signed certificate.
        response = httpx.get(url, timeout=1.0, verify=False)  # noqa: S501
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _print_up_panel(plan: _UpPlan, first_admin: tuple[auth.User, str, str] | None) -> None:
    out = _out()
    lines = [_row("Web UI", plan.url), _row("API docs", f"{plan.url}/docs")]
    names = plan.worker_names()
    lines.append(_row("Workers", f"{len(names)}: {', '.join(names) or 'none'}"))
    if plan.run_as == "dynamic":
        lines.append(_row("Jobs run as", "a uid of their own each (--run-as USER to pick one)"))
    elif os.geteuid() == 0 and not plan.run_as:
        lines.append("[bold red]Jobs run as root (--allow-root): they can reach everything[/]")
    elif plan.run_as:
        lines.append(_row("Jobs run as", escape(plan.run_as)))
    lines.append(_row("Database", escape(_safe_url(plan.settings.database_url))))
    if first_admin is None:
        lines += ["", *_later_start_lines(plan)]
    else:
        user, password, key = first_admin
        lines += [
            "",
            "[bold green]First start: an admin was created. Save these now; "
            "they are not shown again.[/]",
            _row("User", escape(user.name)),
            _row("Password", escape(password)),
            _row("API key", escape(key)),
        ]
    lines += ["", "Stop with Ctrl-C (workers finish their running jobs first)."]
    out.print(Panel("\n".join(lines), title="jobbalancer is running", expand=False))
    if first_admin is not None:
        _print_try_it(plan.url, first_admin[2])


def _row(label: str, value: str) -> str:
    return f"[bold]{label:<11}[/] {value}"


def _later_start_lines(plan: _UpPlan) -> list[str]:
    where = _where_flags(plan.settings)
    return [
        "The admin's password and API key were printed on the first start.",
        f"Lost them? [bold]jobbalancer users reset-password admin{escape(where)}[/] and",
        f"[bold]jobbalancer keys create admin{escape(where)}[/]",
    ]


def _where_flags(loaded: Settings) -> str:
    """The flags that point another command at the same database as this one."""
    if loaded.database.url:
        return " --database-url-file FILE"
    if loaded.data_dir != settings_mod.DEFAULT_DATA_DIR:
        return f" --data-dir {shlex.quote(loaded.data_dir)}"
    return ""


def _print_try_it(url: str, key: str) -> None:
    # Outside the panel and unwrapped, so a terminal copy pastes as one working command.
    body = json.dumps({"command": "echo hello from jobbalancer"})
    print("Try it:")
    print(
        f'  curl -H "Authorization: Bearer {key}" -H "Content-Type: application/json" '
        f"-d {shlex.quote(body)} {url}/api/v1/jobs"
    )
    print(f"  export {ENV}API_KEY={key}; jobbalancer submit --follow -- echo hello", flush=True)


@app.command()
def server(
    ctx: typer.Context,
    host: HostOpt = None,
    port: Annotated[
        int | None,
        _opt(
            "--port", env="SERVER_PORT", min=0, max=65535, help="Port to serve on. Default: 8080."
        ),
    ] = None,
    tls_cert: Annotated[
        str | None,
        _opt(
            "--tls-cert",
            env="SERVER_TLS_CERT",
            help="TLS certificate (PEM); with --tls-key, serve HTTPS.",
        ),
    ] = None,
    tls_key: Annotated[
        str | None,
        _opt("--tls-key", env="SERVER_TLS_KEY", help="TLS private key (PEM)."),
    ] = None,
    access_log: Annotated[
        bool,
        _opt("--access-log", env="ACCESS_LOG", help="Log every request."),
    ] = False,
    allow_root: Annotated[
        bool,
        _opt(
            "--allow-root",
            env="SERVER_ALLOW_ROOT",
            help="Serve as root. Refused without this: run the server as an unprivileged user.",
        ),
    ] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    database_url: DatabaseUrlOpt = None,
    database_url_file: DatabaseUrlFileOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Serve the API and web UI, and balance jobs over the workers.

    Upgrades the database schema and, on an empty user table, creates an admin and prints
    its credentials once. Several servers may share one database. SIGTERM stops it
    gracefully.
    """
    from jobbalancer.server import run_server

    loaded = _load_settings(
        ctx,
        config,
        data_dir=data_dir,
        log_level=log_level,
        **{
            "database.url": database_url,
            "server.host": host,
            "server.port": port,
            "server.tls_cert": tls_cert,
            "server.tls_key": tls_key,
            "server.allow_root": allow_root or None,
        },
    )
    check_server_privileges(allow_root=loaded.server.allow_root)
    _setup_logging(loaded.log_level)
    run_server(loaded, access_log=access_log)


def check_server_privileges(*, allow_root: bool) -> None:
    """The server runs no jobs, so it never needs root; a hole in it would give root away."""
    if os.geteuid() == 0 and not allow_root:
        raise errors.RootRefused(
            "refusing to run the server as root: start it as an unprivileged user "
            "(it needs no privileges), or pass --allow-root "
            f"({ENV}SERVER_ALLOW_ROOT=1) if you really mean it"
        )


@app.command()
def worker(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        _opt(
            "--name",
            env="WORKER_NAME",
            help="This worker's name; the same name is the same worker. Default: host name.",
        ),
    ] = None,
    worker_class: Annotated[
        str | None,
        _opt(
            "--class",
            env="WORKER_WORKER_CLASS",
            help="Worker class whose jobs it runs. Default: default.",
        ),
    ] = None,
    max_jobs: Annotated[
        int | None,
        _opt(
            "--max-jobs",
            env="WORKER_MAX_JOBS",
            min=1,
            help="Jobs at once. Default: its class's max_jobs.",
        ),
    ] = None,
    run_as: Annotated[
        str | None,
        _opt(
            "--run-as",
            env="WORKER_RUN_AS",
            help="Run jobs as this unprivileged user, or 'dynamic': each job a uid of its "
            "own (the worker runs as root).",
        ),
    ] = None,
    dynamic_uids: Annotated[
        str | None,
        _opt(
            "--dynamic-uids",
            env="WORKER_DYNAMIC_UIDS",
            help="The uids (and gids) --run-as dynamic hands out, FIRST-LAST. "
            "Default: 70000-79999.",
        ),
    ] = None,
    job_path: Annotated[
        str | None,
        _opt(
            "--job-path",
            env="WORKER_JOB_PATH",
            help="The PATH jobs get and their interpreters are looked up on. "
            "Default: /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin.",
        ),
    ] = None,
    allow_root: Annotated[
        bool,
        _opt(
            "--allow-root",
            env="WORKER_ALLOW_ROOT",
            help="Run jobs as root. Refused without this when the worker runs as root.",
        ),
    ] = False,
    cgroups: Annotated[
        bool | None,
        _opt(
            "--cgroups/--no-cgroups",
            env="WORKER_CGROUPS",
            help="Give each job a cgroup of its own where the host allows. Default: on.",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    database_url: DatabaseUrlOpt = None,
    database_url_file: DatabaseUrlFileOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Run jobs the server assigns to this machine, until stopped.

    SIGTERM or Ctrl-C drains: no new jobs, running ones finish, then it exits. A second
    signal kills the running jobs (recorded as killed) and exits.
    """
    from jobbalancer.worker.loop import Worker, check_privileges

    loaded = _load_settings(
        ctx,
        config,
        data_dir=data_dir,
        log_level=log_level,
        **{
            "database.url": database_url,
            "worker.name": name,
            "worker.worker_class": worker_class,
            "worker.max_jobs": max_jobs,
            "worker.run_as": run_as,
            "worker.dynamic_uids": dynamic_uids,
            "worker.job_path": job_path,
            "worker.allow_root": allow_root or None,
            "worker.cgroups": cgroups,
        },
    )
    check_privileges(loaded.worker)
    _setup_logging(loaded.log_level)
    raise typer.Exit(Worker(loaded).run())


# -- db -----------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    config: ConfigOpt = None,
    database_url: DatabaseUrlOpt = None,
    database_url_file: DatabaseUrlFileOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create or upgrade the database schema to this version's (safe to repeat)."""
    with _database(ctx, config, database_url, data_dir) as engine:
        revision = db.current_revision(engine)
        where = engine.url.render_as_string(hide_password=True)
    _out().print(f"database {escape(where)} is at revision {revision}")


@db_app.command("current")
def db_current(
    ctx: typer.Context,
    config: ConfigOpt = None,
    database_url: DatabaseUrlOpt = None,
    database_url_file: DatabaseUrlFileOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Print the schema revision of the database, and whether an upgrade is due."""
    with _database(ctx, config, database_url, data_dir, upgrade=False) as engine:
        revision = db.current_revision(engine)
    head = _head_revision()
    if revision is None:
        note = "no schema yet: run `jobbalancer db upgrade`"
    elif revision == head:
        note = "up to date"
    else:
        note = f"this version expects {head}: run `jobbalancer db upgrade`"
    _out().print(f"{revision or 'none'} ({note})")


def _head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(db.MIGRATIONS)).get_current_head()


# -- users and keys -----------------------------------------------------------------------


@users_app.command("create")
def users_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The new user's name.", show_default=False)],
    role: Annotated[
        str,
        _opt(
            "--role",
            env="USER_ROLE",
            help="admin, operator (submit; manage any job), submitter (submit; own jobs), "
            "or viewer (read-only).",
        ),
    ],
    password_stdin: PasswordStdinOpt = False,
    scripts_only: Annotated[
        bool,
        _opt(
            "--scripts-only",
            env="USER_SCRIPTS_ONLY",
            help="May submit stored scripts only, no raw commands.",
        ),
    ] = False,
    classes: Annotated[
        str | None,
        _opt(
            "--classes",
            env="USER_CLASSES",
            help="Comma-separated worker classes the user may use. Default: all.",
        ),
    ] = None,
    config: ConfigOpt = None,
    database_url: DatabaseUrlOpt = None,
    database_url_file: DatabaseUrlFileOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a user. Without --password-stdin a password is generated and printed as the
    last line of output, for `| tail -n 1`."""
    password = _read_password() if password_stdin else auth.generate_password()
    worker_classes = _split_classes(classes)
    with _database(ctx, config, database_url, data_dir) as engine, db.write(engine) as conn:
        user = auth.create_user(
            conn,
            name,
            role,
            password,
            commands_allowed=not scripts_only,
            worker_classes=worker_classes,
        )
    _out().print(f"created user {escape(user.name)} (id {user.id}, role {user.role})")
    if not password_stdin:
        _print_secret("password (shown once):", password)


@users_app.command("list")
def users_list(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseUrlOpt = None,
    database_url_file: DatabaseUrlFileOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """List the users with their roles and limits."""
    with _database(ctx, config, database_url, data_dir) as engine, db.read(engine) as conn:
        users = auth.list_users(conn)
    if as_json:
        _print_json([_user_dict(u) for u in users])
        return
    rows = [
        [
            str(u.id),
            escape(u.name),
            u.role.value,
            "yes" if u.commands_allowed else "scripts only",
            escape(", ".join(u.worker_classes)) if u.worker_classes is not None else "all",
            "yes" if u.disabled else "",
            _when(u.created_at),
        ]
        for u in users
    ]
    columns = ["id", "name", "role", "commands", "classes", "disabled", "created"]
    _print_table(columns, rows, flexible="classes")


@users_app.command("reset-password")
def users_reset_password(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user's name (or id).", show_default=False)],
    password_stdin: PasswordStdinOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseUrlOpt = None,
    database_url_file: DatabaseUrlFileOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Set a new password. Without --password-stdin one is generated and printed as the
    last line of output."""
    password = _read_password() if password_stdin else auth.generate_password()
    with _database(ctx, config, database_url, data_dir) as engine, db.write(engine) as conn:
        user = auth.find_user(conn, name)
        auth.update_user(conn, user.id, {"password": password})
    _out().print(f"new password set for {escape(user.name)}")
    if not password_stdin:
        _print_secret("password (shown once):", password)


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Whose key: user name or id.", show_default=False)],
    name: Annotated[
        str,
        _opt("--name", env="KEY_NAME", help="A label to tell keys apart."),
    ] = "default",
    config: ConfigOpt = None,
    database_url: DatabaseUrlOpt = None,
    database_url_file: DatabaseUrlFileOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create an API key for a user; the key is printed once, as the last line."""
    with _database(ctx, config, database_url, data_dir) as engine, db.write(engine) as conn:
        owner = auth.find_user(conn, user)
        record, key = auth.create_api_key(conn, owner.id, name)
    _out().print(f"created API key {record.id} ({escape(record.name)}) for {escape(owner.name)}")
    _print_secret("key (shown once):", key)


@keys_app.command("list")
def keys_list(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Whose keys: user name or id.", show_default=False)],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseUrlOpt = None,
    database_url_file: DatabaseUrlFileOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """List a user's API keys (their prefixes; keys themselves are never stored)."""
    with _database(ctx, config, database_url, data_dir) as engine, db.read(engine) as conn:
        owner = auth.find_user(conn, user)
        keys = auth.list_api_keys(conn, owner.id)
    if as_json:
        _print_json([_key_dict(k) for k in keys])
        return
    rows = [
        [str(k.id), escape(k.name), k.prefix, _when(k.created_at), _when(k.last_used_at)]
        for k in keys
    ]
    _print_table(["id", "name", "prefix", "created", "last used"], rows, flexible="name")


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="Whose key: user name or id.", show_default=False)],
    key_id: Annotated[int, typer.Argument(help="The key's id (see `keys list`).", min=1)],
    config: ConfigOpt = None,
    database_url: DatabaseUrlOpt = None,
    database_url_file: DatabaseUrlFileOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke an API key: requests with it are refused from now on."""
    with _database(ctx, config, database_url, data_dir) as engine, db.write(engine) as conn:
        owner = auth.find_user(conn, user)
        auth.revoke_api_key(conn, owner.id, key_id)
    _out().print(f"revoked API key {key_id} of {escape(owner.name)}")


def _read_password() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        _fail(RET_USAGE, "--password-stdin: no password on standard input")
    return password


def _split_classes(classes: str | None) -> list[str] | None:
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",") if c.strip()]
    if not names:
        _fail(RET_USAGE, "--classes: give at least one class name, e.g. --classes default,gpu")
    return names


def _print_secret(label: str, secret: str) -> None:
    """The label, then the secret alone on the last line of output."""
    _out().print(label)
    print(secret, flush=True)


def _user_dict(u: auth.User) -> dict[str, Any]:
    return {
        "id": u.id,
        "name": u.name,
        "role": u.role.value,
        "commands_allowed": u.commands_allowed,
        "worker_classes": None if u.worker_classes is None else list(u.worker_classes),
        "disabled": u.disabled,
        "created_at": _iso(u.created_at),
    }


def _key_dict(k: auth.ApiKey) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "created_at": _iso(k.created_at),
        "last_used_at": _iso(k.last_used_at),
    }


# -- client commands ----------------------------------------------------------------------


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    command: Annotated[
        list[str] | None,
        typer.Argument(
            help="The command, after --. One word is run as is by /bin/sh -c "
            "(quote pipes and redirections); several are joined with shell quoting.",
            show_default=False,
        ),
    ] = None,
    script: Annotated[
        str | None,
        _opt(
            "--script",
            env="SUBMIT_SCRIPT",
            help="Run this stored script (name or id) instead of a command.",
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        _opt(
            "--param",
            "-p",
            env="SUBMIT_PARAM",
            help="A parameter for --script, passed as one argument (repeat for more).",
        ),
    ] = None,
    watchdog: Annotated[
        float | None,
        _opt(
            "--watchdog",
            env="SUBMIT_WATCHDOG",
            min=0,
            help="Kill the job after this many seconds (its state becomes timeout).",
        ),
    ] = None,
    worker_class: Annotated[
        str | None,
        _opt("--class", env="SUBMIT_CLASS", help="Worker class to run on. Default: default."),
    ] = None,
    realtime: Annotated[
        bool,
        _opt(
            "--realtime",
            env="SUBMIT_REALTIME",
            help="Start now or not at all: rejected (exit 75) when no worker is free.",
        ),
    ] = False,
    priority: Annotated[
        int,
        _opt("--priority", env="SUBMIT_PRIORITY", help="Higher runs first."),
    ] = 0,
    retries: Annotated[
        int,
        _opt(
            "--retries",
            env="SUBMIT_RETRIES",
            min=0,
            help="Run again this many times if it fails or its worker vanishes.",
        ),
    ] = 0,
    env: Annotated[
        list[str] | None,
        _opt(
            "--env",
            "-e",
            env="SUBMIT_ENV",
            help="KEY=VALUE added to the job's environment (repeat for more).",
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        _opt(
            "--label",
            "-l",
            env="SUBMIT_LABEL",
            help="KEY=VALUE label to find the job by (repeat for more).",
        ),
    ] = None,
    wait: Annotated[
        bool,
        _opt(
            "--wait",
            "-w",
            env="SUBMIT_WAIT",
            help="Wait for the job and exit with its code (timeout 124, killed 137, lost 75).",
        ),
    ] = False,
    follow: Annotated[
        bool,
        _opt(
            "--follow",
            "-f",
            env="SUBMIT_FOLLOW",
            help="Stream the job's stdout and stderr here as it runs, then exit with its code.",
        ),
    ] = False,
    as_json: Annotated[
        bool,
        _opt("--json", env="JSON", help="Print the job as JSON, not its id."),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Submit a job: `jobbalancer submit [OPTIONS] -- CMD ARGS…` or `--script NAME -p P`.

    Prints the new job's id. With --wait or --follow, exits with the job's exit code.
    """
    spec = _submit_spec(command or [], script, param or [], env or [], label or [])
    with _client(url, api_key, timeout) as c:
        job = c.submit(
            **spec,
            watchdog=watchdog or None,
            worker_class=worker_class,
            need_realtime=realtime,
            priority=priority,
            retries=retries,
        )
        if follow:
            _err().print(f"[dim]job {job['id']} submitted[/]")
            raise typer.Exit(_follow(c, job["id"], "all", quiet_end=False))
        if not wait:
            _print_job_or_id(job, as_json)
            return
        if not as_json:
            print(job["id"], flush=True)
        final = _wait(c, job["id"])
    if as_json:
        _print_json(final)
    raise typer.Exit(_job_result(final))


def _submit_spec(
    words: Sequence[str],
    script: str | None,
    params: Sequence[str],
    env: list[str],
    labels: list[str],
) -> dict[str, Any]:
    if words and script:
        _fail(RET_USAGE, "give either a command (after --) or --script NAME, not both")
    if not words and not script:
        _fail(RET_USAGE, "nothing to run: give a command after --, or --script NAME")
    if params and not script:
        _fail(RET_USAGE, "--param goes with --script; for a command put arguments after --")
    spec: dict[str, Any] = {"env": _pairs("--env", env), "labels": _pairs("--label", labels)}
    if script:
        return spec | {"script": int(script) if script.isdigit() else script, "params": params}
    return spec | {"command": words[0] if len(words) == 1 else shlex.join(words)}


def _pairs(option: str, items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(RET_USAGE, f"{option} {item!r}: write it as KEY=VALUE")
        pairs[key] = value
    return pairs


def _print_job_or_id(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(job)
    else:
        print(job["id"], flush=True)


def _wait(c: client_mod.Client, job_id: int) -> dict[str, Any]:
    try:
        return c.wait(job_id)
    except KeyboardInterrupt:
        _fail(RET_INTERRUPTED, _left_running(job_id))


def _follow(
    c: client_mod.Client, job_id: int, stream: client_mod.Stream, *, quiet_end: bool
) -> int:
    """Copy the job's output to our stdout/stderr as it comes; its exit code."""
    final: dict[str, Any] = {}
    try:
        for kind, payload in c.follow(job_id, stream):
            if kind == "output":
                _write_output(payload, to_stderr=stream == "all")
            elif kind == "end":
                final = payload
    except KeyboardInterrupt:
        _fail(RET_INTERRUPTED, _left_running(job_id))
    if quiet_end:
        return RET_OK
    return _job_result(final or c.job(job_id))


def _write_output(payload: dict[str, Any], *, to_stderr: bool) -> None:
    """stderr output to our stderr (when showing both streams), the rest to stdout."""
    use_stderr = to_stderr and payload.get("stream") == "stderr"
    target = sys.stderr if use_stderr else sys.stdout
    target.write(str(payload.get("data", "")))
    target.flush()


def _left_running(job_id: int) -> str:
    return (
        f"stopped watching job {job_id}; it goes on. Watch again with "
        f"`jobbalancer logs -f {job_id}`, or stop it with `jobbalancer kill {job_id}`"
    )


def job_exit_code(job: dict[str, Any]) -> int:
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
    return RET_TEMPFAIL  # lost, occupied


def _job_result(job: dict[str, Any]) -> int:
    """Say how the job ended unless it went well; the exit code for it."""
    code = job_exit_code(job)
    if job.get("state") != "done":
        _err().print(f"[yellow]{escape(_ending(job))}[/]")
    return code


def _ending(job: dict[str, Any]) -> str:
    job_id, state = job.get("id"), job.get("state")
    detail = f": {job['error']}" if job.get("error") else ""
    if state == "failed":
        how = f"exit code {job['exit_code']}" if job.get("exit_code") is not None else "failed"
        return f"job {job_id} failed ({how}){detail}"
    if state == "occupied":
        return f"job {job_id} was rejected: no worker had a free slot. Try again later."
    if state == "lost":
        again = f"`jobbalancer restart {job_id}`"
        return f"job {job_id} was lost with its worker{detail}. Run it again: {again}"
    return f"job {job_id} ended {state}{detail}"


@app.command("jobs")
def jobs_list(
    state: Annotated[
        str | None,
        _opt(
            "--state",
            "-s",
            env="JOBS_STATE",
            help="Only jobs in these states, comma-separated (e.g. running,waiting).",
        ),
    ] = None,
    worker: Annotated[
        str | None,
        _opt("--worker", env="JOBS_WORKER", help="Only jobs of this worker."),
    ] = None,
    worker_class: Annotated[
        str | None,
        _opt("--class", env="JOBS_CLASS", help="Only jobs of this worker class."),
    ] = None,
    user: Annotated[
        str | None,
        _opt("--user", env="JOBS_USER", help="Only this user's jobs."),
    ] = None,
    query: Annotated[
        str | None,
        _opt(
            "-q",
            "--query",
            env="JOBS_QUERY",
            help="Only jobs whose command or script contains this text.",
        ),
    ] = None,
    limit: Annotated[
        int,
        _opt("--limit", "-n", env="JOBS_LIMIT", min=1, help="At most this many."),
    ] = 50,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """List jobs, newest first."""
    with _client(url, api_key, timeout) as c:
        found = list(
            c.jobs(
                state=state,
                worker=worker,
                worker_class=worker_class,
                user=user,
                q=query,
                limit=limit,
            )
        )
    if as_json:
        _print_json(found)
        return
    if not found:
        _out().print("no jobs match")
        return
    rows = [
        [
            str(job["id"]),
            _state(job["state"]),
            escape(str(job.get("user") or "")),
            escape(_name(job.get("worker"))),
            escape(_name(job.get("worker_class"))),
            escape(_what(job)),
            _when(job.get("created_at")),
            _took(job),
            "" if job.get("exit_code") is None else str(job["exit_code"]),
        ]
        for job in found
    ]
    columns = ["id", "state", "user", "worker", "class", "what", "created", "took", "exit"]
    _print_table(columns, rows, flexible="what")


@app.command()
def show(
    job_id: JobIdArg,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Show one job in full."""
    with _client(url, api_key, timeout) as c:
        job = c.job(job_id)
    if as_json:
        _print_json(job)
        return
    table = Table(box=box.SIMPLE, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in job.items():
        shown = _state(value) if key == "state" else escape(_value(value))
        if key == "env" and isinstance(value, dict) and value:
            shown = escape(_env_lines(value))
        table.add_row(key, shown)
    Console(highlight=False).print(table)


def _env_lines(env: dict[str, Any]) -> str:
    """One NAME=value a line; the server masks values that are not the caller's."""
    lines = [f"{k}={v}" for k, v in env.items()]
    if any(v == "****" for v in env.values()):
        lines.append("(values hidden: only the job's owner and admins see them)")
    return "\n".join(lines)


@app.command()
def logs(
    job_id: JobIdArg,
    follow: Annotated[
        bool,
        _opt("--follow", "-f", env="LOGS_FOLLOW", help="Keep printing as it runs."),
    ] = False,
    stream: Annotated[
        LogStream,
        _opt("--stream", env="LOGS_STREAM", help="stdout, stderr, or all (both, in order)."),
    ] = LogStream.ALL,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Print a job's output. With -f, keep printing as it is written (stderr to stderr)
    until the job ends."""
    chosen: client_mod.Stream = stream.value
    with _client(url, api_key, timeout) as c:
        if follow:
            _follow(c, job_id, chosen, quiet_end=True)
            return
        for piece in c.iter_log(job_id, chosen):
            sys.stdout.write(piece)
        sys.stdout.flush()


@app.command()
def kill(
    job_id: JobIdArg,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Kill a job: at once if it has not started, within seconds if it runs."""
    with _client(url, api_key, timeout) as c:
        job = c.kill(job_id)
    if job.get("state") == "killed":
        _out().print(f"job {job_id} killed")
    else:
        _out().print(f"job {job_id}: kill requested; its worker stops it within seconds")


@app.command()
def restart(
    job_id: JobIdArg,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Run a job again as a new job (its id is printed); the old one stays as it was."""
    with _client(url, api_key, timeout) as c:
        job = c.restart(job_id)
    print(job["id"], flush=True)


@app.command()
def delete(
    job_id: JobIdArg,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Delete a finished job and its output (kill a running one first)."""
    with _client(url, api_key, timeout) as c:
        c.delete(job_id)
    _out().print(f"job {job_id} deleted")


@app.command("workers")
def workers_list(
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """List the workers: state, class, jobs running, load."""
    with _client(url, api_key, timeout) as c:
        found = c.workers()
    if as_json:
        _print_json(found)
        return
    if not found:
        _out().print("no workers yet: start one with `jobbalancer worker`")
        return
    rows = [
        [
            str(w.get("id", "")),
            escape(str(w.get("name", ""))),
            _state(str(w.get("state", ""))),
            escape(_name(w.get("worker_class"))),
            f"{w.get('active_jobs', 0)}/{w.get('max_jobs', '?')}",
            _value(w.get("load")),
            _value(w.get("cpu_count")),
            _when(w.get("last_heartbeat_at")),
        ]
        for w in found
    ]
    columns = ["id", "name", "state", "class", "jobs", "load", "cpus", "heartbeat"]
    _print_table(columns, rows, flexible="name")


@app.command()
def version() -> None:
    """Print the version."""
    print(f"jobbalancer {__version__}")


# -- formatting ---------------------------------------------------------------------------

_STATE_STYLE = {
    "waiting": "cyan",
    "assigned": "cyan",
    "running": "bold blue",
    "done": "green",
    "failed": "red",
    "timeout": "red",
    "killed": "magenta",
    "lost": "yellow",
    "occupied": "yellow",
    "online": "green",
    "draining": "yellow",
    "offline": "dim",
    "disabled": "dim",
}


def _print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], flexible: str) -> None:
    """One row per line: every column as wide as its content, except ``flexible``, which
    gets what is left of the terminal and cuts long cells short with an ellipsis."""
    console = Console(highlight=False)
    widths = [
        max([len(column), *(Text.from_markup(row[i]).cell_len for row in rows)])
        for i, column in enumerate(columns)
    ]
    # Each column has a space of padding either side, and one between columns.
    fixed = sum(w + 3 for c, w in zip(columns, widths, strict=True) if c != flexible)
    room = max(len(flexible), console.width - fixed - 3)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column, width in zip(columns, widths, strict=True):
        if column == flexible:
            table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=room)
        else:
            table.add_column(column, no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _state(state: str) -> str:
    style = _STATE_STYLE.get(state, "")
    return f"[{style}]{escape(state)}[/]" if style else escape(state)


def _name(value: Any) -> str:
    """A {"id", "name"} reference, or a plain name."""
    if isinstance(value, dict):
        return str(value.get("name") or value.get("id") or "")
    return "" if value is None else str(value)


def _what(job: dict[str, Any]) -> str:
    """The command, or the script and its parameters, on one line."""
    if job.get("command"):
        text = str(job["command"])
    else:
        text = shlex.join([_name(job.get("script")), *map(str, job.get("params") or [])])
    return " ".join(text.split())


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _when(value: Any) -> str:
    """A time in the local zone, to the second (month-day hour:minute:second)."""
    parsed = _parse_time(value)
    return parsed.astimezone().strftime("%m-%d %H:%M:%S") if parsed else ""


def _iso(value: datetime | None) -> str | None:
    parsed = _parse_time(value)
    return parsed.isoformat().replace("+00:00", "Z") if parsed else None


def _took(job: dict[str, Any]) -> str:
    start = _parse_time(job.get("started_at"))
    if start is None:
        return ""
    end = _parse_time(job.get("finished_at")) or datetime.now(UTC)
    seconds = max(0.0, (end - start).total_seconds())
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict) and set(value) == {"id", "name"}:
        return f"{value['name']} (id {value['id']})"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str), flush=True)

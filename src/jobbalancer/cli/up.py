"""`jobbalancer up`: the server and local workers on this machine, in one command.

What it starts is an :class:`UpPlan`; :mod:`~jobbalancer.cli.children` runs it.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.panel import Panel

from jobbalancer import auth, db, procsec, vault
from jobbalancer import settings as settings_mod
from jobbalancer.cli import examples as scripts_examples
from jobbalancer.cli import formatting
from jobbalancer.cli.base import (
    ENV,
    HostOpt,
    LogLevelOpt,
    Target,
    app,
    database_options,
    opt,
    safe_url,
)
from jobbalancer.cli.children import Children
from jobbalancer.settings import Settings


@app.command()
@database_options
def up(
    target: Target,
    workers: Annotated[
        int,
        opt("--workers", env="UP_WORKERS", min=0, max=256, help="Local workers to start."),
    ] = 2,
    port: Annotated[
        int | None,
        opt("--port", env="SERVER_PORT", min=1, max=65535, help="Port to serve on. Default: 8080."),
    ] = None,
    host: HostOpt = None,
    run_as: Annotated[
        str | None,
        opt(
            "--run-as",
            env="WORKER_RUN_AS",
            help="Run jobs as this user, or 'dynamic': each job a uid of its own (when "
            "started as root). Default under root: dynamic.",
        ),
    ] = None,
    allow_root: Annotated[
        bool,
        opt("--allow-root", env="WORKER_ALLOW_ROOT", help="Let jobs run as root."),
    ] = False,
    log_level: LogLevelOpt = None,
    examples: Annotated[
        bool,
        opt(
            "--examples/--no-examples",
            env="UP_EXAMPLES",
            help="On a fresh database (when the first admin is created), add a few example "
            "scripts with typed parameters.",
        ),
    ] = True,
) -> None:
    """Start everything on this machine: the server and local workers, on SQLite.

    Creates the database and the first admin if needed (with a few example scripts, unless
    --no-examples), prints the URL and (on the first start) the admin's credentials.
    Ctrl-C stops it: workers finish their running jobs first; press Ctrl-C again to kill
    them.
    """
    loaded = target.settings(
        log_level=log_level,
        **{
            "server.host": host,
            "server.port": port,
            "worker.run_as": run_as,
            "worker.allow_root": allow_root or None,
        },
    )
    plan = UpPlan.make(loaded, workers, target.config, examples=examples)
    plan.check_privileges()
    procsec.make_undumpable()  # `up` holds the database URL, maybe in its environment
    first_admin = _prepare_database(loaded.database_url, examples=plan.examples)
    if not loaded.secret_key:  # made before the workers start: they read the same file
        vault.ensure_key_file("", loaded.secret_key_path)
    code = Children(plan).run(lambda: _print_up_panel(plan, first_admin))
    raise typer.Exit(code)


@dataclass(frozen=True)
class UpPlan:
    """What `up` starts: the settings, the children's command lines, and what to say."""

    settings: Settings
    workers: int
    config: Path | None
    run_as: str
    default_run_as: bool  # root without --run-as/--allow-root: each job a uid of its own
    examples: bool = True  # example scripts on a fresh database

    @classmethod
    def make(
        cls, loaded: Settings, workers: int, config: Path | None, *, examples: bool = True
    ) -> UpPlan:
        ws = loaded.worker
        dynamic = os.geteuid() == 0 and not ws.run_as and not ws.allow_root
        run_as = "dynamic" if dynamic else ws.run_as
        return cls(loaded, workers, config, run_as, dynamic, examples)

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
        return argv + self.share_argv(name)

    def share_argv(self, name: str) -> list[str]:
        """Several workers on one machine share it: each offers its part of the CPUs and
        memory it would detect (unless set), and the first one all the GPUs, so their
        requests together never count the machine twice."""
        if self.workers <= 1:
            return []
        from jobbalancer.worker import capacity

        ws, share = self.settings.worker, []
        if ws.cpus is None:
            share += ["--cpus", f"{capacity.detect_cpus() / self.workers:.2f}"]
        if ws.memory is None:
            share += ["--memory", str(capacity.detect_memory() // self.workers)]
        if ws.gpus is None and name != self.worker_names()[0]:
            share += ["--gpus", "0"]
        return share


def _prepare_database(url: str, *, examples: bool = True) -> tuple[auth.User, str, str] | None:
    """Schema up to date and, on an empty user table, the first admin: before anything
    starts, so the server finds the admin there and the credentials are shown once, here.

    The example scripts come with the first admin, in its transaction: a database is
    fresh when it has no user yet, so examples an admin deleted never come back, and a
    database that has users (made by `server` or `users create`) gets none."""
    engine = db.connect(url, pool_size=1)
    try:
        db.upgrade(engine)
        with db.write(engine) as conn:
            first = auth.ensure_first_admin(conn)
            if first is not None and examples:
                scripts_examples.add(conn)
            return first
    finally:
        engine.dispose()


# -- what `up` says once everything runs --------------------------------------------------


def _print_up_panel(plan: UpPlan, first_admin: tuple[auth.User, str, str] | None) -> None:
    lines = [_row("Web UI", plan.url), _row("API docs", f"{plan.url}/docs")]
    names = plan.worker_names()
    lines.append(_row("Workers", f"{len(names)}: {', '.join(names) or 'none'}"))
    lines += _runs_as_lines(plan)
    lines.append(_row("Database", escape(safe_url(plan.settings.database_url))))
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
    formatting.out().print(Panel("\n".join(lines), title="jobbalancer is running", expand=False))
    if first_admin is not None:
        _print_try_it(plan.url, first_admin[2], examples=plan.examples)


def _runs_as_lines(plan: UpPlan) -> list[str]:
    if plan.run_as == "dynamic":
        return [_row("Jobs run as", "a uid of their own each (--run-as USER to pick one)")]
    if os.geteuid() == 0 and not plan.run_as:
        return ["[bold red]Jobs run as root (--allow-root): they can reach everything[/]"]
    if plan.run_as:
        return [_row("Jobs run as", escape(plan.run_as))]
    return []


def _row(label: str, value: str) -> str:
    return f"[bold]{label:<11}[/] {value}"


def _later_start_lines(plan: UpPlan) -> list[str]:
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


def _print_try_it(url: str, key: str, *, examples: bool = False) -> None:
    # Outside the panel and unwrapped, so a terminal copy pastes as one working command.
    body = json.dumps({"command": "echo hello from jobbalancer"})
    print("Try it:")
    print(
        f'  curl -H "Authorization: Bearer {key}" -H "Content-Type: application/json" '
        f"-d {shlex.quote(body)} {url}/api/v1/jobs"
    )
    print(f"  export {ENV}API_KEY={key}; jobbalancer submit --follow -- echo hello", flush=True)
    if examples:
        print("Example scripts with typed parameters are on the Scripts page:")
        print("  jobbalancer scripts list; jobbalancer scripts show hello")
        print("  jobbalancer submit --script hello -p name=you -p count=3 --follow", flush=True)

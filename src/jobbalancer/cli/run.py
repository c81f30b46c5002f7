"""`jobbalancer server` and `jobbalancer worker`: the two long-running processes."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from jobbalancer import errors
from jobbalancer.cli.base import (
    ENV,
    HostOpt,
    LogLevelOpt,
    Target,
    app,
    database_options,
    opt,
    setup_logging,
)


@app.command()
@database_options
def server(
    target: Target,
    host: HostOpt = None,
    port: Annotated[
        int | None,
        opt("--port", env="SERVER_PORT", min=0, max=65535, help="Port to serve on. Default: 8080."),
    ] = None,
    tls_cert: Annotated[
        str | None,
        opt(
            "--tls-cert",
            env="SERVER_TLS_CERT",
            help="TLS certificate (PEM); with --tls-key, serve HTTPS.",
        ),
    ] = None,
    tls_key: Annotated[
        str | None,
        opt("--tls-key", env="SERVER_TLS_KEY", help="TLS private key (PEM)."),
    ] = None,
    access_log: Annotated[
        bool,
        opt("--access-log", env="ACCESS_LOG", help="Log every request."),
    ] = False,
    allow_root: Annotated[
        bool,
        opt(
            "--allow-root",
            env="SERVER_ALLOW_ROOT",
            help="Serve as root. Refused without this: run the server as an unprivileged user.",
        ),
    ] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Serve the API and web UI, and balance jobs over the workers.

    Upgrades the database schema and, on an empty user table, creates an admin and prints
    its credentials once. Several servers may share one database. SIGTERM stops it
    gracefully.
    """
    from jobbalancer.server import run_server

    loaded = target.settings(
        log_level=log_level,
        **{
            "server.host": host,
            "server.port": port,
            "server.tls_cert": tls_cert,
            "server.tls_key": tls_key,
            "server.allow_root": allow_root or None,
        },
    )
    check_server_privileges(allow_root=loaded.server.allow_root)
    setup_logging(loaded.log_level)
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
@database_options
def worker(
    target: Target,
    name: Annotated[
        str | None,
        opt(
            "--name",
            env="WORKER_NAME",
            help="This worker's name; the same name is the same worker. Default: the host "
            "name (host-<id> when another machine has it).",
        ),
    ] = None,
    id_file: Annotated[
        str | None,
        opt(
            "--id-file",
            env="WORKER_ID_FILE",
            help="The file keeping this machine's worker id (made at the first start). "
            "Default: <data dir>/worker-id.",
        ),
    ] = None,
    worker_class: Annotated[
        str | None,
        opt(
            "--class",
            env="WORKER_WORKER_CLASS",
            help="Worker class whose jobs it runs. Default: default.",
        ),
    ] = None,
    max_jobs: Annotated[
        int | None,
        opt(
            "--max-jobs",
            env="WORKER_MAX_JOBS",
            min=1,
            help="Jobs at once. Default: its class's max_jobs.",
        ),
    ] = None,
    run_as: Annotated[
        str | None,
        opt(
            "--run-as",
            env="WORKER_RUN_AS",
            help="Run jobs as this unprivileged user, or 'dynamic': each job a uid of its "
            "own (the worker runs as root).",
        ),
    ] = None,
    dynamic_uids: Annotated[
        str | None,
        opt(
            "--dynamic-uids",
            env="WORKER_DYNAMIC_UIDS",
            help="The uids (and gids) --run-as dynamic hands out, FIRST-LAST. "
            "Default: 70000-79999.",
        ),
    ] = None,
    job_path: Annotated[
        str | None,
        opt(
            "--job-path",
            env="WORKER_JOB_PATH",
            help="The PATH jobs get and their interpreters are looked up on. "
            "Default: /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin.",
        ),
    ] = None,
    allow_root: Annotated[
        bool,
        opt(
            "--allow-root",
            env="WORKER_ALLOW_ROOT",
            help="Run jobs as root. Refused without this when the worker runs as root.",
        ),
    ] = False,
    cgroups: Annotated[
        bool | None,
        opt(
            "--cgroups/--no-cgroups",
            env="WORKER_CGROUPS",
            help="Give each job a cgroup of its own where the host allows. Default: on.",
        ),
    ] = None,
    cpus: Annotated[
        float | None,
        opt(
            "--cpus",
            env="WORKER_CPUS",
            help="CPUs jobs may request here in all (fractional ok). Default: what it may "
            "use (affinity, cgroup cpu.max).",
        ),
    ] = None,
    memory: Annotated[
        str | None,
        opt(
            "--memory",
            env="WORKER_MEMORY",
            help="Memory jobs may request here in all: 16G, 512M. Default: the machine's, "
            "or its cgroup's memory.max if lower.",
        ),
    ] = None,
    gpus: Annotated[
        int | None,
        opt(
            "--gpus",
            env="WORKER_GPUS",
            min=0,
            help="GPUs jobs may request here. Default: those nvidia-smi -L lists (0 without).",
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        opt(
            "--label",
            env="WORKER_LABELS",
            help="A label jobs may ask for: name=value or a bare name; repeat for more "
            "(in the variable: separated by commas).",
        ),
    ] = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Run jobs the server assigns to this machine, until stopped.

    SIGTERM or Ctrl-C drains: no new jobs, running ones finish, then it exits. A second
    signal kills the running jobs (recorded as killed) and exits.
    """
    from jobbalancer.worker.loop import Worker, check_privileges

    loaded = target.settings(
        log_level=log_level,
        **{
            "worker.name": name,
            "worker.id_file": id_file,
            "worker.worker_class": worker_class,
            "worker.max_jobs": max_jobs,
            "worker.run_as": run_as,
            "worker.dynamic_uids": dynamic_uids,
            "worker.job_path": job_path,
            "worker.allow_root": allow_root or None,
            "worker.cgroups": cgroups,
            "worker.cpus": cpus,
            "worker.memory": memory,
            "worker.gpus": gpus,
            "worker.labels": _split_labels(label),
        },
    )
    check_privileges(loaded.worker)
    setup_logging(loaded.log_level)
    ws = loaded.worker.model_copy(update={"id_file": loaded.worker_id_file})
    raise typer.Exit(Worker(loaded.model_copy(update={"worker": ws})).run())


def _split_labels(given: list[str] | None) -> list[str] | None:
    """--label values; the variable gives them as one string, separated by commas."""
    if not given:
        return None
    return [part for value in given for part in value.split(",") if part.strip()]

"""Client commands other than `submit`: look at jobs and workers, and act on jobs, through
a server's API (``--url``, ``--api-key``)."""

from __future__ import annotations

import sys
from typing import Annotated

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jobbalancer import __version__, client
from jobbalancer.cli import formatting
from jobbalancer.cli.base import (
    JobIdArg,
    JsonOpt,
    LogStream,
    Remote,
    app,
    opt,
    server_options,
)
from jobbalancer.cli.submit import follow_output


@app.command("jobs")
@server_options
def jobs_list(
    remote: Remote,
    state: Annotated[
        str | None,
        opt(
            "--state",
            "-s",
            env="JOBS_STATE",
            help="Only jobs in these states, comma-separated (e.g. running,waiting).",
        ),
    ] = None,
    worker: Annotated[
        str | None,
        opt("--worker", env="JOBS_WORKER", help="Only jobs of this worker."),
    ] = None,
    worker_class: Annotated[
        str | None,
        opt("--class", env="JOBS_CLASS", help="Only jobs of this worker class."),
    ] = None,
    user: Annotated[
        str | None,
        opt("--user", env="JOBS_USER", help="Only this user's jobs."),
    ] = None,
    query: Annotated[
        str | None,
        opt(
            "-q",
            "--query",
            env="JOBS_QUERY",
            help="Only jobs whose command or script contains this text.",
        ),
    ] = None,
    limit: Annotated[
        int,
        opt("--limit", "-n", env="JOBS_LIMIT", min=1, help="At most this many."),
    ] = 50,
    as_json: JsonOpt = False,
    schedule: Annotated[
        str | None,
        opt("--schedule", env="JOBS_SCHEDULE", help="Only jobs this schedule (name or id) fired."),
    ] = None,
) -> None:
    """List jobs, newest first."""
    with remote.client() as c:
        schedule_id = None if schedule is None else int(c.schedule(schedule)["id"])
        found = list(
            c.jobs(
                state=state,
                worker=worker,
                worker_class=worker_class,
                user=user,
                q=query,
                limit=limit,
                schedule_id=schedule_id,
            )
        )
    if as_json:
        formatting.print_json(found)
        return
    if not found:
        formatting.out().print("no jobs match")
        return
    console = Console(highlight=False)
    console.print(formatting.job_table(found, console.width))


@app.command()
@server_options
def show(remote: Remote, job_id: JobIdArg, as_json: JsonOpt = False) -> None:
    """Show one job in full."""
    with remote.client() as c:
        job = c.job(job_id)
    if as_json:
        formatting.print_json(job)
        return
    table = Table(box=box.SIMPLE, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, text in formatting.show_rows(job):
        table.add_row(label, formatting.state(text) if label == "state" else escape(text))
    Console(highlight=False).print(table)


@app.command()
@server_options
def logs(
    remote: Remote,
    job_id: JobIdArg,
    follow: Annotated[
        bool,
        opt("--follow", "-f", env="LOGS_FOLLOW", help="Keep printing as it runs."),
    ] = False,
    stream: Annotated[
        LogStream,
        opt("--stream", env="LOGS_STREAM", help="stdout, stderr, or all (both, in order)."),
    ] = LogStream.ALL,
) -> None:
    """Print a job's output. With -f, keep printing as it is written (stderr to stderr)
    until the job ends."""
    chosen: client.Stream = stream.value
    with remote.client() as c:
        if follow:
            follow_output(c, job_id, chosen, quiet_end=True)
            return
        for piece in c.iter_log(job_id, chosen):
            sys.stdout.write(piece)
        sys.stdout.flush()


@app.command()
@server_options
def kill(remote: Remote, job_id: JobIdArg) -> None:
    """Kill a job: at once if it has not started, within seconds if it runs."""
    with remote.client() as c:
        job = c.kill(job_id)
    if job.get("state") == "killed":
        formatting.out().print(f"job {job_id} killed")
    else:
        formatting.out().print(f"job {job_id}: kill requested; its worker stops it within seconds")


@app.command()
@server_options
def restart(remote: Remote, job_id: JobIdArg) -> None:
    """Run a job again as a new job (its id is printed); the old one stays as it was."""
    with remote.client() as c:
        job = c.restart(job_id)
    print(job["id"], flush=True)


@app.command()
@server_options
def delete(remote: Remote, job_id: JobIdArg) -> None:
    """Delete a finished job and its output (kill a running one first)."""
    with remote.client() as c:
        c.delete(job_id)
    formatting.out().print(f"job {job_id} deleted")


@app.command("workers")
@server_options
def workers_list(remote: Remote, as_json: JsonOpt = False) -> None:
    """List the workers: state, class, jobs running, load."""
    with remote.client() as c:
        found = c.workers()
    if as_json:
        formatting.print_json(found)
        return
    if not found:
        formatting.out().print("no workers yet: start one with `jobbalancer worker`")
        return
    rows = [
        [
            str(w.get("id", "")),
            escape(str(w.get("name", ""))),
            formatting.state(str(w.get("state", ""))),
            escape(formatting.name(w.get("worker_class"))),
            f"{w.get('active_jobs', 0)}/{w.get('max_jobs', '?')}",
            formatting.cell(w.get("load")),
            formatting.cell(w.get("cpu_count")),
            formatting.when(w.get("last_heartbeat_at")),
        ]
        for w in found
    ]
    columns = ["id", "name", "state", "class", "jobs", "load", "cpus", "heartbeat"]
    formatting.print_table(columns, rows, flexible="name")


@app.command()
def version() -> None:
    """Print the version."""
    print(f"jobbalancer {__version__}")

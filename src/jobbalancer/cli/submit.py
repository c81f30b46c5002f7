"""`jobbalancer submit`, and waiting for a job or following its output to its end."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.markup import escape

from jobbalancer import client
from jobbalancer.cli import exits, formatting
from jobbalancer.cli.base import Remote, app, opt, server_options


@app.command(context_settings={"allow_interspersed_args": False})
@server_options
def submit(
    remote: Remote,
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
        opt(
            "--script",
            env="SUBMIT_SCRIPT",
            help="Run this stored script (name or id) instead of a command.",
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        opt(
            "--param",
            "-p",
            env="SUBMIT_PARAM",
            help="A parameter for --script, passed as one argument (repeat for more).",
        ),
    ] = None,
    watchdog: Annotated[
        float | None,
        opt(
            "--watchdog",
            env="SUBMIT_WATCHDOG",
            min=0,
            help="Kill the job after this many seconds (its state becomes timeout).",
        ),
    ] = None,
    worker_class: Annotated[
        str | None,
        opt("--class", env="SUBMIT_CLASS", help="Worker class to run on. Default: default."),
    ] = None,
    realtime: Annotated[
        bool,
        opt(
            "--realtime",
            env="SUBMIT_REALTIME",
            help="Start now or not at all: rejected (exit 75) when no worker is free.",
        ),
    ] = False,
    priority: Annotated[
        int,
        opt("--priority", env="SUBMIT_PRIORITY", help="Higher runs first."),
    ] = 0,
    retries: Annotated[
        int,
        opt(
            "--retries",
            env="SUBMIT_RETRIES",
            min=0,
            help="Run again this many times if it fails or its worker vanishes.",
        ),
    ] = 0,
    env: Annotated[
        list[str] | None,
        opt(
            "--env",
            "-e",
            env="SUBMIT_ENV",
            help="KEY=VALUE added to the job's environment (repeat for more).",
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        opt(
            "--label",
            "-l",
            env="SUBMIT_LABEL",
            help="KEY=VALUE label to find the job by (repeat for more).",
        ),
    ] = None,
    workdir: Annotated[
        str | None,
        opt(
            "--workdir",
            "-C",
            env="SUBMIT_WORKDIR",
            help="Run in this directory on the worker (an absolute path; it must exist "
            "there and be usable by the job's user). Default: a private temporary "
            "directory, removed when the job ends.",
        ),
    ] = None,
    after: Annotated[
        list[int] | None,
        opt(
            "--after",
            env="SUBMIT_AFTER",
            min=1,
            help="Run only after this job succeeded (held until then; skipped if it did "
            "not). Repeat for more.",
        ),
    ] = None,
    after_any: Annotated[
        list[int] | None,
        opt(
            "--after-any",
            env="SUBMIT_AFTER_ANY",
            min=1,
            help="Run after this job ended, however it ended. Repeat for more.",
        ),
    ] = None,
    after_failure: Annotated[
        list[int] | None,
        opt(
            "--after-failure",
            env="SUBMIT_AFTER_FAILURE",
            min=1,
            help="Run only if this job failed (failed, timeout, lost). Repeat for more.",
        ),
    ] = None,
    wait: Annotated[
        bool,
        opt(
            "--wait",
            "-w",
            env="SUBMIT_WAIT",
            help="Wait for the job and exit with its code (timeout 124, killed 137, lost 75).",
        ),
    ] = False,
    follow: Annotated[
        bool,
        opt(
            "--follow",
            "-f",
            env="SUBMIT_FOLLOW",
            help="Stream the job's stdout and stderr here as it runs, then exit with its code.",
        ),
    ] = False,
    as_json: Annotated[
        bool,
        opt("--json", env="JSON", help="Print the job as JSON, not its id."),
    ] = False,
) -> None:
    """Submit a job: `jobbalancer submit [OPTIONS] -- CMD ARGS…` or `--script NAME -p P`.

    Prints the new job's id. With --wait or --follow, exits with the job's exit code.
    """
    spec = submit_spec(command or [], script, param or [], env or [], label or [])
    with remote.client() as c:
        job = c.submit(
            **spec,
            watchdog=watchdog or None,
            worker_class=worker_class,
            need_realtime=realtime,
            priority=priority,
            retries=retries,
            workdir=workdir,
            after=after_list(after or [], after_any or [], after_failure or []),
        )
        if follow:
            formatting.err().print(f"[dim]job {job['id']} submitted[/]")
            raise typer.Exit(follow_output(c, job["id"], "all", quiet_end=False))
        if not wait:
            _print_job_or_id(job, as_json)
            return
        if not as_json:
            print(job["id"], flush=True)
        final = _wait(c, job["id"])
    if as_json:
        formatting.print_json(final)
    raise typer.Exit(_job_result(final))


def submit_spec(
    words: Sequence[str],
    script: str | None,
    params: Sequence[str],
    env: list[str],
    labels: list[str],
) -> dict[str, Any]:
    """What to submit, from the command line: a command (words after --) or a script."""
    if words and script:
        formatting.fail(
            exits.RET_USAGE, "give either a command (after --) or --script NAME, not both"
        )
    if not words and not script:
        formatting.fail(
            exits.RET_USAGE, "nothing to run: give a command after --, or --script NAME"
        )
    if params and not script:
        formatting.fail(
            exits.RET_USAGE, "--param goes with --script; for a command put arguments after --"
        )
    spec: dict[str, Any] = {"env": _pairs("--env", env), "labels": _pairs("--label", labels)}
    if script:
        return spec | {"script": int(script) if script.isdigit() else script, "params": params}
    return spec | {"command": words[0] if len(words) == 1 else shlex.join(words)}


def after_list(
    success: Sequence[int], any_end: Sequence[int], failure: Sequence[int]
) -> list[dict[str, Any]]:
    """The ``after`` of a submission from --after, --after-any and --after-failure."""
    return [
        {"job": job_id, "on": on}
        for ids, on in ((success, "success"), (any_end, "any"), (failure, "failure"))
        for job_id in ids
    ]


def _pairs(option: str, items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            formatting.fail(exits.RET_USAGE, f"{option} {item!r}: write it as KEY=VALUE")
        pairs[key] = value
    return pairs


def _print_job_or_id(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        formatting.print_json(job)
    else:
        print(job["id"], flush=True)


def _wait(c: client.Client, job_id: int) -> dict[str, Any]:
    try:
        return c.wait(job_id)
    except KeyboardInterrupt:
        formatting.fail(exits.RET_INTERRUPTED, _left_running(job_id))


def follow_output(c: client.Client, job_id: int, stream: client.Stream, *, quiet_end: bool) -> int:
    """Copy the job's output to our stdout/stderr as it comes; its exit code."""
    final: dict[str, Any] = {}
    try:
        for kind, payload in c.follow(job_id, stream):
            if kind == "output":
                _write_output(payload, to_stderr=stream == "all")
            elif kind == "end":
                final = payload
    except KeyboardInterrupt:
        formatting.fail(exits.RET_INTERRUPTED, _left_running(job_id))
    if quiet_end:
        return exits.RET_OK
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


def _job_result(job: dict[str, Any]) -> int:
    """Say how the job ended unless it went well; the exit code for it."""
    code = exits.job_exit_code(job)
    if job.get("state") != "done":
        formatting.err().print(f"[yellow]{escape(_ending(job))}[/]")
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

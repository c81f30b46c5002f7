"""`jobbalancer submit`, and waiting for a job or following its output to its end."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.markup import escape

from jobbalancer import client, resources
from jobbalancer.cli import exits, formatting
from jobbalancer.cli.base import Remote, app, opt, server_options

# What to run and how: the options of `submit`, shared with `parallel`.
ScriptOpt = Annotated[
    str | None,
    opt(
        "--script",
        env="SUBMIT_SCRIPT",
        help="Run this stored script (name or id) instead of a command.",
    ),
]

ParamOpt = Annotated[
    list[str] | None,
    opt(
        "--param",
        "-p",
        env="SUBMIT_PARAM",
        help="A parameter for --script, passed as one argument (repeat for more); "
        "NAME=VALUE sets a parameter the script declares by name.",
    ),
]

WatchdogOpt = Annotated[
    float | None,
    opt(
        "--watchdog",
        env="SUBMIT_WATCHDOG",
        min=0,
        help="Kill the job after this many seconds (its state becomes timeout).",
    ),
]

ClassOpt = Annotated[
    str | None,
    opt("--class", env="SUBMIT_CLASS", help="Worker class to run on. Default: default."),
]

RealtimeOpt = Annotated[
    bool,
    opt(
        "--realtime",
        env="SUBMIT_REALTIME",
        help="Start now or not at all: rejected (exit 75) when no worker is free.",
    ),
]

PriorityOpt = Annotated[
    int,
    opt("--priority", env="SUBMIT_PRIORITY", help="Higher runs first."),
]

RetriesOpt = Annotated[
    int,
    opt(
        "--retries",
        env="SUBMIT_RETRIES",
        min=0,
        help="Run again this many times if it fails or its worker vanishes.",
    ),
]

EnvOpt = Annotated[
    list[str] | None,
    opt(
        "--env",
        "-e",
        env="SUBMIT_ENV",
        help="KEY=VALUE added to the job's environment (repeat for more).",
    ),
]

LabelOpt = Annotated[
    list[str] | None,
    opt(
        "--label",
        "-l",
        env="SUBMIT_LABEL",
        help="KEY=VALUE label to find the job by (repeat for more).",
    ),
]

WorkdirOpt = Annotated[
    str | None,
    opt(
        "--workdir",
        "-C",
        env="SUBMIT_WORKDIR",
        help="Run in this directory on the worker (an absolute path; it must exist "
        "there and be usable by the job's user). Default: a private temporary "
        "directory, removed when the job ends.",
    ),
]

SecretEnvOpt = Annotated[
    list[str] | None,
    opt(
        "--secret-env",
        "-S",
        env="SUBMIT_SECRET_ENV",
        help="VAR=SECRET: set VAR in the job's environment to the value of the named "
        "secret (repeat for more); the value never shows, its output has **** instead.",
    ),
]

# Placement (docs/api.md, "Placement").
CpusOpt = Annotated[
    float | None,
    opt("--cpus", env="SUBMIT_CPUS", min=0, help="CPUs it needs (fractional ok: 0.5)."),
]
MemoryOpt = Annotated[
    str | None,
    opt("--memory", env="SUBMIT_MEMORY", help="Memory it needs: 512M, 2G (powers of 1024)."),
]
GpusOpt = Annotated[
    int | None,
    opt("--gpus", env="SUBMIT_GPUS", min=0, help="GPUs it needs (CUDA_VISIBLE_DEVICES)."),
]
ConstraintOpt = Annotated[
    list[str] | None,
    opt(
        "--constraint",
        env="SUBMIT_CONSTRAINT",
        help="A worker label it needs: ffmpeg=6, os!=windows, ssd (exists), !ssd (missing). "
        "Repeat for more.",
    ),
]


def placement(
    cpus: float | None, memory: str | None, gpus: int | None, constraints: Sequence[str]
) -> dict[str, Any]:
    """The request fields of a submission from the command line (only those given)."""
    out: dict[str, Any] = {}
    if cpus is not None:
        out["cpus"] = cpus
    if memory is not None:
        out["memory"] = memory
    if gpus is not None:
        out["gpus"] = gpus
    if constraints:
        try:
            out["constraints"] = dict(resources.parse_constraint(c) for c in constraints)
        except ValueError as exc:
            formatting.fail(exits.RET_USAGE, f"--constraint: {exc}")
    return out


NotifyOpt = Annotated[
    list[str] | None,
    opt(
        "--notify",
        "-N",
        env="SUBMIT_NOTIFY",
        help="STATES:TARGET, e.g. failed,timeout:ops-hook: tell a notification target "
        "when the job reaches one of the states (repeat for more).",
    ),
]


# Starting and retrying later (docs/api.md, "Starting later, retrying later").
AtOpt = Annotated[
    str | None,
    opt(
        "--at",
        env="SUBMIT_AT",
        help="Start no earlier than this time: RFC 3339 with an offset, e.g. "
        "2026-12-24T18:00+01:00 (Z for UTC). Not with --in.",
    ),
]

InOpt = Annotated[
    str | None,
    opt(
        "--in",
        env="SUBMIT_IN",
        help="Start no earlier than this long from now: a number with s, m, h or d "
        "(90s, 10m, 2h, 1d; no unit: seconds). Not with --at.",
    ),
]

RetryDelayOpt = Annotated[
    str | None,
    opt(
        "--retry-delay",
        env="SUBMIT_RETRY_DELAY",
        help="Wait this long before the first retry (30s, 5m …; see --retries).",
    ),
]

RetryBackoffOpt = Annotated[
    float | None,
    opt(
        "--retry-backoff",
        env="SUBMIT_RETRY_BACKOFF",
        min=1,
        help="Each retry waits this many times longer than the one before (e.g. 2).",
    ),
]

RetryMaxDelayOpt = Annotated[
    str | None,
    opt(
        "--retry-max-delay",
        env="SUBMIT_RETRY_MAX_DELAY",
        help="No retry waits longer than this (e.g. 10m).",
    ),
]

RetryJitterOpt = Annotated[
    float | None,
    opt(
        "--retry-jitter",
        env="SUBMIT_RETRY_JITTER",
        min=0,
        max=1,
        help="Move each wait at random by up to this fraction of itself (0 to 1, e.g. 0.1).",
    ),
]

RetryOnOpt = Annotated[
    str | None,
    opt(
        "--retry-on",
        env="SUBMIT_RETRY_ON",
        help="Which ends are retried, comma-separated: failed, timeout, lost and exit "
        "codes (e.g. failed,timeout or 75). Default: failed,lost.",
    ),
]

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(option: str, text: str) -> float:
    """``"10m"`` → 600.0: a number with an optional unit s, m, h or d; a usage error
    naming ``option`` otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        formatting.fail(
            exits.RET_USAGE,
            f"{option} {text!r}: give a number with s, m, h or d, e.g. 90s, 10m, 2h, 1d",
        )
    return float(match[1]) * _UNITS[match[2]]


def parse_at(text: str) -> str:
    """``--at``'s value checked as a time with an offset, in the API's form."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        formatting.fail(
            exits.RET_USAGE,
            f"--at {text!r}: give a time like 2026-12-24T18:00+01:00 (RFC 3339, Z for UTC)",
        )
    if at.tzinfo is None:
        formatting.fail(
            exits.RET_USAGE,
            f"--at {text!r}: add the time zone offset (e.g. +01:00, or Z for UTC)",
        )
    return at.isoformat()


def parse_retry_on(text: str) -> list[str | int]:
    """``"failed,timeout,75"`` → ``["failed", "timeout", 75]``."""
    ends: list[str | int] = []
    for item in (part.strip().lower() for part in text.split(",")):
        if item.isascii() and item.isdigit():
            ends.append(int(item))
        elif item in ("failed", "timeout", "lost"):
            ends.append(item)
        else:
            formatting.fail(
                exits.RET_USAGE,
                f"--retry-on {text!r}: {item!r} is not failed, timeout, lost or an exit code",
            )
    return ends


def later_spec(
    at: str | None = None,
    in_: str | None = None,
    retry_delay: str | None = None,
    retry_backoff: float | None = None,
    retry_max_delay: str | None = None,
    retry_jitter: float | None = None,
    retry_on: str | None = None,
) -> dict[str, Any]:
    """The submission's fields of starting and retrying later, from the options."""
    if at is not None and in_ is not None:
        formatting.fail(exits.RET_USAGE, "give --at or --in, not both")
    spec: dict[str, Any] = {}
    if at is not None:
        spec["not_before"] = parse_at(at)
    if in_ is not None:
        spec["delay"] = parse_duration("--in", in_)
    if retry_delay is not None:
        spec["retry_delay"] = parse_duration("--retry-delay", retry_delay)
    if retry_backoff is not None:
        spec["retry_backoff"] = retry_backoff
    if retry_max_delay is not None:
        spec["retry_max_delay"] = parse_duration("--retry-max-delay", retry_max_delay)
    if retry_jitter is not None:
        spec["retry_jitter"] = retry_jitter
    if retry_on is not None:
        spec["retry_on"] = parse_retry_on(retry_on)
    return spec


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
    script: ScriptOpt = None,
    param: ParamOpt = None,
    watchdog: WatchdogOpt = None,
    worker_class: ClassOpt = None,
    realtime: RealtimeOpt = False,
    priority: PriorityOpt = 0,
    retries: RetriesOpt = 0,
    env: EnvOpt = None,
    secret_env: SecretEnvOpt = None,
    label: LabelOpt = None,
    workdir: WorkdirOpt = None,
    notify: NotifyOpt = None,
    at: AtOpt = None,
    in_: InOpt = None,
    retry_delay: RetryDelayOpt = None,
    retry_backoff: RetryBackoffOpt = None,
    retry_max_delay: RetryMaxDelayOpt = None,
    retry_jitter: RetryJitterOpt = None,
    retry_on: RetryOnOpt = None,
    cpus: CpusOpt = None,
    memory: MemoryOpt = None,
    gpus: GpusOpt = None,
    constraint: ConstraintOpt = None,
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
    later = later_spec(at, in_, retry_delay, retry_backoff, retry_max_delay, retry_jitter, retry_on)
    with remote.client() as c:
        if script:
            spec["params"] = arrange_params(declared_names(c, script, spec["params"]), param or [])
        job = c.submit(
            **spec,
            watchdog=watchdog or None,
            worker_class=worker_class,
            need_realtime=realtime,
            priority=priority,
            retries=retries,
            workdir=workdir,
            notify=notify_rules(notify or []),
            after=after_list(after or [], after_any or [], after_failure or []),
            **later,
            secret_env=parse_pairs("--secret-env", secret_env or []),
            **placement(cpus, memory, gpus, constraint or []),
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
    check_what_to_run(words, script, params)
    spec: dict[str, Any] = {
        "env": parse_pairs("--env", env),
        "labels": parse_pairs("--label", labels),
    }
    if script:
        return spec | {"script": script_ref(script), "params": params}
    return spec | {"command": words[0] if len(words) == 1 else shlex.join(words)}


def check_what_to_run(words: Sequence[str], script: str | None, params: Sequence[str]) -> None:
    """A usage error unless there is exactly one of a command and a script (and params
    only with a script)."""
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


# A -p value that may name a declared parameter: NAME=VALUE.
_NAMED = re.compile(r"([A-Za-z_][A-Za-z0-9_-]{0,63})=(.*)", re.DOTALL)


def declared_names(c: client.Client, script: str, params: Sequence[str]) -> list[str]:
    """The names of the parameters ``script`` declares, when some ``-p`` may name one
    (no request otherwise); [] for a script that declares none, or that cannot be read
    (the submission then says what is wrong with it)."""
    if not any(_NAMED.fullmatch(p) for p in params):
        return []
    try:
        found = c.script(script_ref(script))
    except client.ApiError:
        return []
    return [str(p.get("name")) for p in found.get("parameters") or []]


def arrange_params(names: Sequence[str], params: Sequence[str]) -> list[str] | dict[str, str]:
    """``-p`` values as the API takes them. For a script that declares ``names``,
    ``NAME=VALUE`` with a declared NAME sets that parameter, and the other values fill the
    declared parameters in order (``-p a.mp4 -p crf=23``); otherwise a list as given."""
    named: dict[str, str] = {}
    positional: list[str] = []
    for p in params:
        match = _NAMED.fullmatch(p)
        if match and match[1] in names:
            if match[1] in named:
                formatting.fail(exits.RET_USAGE, f"-p {match[1]}=… is given twice")
            named[match[1]] = match[2]
        else:
            positional.append(p)
    if not named:
        return list(params)
    if len(positional) > len(names):
        formatting.fail(
            exits.RET_USAGE,
            f"the script declares {len(names)} parameters ({', '.join(names)}); "
            f"{len(positional) + len(named)} were given",
        )
    for name, value in zip(names, positional, strict=False):
        if name in named:
            formatting.fail(exits.RET_USAGE, f"-p {name}=… sets a parameter also given by position")
        named[name] = value
    return named


def after_list(
    success: Sequence[int], any_end: Sequence[int], failure: Sequence[int]
) -> list[dict[str, Any]]:
    """The ``after`` of a submission from --after, --after-any and --after-failure."""
    return [
        {"job": job_id, "on": on}
        for ids, on in ((success, "success"), (any_end, "any"), (failure, "failure"))
        for job_id in ids
    ]


def script_ref(script: str) -> str | int:
    """``--script``'s value as the API takes it: an id when it is ASCII digits (``"²"`` is
    a digit to Python, and no number), else a name."""
    return int(script) if script.isascii() and script.isdigit() else script


def notify_rules(items: Sequence[str]) -> list[dict[str, Any]]:
    """``--notify failed,timeout:ops-hook`` → ``[{"on": [...], "target": "ops-hook"}]``."""
    rules = []
    for item in items:
        states, sep, target = item.partition(":")
        if not sep or not states or not target:
            formatting.fail(exits.RET_USAGE, f"--notify {item!r}: write it as STATES:TARGET")
        rules.append({"on": [s.strip() for s in states.split(",")], "target": target})
    return rules


def parse_pairs(option: str, items: Sequence[str]) -> dict[str, str]:
    """``["K=V", …]`` from a repeated option → ``{"K": "V"}``; a usage error otherwise."""
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

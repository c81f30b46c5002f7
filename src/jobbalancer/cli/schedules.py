"""``jobbalancer schedules``: list, add, show, pause, resume, run, delete, history and
preview schedules, through a server's API."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from jobbalancer.cli import formatting
from jobbalancer.cli.base import (
    ApiKeyOpt,
    JsonOpt,
    Remote,
    TimeoutOpt,
    UrlOpt,
    app,
    opt,
    server_options,
)
from jobbalancer.cli.submit import (
    ClassOpt,
    EnvOpt,
    InOpt,
    LabelOpt,
    NotifyOpt,
    ParamOpt,
    PriorityOpt,
    RealtimeOpt,
    RetriesOpt,
    RetryBackoffOpt,
    RetryDelayOpt,
    RetryJitterOpt,
    RetryMaxDelayOpt,
    RetryOnOpt,
    ScriptOpt,
    SecretEnvOpt,
    WatchdogOpt,
    WorkdirOpt,
    arrange_params,
    declared_names,
    later_spec,
    notify_rules,
    parse_pairs,
    submit_spec,
)

schedules_app = typer.Typer(
    help="Schedules: jobs submitted at the times of a cron expression. Without a "
    "subcommand: list them, with their next run and last result.",
    invoke_without_command=True,
)
app.add_typer(schedules_app, name="schedules")

NameArg = Annotated[str, typer.Argument(help="The schedule's name (or id).")]


@schedules_app.callback()
def schedules_list(
    ctx: typer.Context,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the schedules: next run and last result."""
    if ctx.invoked_subcommand is not None:
        return
    remote = Remote.resolve(ctx, url, api_key, timeout)
    with remote.client() as c:
        found = c.schedules()
    if as_json:
        formatting.print_json(found)
        return
    if not found:
        formatting.out().print(
            "no schedules yet: add one with `jobbalancer schedules add NAME --cron '…' -- CMD`"
        )
        return
    rows = [
        [
            str(s.get("id", "")),
            escape(str(s.get("name", ""))),
            escape(f"{s.get('cron')} {s.get('timezone')}"),
            formatting.when(s.get("next_fire_at")) if s.get("enabled") else "paused",
            _last(s.get("last")),
            escape(str(s.get("user", ""))),
        ]
        for s in found
    ]
    columns = ["id", "name", "when", "next run", "last result", "owner"]
    formatting.print_table(columns, rows, flexible="last result")


def _last(occ: dict[str, Any] | None) -> str:
    if not occ:
        return "-"
    at = formatting.when(occ.get("fire_at"))
    if occ.get("outcome") == "fired":
        state = str(occ.get("job_state") or "deleted")
        return f"{formatting.state(state)} job {occ.get('job_id')} ({at})"
    return f"[yellow]skipped[/] {escape(str(occ.get('reason') or ''))} ({at})"


@schedules_app.command("add")
@server_options
def add(
    remote: Remote,
    name: NameArg,
    cron: Annotated[
        str,
        opt(
            "--cron",
            env="SCHEDULE_CRON",
            help="When: 5 fields (minute hour day-of-month month day-of-week), @hourly, "
            "@daily, @weekly, @monthly, @yearly, or 6 fields with seconds in front.",
        ),
    ],
    command: Annotated[
        list[str] | None,
        typer.Argument(help="The command, after --, as for `submit`.", show_default=False),
    ] = None,
    tz: Annotated[
        str, opt("--tz", env="SCHEDULE_TZ", help="IANA time zone the expression is read in.")
    ] = "UTC",
    description: Annotated[
        str, opt("--description", env="SCHEDULE_DESCRIPTION", help="What it is for.")
    ] = "",
    overlap: Annotated[
        str,
        opt(
            "--overlap",
            env="SCHEDULE_OVERLAP",
            help="While the previous run goes on: allow, skip, queue (one waits) or replace "
            "(kill it).",
        ),
    ] = "skip",
    catch_up: Annotated[
        str,
        opt(
            "--catch-up",
            env="SCHEDULE_CATCH_UP",
            help="Occurrences missed while no server ran: none, latest or all.",
        ),
    ] = "latest",
    catch_up_max: Annotated[
        int,
        opt(
            "--catch-up-max",
            env="SCHEDULE_CATCH_UP_MAX",
            min=1,
            max=1000,
            help="With --catch-up all: at most this many.",
        ),
    ] = 10,
    start: Annotated[
        str | None,
        opt("--start", env="SCHEDULE_START", help="No occurrence before (RFC 3339 time)."),
    ] = None,
    end: Annotated[
        str | None,
        opt("--end", env="SCHEDULE_END", help="No occurrence after (RFC 3339 time)."),
    ] = None,
    paused: Annotated[
        bool, opt("--paused", env="SCHEDULE_PAUSED", help="Create it paused.")
    ] = False,
    script: ScriptOpt = None,
    param: ParamOpt = None,
    watchdog: WatchdogOpt = None,
    worker_class: ClassOpt = None,
    realtime: RealtimeOpt = False,
    priority: PriorityOpt = 0,
    retries: RetriesOpt = 0,
    env: EnvOpt = None,
    label: LabelOpt = None,
    workdir: WorkdirOpt = None,
    notify: NotifyOpt = None,
    secret_env: SecretEnvOpt = None,
    in_: InOpt = None,
    retry_delay: RetryDelayOpt = None,
    retry_backoff: RetryBackoffOpt = None,
    retry_max_delay: RetryMaxDelayOpt = None,
    retry_jitter: RetryJitterOpt = None,
    retry_on: RetryOnOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a schedule: `jobbalancer schedules add NAME --cron '*/15 * * * *' --tz
    Europe/Berlin SUBMIT-OPTIONS -- CMD ARGS…` (or --script NAME -p P).

    Its jobs run as you, with your rights at each firing; --in delays each one after its
    fire time. Prints the next runs.
    """
    later = later_spec(None, in_, retry_delay, retry_backoff, retry_max_delay, retry_jitter,
                       retry_on)  # fmt: skip
    job = submit_spec(command or [], script, param or [], env or [], label or [])
    optional: dict[str, Any] = {
        "watchdog": watchdog or None,
        "worker_class": worker_class,
        "need_realtime": realtime,
        "priority": priority,
        "retries": retries,
        "workdir": workdir,
        "notify": notify_rules(notify or []),
        **later,
        "secret_env": parse_pairs("--secret-env", secret_env or []),
    }
    job.update({k: v for k, v in optional.items() if v})
    job = {k: v for k, v in job.items() if v or k in ("command", "script")}
    with remote.client() as c:
        if script:  # -p NAME=VALUE for a script that declares its parameters
            job["params"] = arrange_params(declared_names(c, script, param or []), param or [])
            job = {k: v for k, v in job.items() if v or k in ("command", "script")}
        made = c.create_schedule(
            name, cron, job, timezone=tz, description=description or None, overlap=overlap,
            catch_up=catch_up, catch_up_max=catch_up_max, start_at=start, end_at=end,
            enabled=not paused,
        )  # fmt: skip
    if as_json:
        formatting.print_json(made)
        return
    formatting.out().print(f"schedule {made['id']} {escape(made['name'])} added")
    _print_runs(made.get("next_runs") or [])


def _print_runs(runs: list[dict[str, Any]]) -> None:
    if not runs:
        formatting.out().print("no next runs (paused, or past its end)")
        return
    formatting.print_table(
        ["next runs (local)", "UTC"], [[str(r["local"]), str(r["utc"])] for r in runs], "UTC"
    )


@schedules_app.command("show")
@server_options
def show(remote: Remote, name: NameArg, as_json: JsonOpt = False) -> None:
    """Show a schedule: its job, policies, next runs and latest occurrences."""
    with remote.client() as c:
        found = c.schedule(name)
    if as_json:
        formatting.print_json(found)
        return
    job = found.get("job") or {}
    what = job.get("command") or f"script {job.get('script')} {' '.join(job.get('params') or [])}"
    rows = [
        ["name", escape(str(found["name"]))],  # the heading (below)
        ["id", str(found["id"])],
        ["state", "enabled" if found.get("enabled") else "paused"],
        ["cron", escape(f"{found['cron']} ({found['timezone']})")],
        ["runs", escape(str(what))],
        ["class", escape(str(job.get("worker_class", "default")))],
        ["overlap", str(found.get("overlap"))],
        ["catch-up", f"{found.get('catch_up')} (at most {found.get('catch_up_max')})"],
        ["start", formatting.when(found.get("start_at")) if found.get("start_at") else "-"],
        ["end", formatting.when(found.get("end_at")) if found.get("end_at") else "-"],
        ["owner", escape(str(found.get("user")))],
    ]
    if found.get("description"):
        rows.insert(1, ["description", escape(str(found["description"]))])
    title = escape(str(found["name"]))  # the table's heading; its rows are label, value
    formatting.print_table([" ", title], rows[1:], title)
    _print_runs(found.get("next_runs") or [])
    _print_history(found.get("occurrences") or [])


def _print_history(found: list[dict[str, Any]]) -> None:
    if not found:
        formatting.out().print("no occurrences yet")
        return
    rows = [
        [
            formatting.when(o.get("fire_at")),
            str(o.get("outcome")) + (" (run now)" if o.get("manual") else ""),
            str(o.get("job_id") or "-"),
            formatting.state(str(o["job_state"])) if o.get("job_state") else "-",
            escape(str(o.get("reason") or "")),
        ]
        for o in found
    ]
    formatting.print_table(["time", "outcome", "job", "job state", "reason"], rows, "reason")


@schedules_app.command("history")
@server_options
def history(
    remote: Remote,
    name: NameArg,
    limit: Annotated[
        int, opt("--limit", "-n", env="SCHEDULE_LIMIT", min=1, max=500, help="At most this many.")
    ] = 50,
    as_json: JsonOpt = False,
) -> None:
    """A schedule's occurrences, newest first: the job each fired, or why it was skipped."""
    with remote.client() as c:
        found = c.schedule_history(name, limit)
    if as_json:
        formatting.print_json(found)
        return
    _print_history(found)


@schedules_app.command("pause")
@server_options
def pause(remote: Remote, name: NameArg) -> None:
    """Pause: nothing fires until resumed (and nothing missed meanwhile is made up for)."""
    with remote.client() as c:
        c.pause_schedule(name)
    formatting.out().print(f"schedule {escape(name)} paused")


@schedules_app.command("resume")
@server_options
def resume(remote: Remote, name: NameArg) -> None:
    """Resume: fire again from the next occurrence after now."""
    with remote.client() as c:
        found = c.resume_schedule(name)
    formatting.out().print(
        f"schedule {escape(name)} resumed; next run {formatting.when(found.get('next_fire_at'))}"
    )


@schedules_app.command("run")
@server_options
def run(remote: Remote, name: NameArg) -> None:
    """Submit the schedule's job now (as its owner); prints the job's id."""
    with remote.client() as c:
        occ = c.run_schedule(name)
    print(occ["job_id"], flush=True)


@schedules_app.command("delete")
@server_options
def delete(remote: Remote, name: NameArg) -> None:
    """Delete a schedule and its history; the jobs it fired stay."""
    with remote.client() as c:
        c.delete_schedule(name)
    formatting.out().print(f"schedule {escape(name)} deleted")


@schedules_app.command("preview")
@server_options
def preview(
    remote: Remote,
    cron: Annotated[str, typer.Argument(help="A cron expression (quote it).")],
    tz: Annotated[
        str, opt("--tz", env="SCHEDULE_TZ", help="IANA time zone the expression is read in.")
    ] = "UTC",
    count: Annotated[
        int, opt("--count", "-n", env="SCHEDULE_COUNT", min=1, max=100, help="How many.")
    ] = 5,
    as_json: JsonOpt = False,
) -> None:
    """The next fire times of an expression, without saving anything."""
    with remote.client() as c:
        runs = c.preview_schedule(cron, tz, count)
    if as_json:
        formatting.print_json(runs)
        return
    _print_runs(runs)

"""`jobbalancer parallel`: one job per input, over the whole cluster, GNU parallel style.

The inputs become jobs in batches (``POST /api/v1/jobs/batch``, 500 a request), then the
run is followed in bulk: each poll asks for the unfinished jobs by id, the oldest 500 (the
queue runs a run's jobs in id order, so those are the ones that move) and a further 500
in rotation, so a poll is one or two requests however many jobs wait. A job that ended
with retries left is replaced by its next attempt (``retry_of``). Each job's output is
printed when it ends, then a summary; the exit code counts the failures (GNU parallel's
rule, up to 101).

The rules on paper (inputs, replacement strings, halting, the joblog) are in
:mod:`~jobbalancer.cli.fanout`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import secrets
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TextIO

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from jobbalancer import client
from jobbalancer.cli import exits, fanout, formatting
from jobbalancer.cli.base import Remote, app, opt, server_options
from jobbalancer.cli.submit import (
    AtOpt,
    ClassOpt,
    EnvOpt,
    InOpt,
    LabelOpt,
    NotifyOpt,
    ParamOpt,
    PriorityOpt,
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
    check_what_to_run,
    declared_names,
    later_spec,
    notify_rules,
    parse_pairs,
    script_ref,
)

BATCH = 500  # jobs per submit request (the API takes up to 1000)
WINDOW = 500  # ids per poll request (the job list's largest page)
SUBMIT_SLICE = 1.0  # seconds of submitting between two polls while inputs remain
POLL_MIN, POLL_MAX = 0.2, 1.0  # seconds between polls: grows while nothing changes
RUN_LABEL = "parallel"  # every job of a run carries parallel=<run id>
RET_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer whose pipe closed
PATIENCE = 30  # polls in a row that may fail (server or database restarting), about 30 s
READERS = 8  # jobs whose output is read at the same time
SHOWN_FAILURES = 50  # failed inputs listed in the summary; the joblog has them all
UNFINISHED = frozenset({"waiting", "assigned", "running", "held", "delayed"})
NOT_STARTED = frozenset({"waiting", "assigned", "held", "delayed"})


@app.command(context_settings={"allow_interspersed_args": False})
@server_options
def parallel(
    remote: Remote,
    command: Annotated[
        list[str] | None,
        typer.Argument(
            help="The command with replacement strings, after --, then ::: and the inputs "
            "(or :::: FILE…; default: lines of stdin).",
            show_default=False,
        ),
    ] = None,
    script: ScriptOpt = None,
    param: ParamOpt = None,
    watchdog: WatchdogOpt = None,
    worker_class: ClassOpt = None,
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
    tag: Annotated[
        bool,
        opt("--tag", env="PARALLEL_TAG", help="Prefix each line of output with its input."),
    ] = False,
    quiet: Annotated[
        bool,
        opt(
            "--quiet",
            "-q",
            env="PARALLEL_QUIET",
            help="Print no job output and no progress, only the summary.",
        ),
    ] = False,
    halt: Annotated[
        str | None,
        opt(
            "--halt",
            env="PARALLEL_HALT",
            help="soon,fail=N: after N failures kill the jobs not started yet; now,fail=N: "
            "kill all the rest; fail=N% counts a share of the jobs. Default: never.",
        ),
    ] = None,
    joblog: Annotated[
        Path | None,
        opt(
            "--joblog",
            env="PARALLEL_JOBLOG",
            help="Write GNU parallel's joblog (tab-separated, a line per job as it ends).",
        ),
    ] = None,
    kill_on_exit: Annotated[
        bool,
        opt(
            "--kill-on-exit",
            env="PARALLEL_KILL_ON_EXIT",
            help="On Ctrl-C kill the jobs that have not ended, without asking.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        opt(
            "--dry-run",
            env="PARALLEL_DRY_RUN",
            help="Print the command (or script and params) of each job; submit nothing.",
        ),
    ] = False,
    skip_empty: Annotated[
        bool,
        opt(
            "--no-run-if-empty",
            "-r",
            env="PARALLEL_NO_RUN_IF_EMPTY",
            help="Skip empty input lines.",
        ),
    ] = False,
    bar: Annotated[
        bool | None,
        opt(
            "--bar/--no-bar",
            env="PARALLEL_BAR",
            help="Show the progress bar. Default: when stderr is a terminal.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a command once per input on the cluster:
    `jobbalancer parallel [OPTIONS] -- CMD {} ARGS… ::: A B C` (or inputs on stdin).

    Replacement strings: {} the input, {.} without its extension, {/} its base name, {//}
    its directory, {/.} base name without extension, {#} the job's number. In a command
    each value is shell-quoted; with --script NAME -p {} values are the script's
    arguments as they are. Exit code: 0 if every job succeeded, else the number that did
    not (at most 101), or after --halt …,fail=1 the failed job's; 130 after Ctrl-C; 141
    when the output pipe closes.
    """
    try:
        words, source = fanout.split_command(command or [])
        fanout.check_command(words, param or [])
        halting = fanout.parse_halt(halt)
    except fanout.UsageError as exc:
        formatting.fail(exits.RET_USAGE, str(exc))
    check_what_to_run(words, script, param or [])
    inputs = _read_inputs(source, skip_empty)
    if not inputs:
        formatting.err().print("no inputs: nothing to run")
        return
    labels = parse_pairs("--label", label or [])
    run_id = labels.setdefault(RUN_LABEL, secrets.token_hex(4))
    common: dict[str, Any] = {
        "watchdog": watchdog or None,
        "worker_class": worker_class,
        "priority": priority,
        "retries": retries,
        "env": parse_pairs("--env", env or []),
        "labels": labels,
        "workdir": workdir,
        "notify": notify_rules(notify or []),
        **later_spec(at, in_, retry_delay, retry_backoff, retry_max_delay, retry_jitter, retry_on),
        "secret_env": parse_pairs("--secret-env", secret_env or []),
    }
    names: list[str] = []
    if script:  # parameters given by name (-p crf=23) need the script's declaration
        with remote.client() as c:
            names = declared_names(c, script, param or [])
    items = [
        _item(seq, value, words, script, param or [], common, names)
        for seq, value in enumerate(inputs, start=1)
    ]
    if dry_run:
        for item in items:
            print(item.command, flush=True)
        return
    show_bar = (formatting.err().is_terminal if bar is None else bar) and not quiet
    with remote.client() as c, _joblog(joblog) as log:
        run = Run(c, items, run_id, halting, quiet=quiet, tag=tag, joblog=log)
        code = run.go(Display(show_bar, len(items)), kill_on_exit=kill_on_exit)
    raise typer.Exit(code)


def _read_inputs(source: fanout.Source, skip_empty: bool) -> list[str]:
    """The inputs, from wherever they come; a usage error for unreadable ones."""
    try:
        inputs = _inputs_from(source, skip_empty)
    except UnicodeDecodeError as exc:
        formatting.fail(exits.RET_USAGE, f"the inputs must be UTF-8 text: {exc}")
    for seq, value in enumerate(inputs, start=1):
        if "\0" in value:
            formatting.fail(exits.RET_USAGE, f"input {seq} holds a NUL character")
        try:
            value.encode()
        except UnicodeEncodeError:  # stdin decoded with surrogateescape
            formatting.fail(exits.RET_USAGE, f"input {seq} is not UTF-8 text: {value!r}")
    return inputs


def _inputs_from(source: fanout.Source, skip_empty: bool) -> list[str]:
    if source.values is not None:
        values = list(source.values)
        return [v for v in values if v] if skip_empty else values
    if source.files is None:
        if sys.stdin.isatty():
            formatting.err().print("[dim]reading inputs from the terminal (end with Ctrl-D)[/]")
        return fanout.read_lines(sys.stdin, skip_empty=skip_empty)
    inputs: list[str] = []
    for name in source.files:
        if name == "-":
            inputs += fanout.read_lines(sys.stdin, skip_empty=skip_empty)
            continue
        try:
            with open(name, encoding="utf-8") as f:
                inputs += fanout.read_lines(f, skip_empty=skip_empty)
        except OSError as exc:
            formatting.fail(exits.RET_USAGE, f":::: {name}: {exc.strerror or exc}")
    return inputs


@contextlib.contextmanager
def _joblog(path: Path | None) -> Iterator[TextIO | None]:
    if path is None:
        yield None
        return
    try:
        f = open(path, "w", encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        formatting.fail(exits.RET_USAGE, f"--joblog {path}: {exc.strerror or exc}")
    with f:
        print(fanout.JOBLOG_HEADER, file=f, flush=True)
        yield f


# -- one input, one job -------------------------------------------------------------------


@dataclass
class Item:
    """One input and what became of it: its job (the latest attempt), last seen state."""

    seq: int
    value: str
    command: str  # what the joblog and the summary show
    spec: dict[str, Any]
    job_id: int | None = None
    state: str = "unsubmitted"
    job: dict[str, Any] = field(default_factory=dict)
    ended: bool = False
    awaiting_retry: bool = False
    kill_asked: bool = False  # we asked to kill it (--halt, Ctrl-C)


def _item(
    seq: int,
    value: str,
    words: Sequence[str],
    script: str | None,
    params: Sequence[str],
    common: dict[str, Any],
    names: Sequence[str] = (),
) -> Item:
    if script:
        filled = fanout.params_for(params, value, seq)
        arranged = arrange_params(names, filled)
        spec = client.job_spec(script=script_ref(script), params=arranged, **common)
        return Item(seq, value, f"script {shlex.join([script, *filled])}", spec)
    shell = fanout.command_for(words, value, seq)
    return Item(seq, value, shell, client.job_spec(shell, **common))


# -- the run ------------------------------------------------------------------------------


class Display:
    """The progress bar on stderr (when shown), and where job output goes meanwhile."""

    def __init__(self, shown: bool, total: int) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.shown = shown
        self.progress = Progress(
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            redirect_stdout=False,
            redirect_stderr=False,
            transient=False,
            refresh_per_second=4,
        )
        self.task = self.progress.add_task("jobs", total=total, counts="", rate="")

    def start(self) -> None:
        if self.shown:
            self.progress.start()

    def stop(self) -> None:
        if self.shown:
            self.progress.stop()
            self.shown = False

    def update(self, ended: int, counts: dict[str, int], rate: float) -> None:
        if not self.shown:
            return
        text = "  ".join(
            f"{name} {counts.get(name, 0)}" for name in ("done", "failed", "running", "waiting")
        )
        self.progress.update(self.task, completed=ended, counts=text, rate=f"{rate:.1f}/s")

    def write(self, text: str, *, stderr: bool) -> None:
        """Job output: above the bar when it shares our terminal, else straight through."""
        if not text:
            return
        if self.shown and (stderr or sys.stdout.isatty()):
            self.console.out(text if text.endswith("\n") else text + "\n", end="")
            return
        target = sys.stderr if stderr else sys.stdout
        target.write(text)
        target.flush()


class Run:
    """Submitting the items and following their jobs to the end."""

    def __init__(
        self,
        c: client.Client,
        items: list[Item],
        run_id: str,
        halt: fanout.Halt | None,
        *,
        quiet: bool,
        tag: bool,
        joblog: TextIO | None,
    ) -> None:
        self.c = c
        self.items = items
        self.run_id = run_id
        self.halt = halt
        self.quiet = quiet
        self.tag = tag
        self.joblog = joblog
        self.next_to_submit = 0
        self.open: dict[int, Item] = {}  # job id → item, for jobs not ended yet
        self.failed: list[Item] = []
        self.ended = 0
        self.ended_now: list[Item] = []  # ended, not reported yet
        self.readers = concurrent.futures.ThreadPoolExecutor(READERS)
        self.stopping: str | None = None  # "soon" or "now" once halted or told to
        self.halted = False
        self.submit_paused_until = 0.0
        self.rotation = 0
        self.started = time.monotonic()
        self.submitted_in: float | None = None
        self.cut_off: list[Item] = []  # a batch that may have been made (Ctrl-C, a 503)
        self.submit_troubles = 0  # submissions in a row that failed and may be retried

    # -- the loop

    def go(self, display: Display, *, kill_on_exit: bool) -> int:
        """Submit, follow, summarize; the exit code."""
        self.display = display
        display.start()
        try:
            self._loop()
        except KeyboardInterrupt:
            display.stop()
            self._interrupted(kill_on_exit)
            self._summary()
            return exits.RET_INTERRUPTED
        except client.ClientError:
            display.stop()
            self._left_running()  # the error itself is reported as any other
            raise
        except BrokenPipeError:  # our reader went away (`| head`): as a pipeline expects
            display.stop()
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self._left_running()
            return RET_BROKEN_PIPE
        finally:
            display.stop()
            self.readers.shutdown(wait=False, cancel_futures=True)
        self._summary()
        first = self.failed[0].job.get("exit_code") if self.failed else None
        return fanout.exit_code(
            len(self.failed),
            halted_by=self.halt if self.halted else None,
            first_code=first if isinstance(first, int) else None,
        )

    def _loop(self) -> None:
        pause, troubles = POLL_MIN, 0
        while self._submitting() or self.open:
            before = self.ended
            # Retried only where no input can run twice (see _submit_failed).
            self._submit_some()
            try:
                self._poll()
                self._report()
                troubles = 0
            except (client.ConnectionFailed, client.ApiError) as exc:
                # A server restarting, or its database: keep following for a while.
                troubles += 1
                if not _transient(exc) or troubles > PATIENCE:
                    raise
            self._show()
            if not (self._submitting() or self.open):
                return
            changed = self.ended != before
            pause = POLL_MIN if changed else min(pause * 1.5, POLL_MAX)
            time.sleep(pause)

    def _submitting(self) -> bool:
        return self.stopping is None and self.next_to_submit < len(self.items)

    def _submit_some(self) -> None:
        slice_end = time.monotonic() + SUBMIT_SLICE
        while self._submitting() and time.monotonic() < slice_end:
            if time.monotonic() < self.submit_paused_until:
                return
            if self.cut_off and not self._look_for_cut_off():
                return
            batch = self.items[self.next_to_submit : self.next_to_submit + BATCH]
            try:
                made = self.c.submit_batch([item.spec for item in batch])
            except KeyboardInterrupt:
                self.cut_off = batch  # its jobs may exist: Ctrl-C looks for them
                raise
            except client.ClientError as exc:
                self._submit_failed(exc, batch)
                return
            self.submit_troubles = 0
            for item, job in zip(batch, made, strict=True):
                item.job_id = int(job["id"])
                self.open[item.job_id] = item
                self._observe(item, job)
            self.next_to_submit += len(batch)
            self._show()
        if self.next_to_submit >= len(self.items) and self.submitted_in is None:
            self.submitted_in = time.monotonic() - self.started

    def _submit_failed(self, exc: client.ClientError, batch: list[Item]) -> None:
        """Submit the batch again later, where that cannot run an input twice; else raise.

        Over a submitter's limits, or with no connection made, nothing was submitted. A
        503 (the server without its database) is an answer, so its transaction is over:
        whether it made the jobs is looked up before they are sent again. Any other
        failure (a timeout, a cut connection) may have made them, or may yet: it ends the
        run, saying which jobs go on.
        """
        self.submit_paused_until = time.monotonic() + 1.0
        if isinstance(exc, client.ApiError) and exc.code in ("rate_limited", "waiting_limit"):
            return  # go on following, submit the rest as jobs end
        unsent = isinstance(exc, client.ConnectionFailed) and isinstance(
            exc.__cause__, httpx.ConnectError
        )
        answered = isinstance(exc, client.ApiError) and exc.status == 503
        self.submit_troubles += 1
        if not (unsent or answered) or self.submit_troubles > PATIENCE:
            raise exc
        if answered:
            self.cut_off = batch

    def _look_for_cut_off(self) -> bool:
        """Whether submitting may go on: the jobs of a batch that failed are found (or
        known not to exist)."""
        try:
            self._find_cut_off()
        except client.ClientError as exc:
            self.submit_troubles += 1
            if not _transient(exc) or self.submit_troubles > PATIENCE:
                raise
            self.submit_paused_until = time.monotonic() + 1.0
            return False
        self.cut_off = []
        return True

    def _poll(self) -> None:
        """One look at the unfinished jobs: the oldest WINDOW, and WINDOW more in turn."""
        ids = sorted(i for i, item in self.open.items() if not item.awaiting_retry)
        rest = ids[WINDOW:]
        chunk: list[int] = []
        if rest:
            start = (self.rotation * WINDOW) % len(rest)
            chunk = rest[start : start + WINDOW]
            self.rotation += 1
        asked = ids[:WINDOW] + chunk
        seen: set[int] = set()
        found = self.c.jobs_by_id(asked) if asked else []
        for job in sorted(found, key=lambda j: int(j["id"])):
            seen.add(int(job["id"]))
            item = self.open.get(int(job["id"]))
            if item is not None:
                self._observe(item, job)
        for gone in set(asked) - seen:  # deleted meanwhile
            item = self.open.get(gone)
            if item is not None and not item.ended:
                self._end(item, {**item.job, "state": "deleted"})
        self._find_retries()

    def _find_retries(self) -> None:
        waiting = {i: item for i, item in self.open.items() if item.awaiting_retry}
        if not waiting:
            return
        for job in self.c.retries_of(sorted(waiting)):
            item = waiting.pop(int(job.get("retry_of") or 0), None)
            if item is None or item.job_id is None:
                continue
            del self.open[item.job_id]
            item.job_id, item.awaiting_retry = int(job["id"]), False
            self.open[item.job_id] = item
            self._observe(item, job)
        # A retry is queued in the transaction that ends its job, and that end was seen
        # by an earlier request: a job with none has ended for good (its worker could not
        # record how it ended, so it was not retried; or its retry was deleted).
        for item in waiting.values():
            item.awaiting_retry = False
            self._end(item, item.job)

    # -- one job

    def _observe(self, item: Item, job: dict[str, Any]) -> None:
        item.job, item.state = job, str(job["state"])
        if item.state in UNFINISHED:
            if self._should_kill(item):
                self._kill(item)
            return
        if item.state in ("failed", "lost") and int(job.get("attempt") or 1) <= int(
            job.get("retries") or 0
        ):
            item.awaiting_retry = True  # its next attempt is already queued
            return
        self._end(item, job)

    def _end(self, item: Item, job: dict[str, Any]) -> None:
        item.ended, item.state, item.job = True, str(job["state"]), job
        if item.job_id is not None:
            self.open.pop(item.job_id, None)
        self.ended += 1
        self.ended_now.append(item)

    def _report(self) -> None:
        """Output, joblog line and failure count of the jobs that just ended, in the order
        they ended; their outputs are read a few at a time."""
        while self.ended_now:
            batch, self.ended_now = self.ended_now, []
            outputs = self.readers.map(self._output, batch)
            for item, (out, err) in zip(batch, outputs, strict=True):
                for text, stderr in ((out, False), (err, True)):
                    shown = fanout.tag_lines(text, item.value) if self.tag else text
                    self.display.write(shown, stderr=stderr)
                # GNU parallel logs the jobs it ran: one killed before it started (by
                # --halt or Ctrl-C) has no line, so `parallel --resume` would run it.
                never_ran = item.kill_asked and not item.job.get("started_at")
                if self.joblog is not None and not never_ran:
                    line = fanout.joblog_line(item.seq, item.job, item.command)
                    print(line, file=self.joblog, flush=True)
                if item.state != "done" and not item.kill_asked:
                    self._failed(item)

    def _failed(self, item: Item) -> None:
        self.failed.append(item)
        if self.halt and self.stopping is None:
            if self.halt.reached(len(self.failed), len(self.items)):
                self.halted = True
                self._stop(self.halt.when)

    def _output(self, item: Item) -> tuple[str, str]:
        """The job's stdout and stderr, whole ("" with --quiet)."""
        total = int(item.job.get("output_bytes") or 0)
        if self.quiet or total <= 0 or item.job_id is None:
            return "", ""
        out, out_bytes = self._read(item.job_id, "stdout", total)
        err, _ = self._read(item.job_id, "stderr", total - out_bytes)
        return out, err

    def _read(self, job_id: int, stream: client.Stream, at_most: int) -> tuple[str, int]:
        """A stream of a job's output, whole (it has at most ``at_most`` bytes)."""
        pieces, offset = [], 0
        while offset < at_most:
            try:
                text, next_offset, _ = self.c.log(job_id, stream, offset)
            except client.ApiError:
                break  # deleted meanwhile
            if next_offset <= offset:
                break
            pieces.append(text)
            offset = next_offset
        return "".join(pieces), offset

    # -- stopping

    def _stop(self, when: str) -> None:
        """No more submissions; kill what should not run on (now: everything left)."""
        self.stopping = when
        for item in list(self.open.values()):
            if self._should_kill(item):
                self._kill(item)

    def _should_kill(self, item: Item) -> bool:
        if self.stopping is None or item.kill_asked or item.awaiting_retry:
            return False
        return self.stopping == "now" or item.state in NOT_STARTED

    def _kill(self, item: Item) -> None:
        item.kill_asked = True
        if item.job_id is None:
            return
        try:
            job = self.c.kill(item.job_id)
        except client.ApiError as exc:
            if exc.status in (404, 409):  # ended or deleted meanwhile: the poll sees it
                return
            raise
        if job.get("state") not in UNFINISHED:
            self._end(item, job)

    def _interrupted(self, kill_on_exit: bool) -> None:
        with contextlib.suppress(client.ClientError, KeyboardInterrupt):
            self._find_cut_off()  # a second Ctrl-C skips the look
        left = [item for item in self.open.values() if not item.ended]
        err = formatting.err()
        if not left:
            return
        what = f"{_jobs(len(left))} not ended"
        if not kill_on_exit:
            kill_on_exit = _ask_on_terminal(f"Kill the {what}?")
        if kill_on_exit:
            self.stopping = "now"
            try:
                for item in left:
                    with contextlib.suppress(client.ClientError):
                        self._kill(item)
                with contextlib.suppress(client.ClientError):
                    self._report()  # the joblog lines of those that ended at once
            except KeyboardInterrupt:  # a second Ctrl-C: stop asking the server
                self._left_running(" (killing was interrupted)")
                return
            err.print(f"asked to kill the {escape(what)}")
            return
        self._left_running(", or use --kill-on-exit next time")

    def _find_cut_off(self) -> None:
        """The jobs of a batch whose answer was lost (Ctrl-C, a 503), if the server made
        them: the run's newest, newer than any we know, made in one transaction in the batch's
        order (so, by id, the batch's items)."""
        if not self.cut_off:
            return
        known = max(self.open, default=0)
        for item in self.items[: self.next_to_submit]:
            known = max(known, item.job_id or 0)
        made: list[dict[str, Any]] = []
        for job in self.c.jobs(label=f"{RUN_LABEL}={self.run_id}", page_size=BATCH):
            if int(job["id"]) <= known or len(made) == len(self.cut_off):
                break
            if job.get("retry_of") is None:  # a retry is never part of a batch
                made.append(job)
        if len(made) != len(self.cut_off):  # none: the batch never got there
            return
        made.sort(key=lambda job: int(job["id"]))
        for item, job in zip(self.cut_off, made, strict=True):
            item.job_id, item.job, item.state = int(job["id"]), job, str(job["state"])
            self.open[item.job_id] = item
        self.next_to_submit += len(self.cut_off)

    def _left_running(self, hint: str = "") -> None:
        left = sorted(i.job_id for i in self.open.values() if i.job_id is not None)
        if not left:
            return
        what = f"{_jobs(len(left))} not ended"
        formatting.err().print(
            f"[yellow]{escape(what)} go on (label {RUN_LABEL}={escape(self.run_id)}, ids "
            f"{left[0]} to {left[-1]}); stop one with `jobbalancer kill ID`{hint}[/]"
        )

    # -- what it looks like

    def counts(self) -> dict[str, int]:
        counts = {"done": 0, "failed": 0, "running": 0, "waiting": 0}
        for item in self.items:
            if item.ended:
                counts["done" if item.state == "done" else "failed"] += 1
            elif item.state in ("running", "assigned"):
                counts["running"] += 1
            elif item.state != "unsubmitted":
                counts["waiting"] += 1
        return counts

    def _show(self) -> None:
        if self.display.shown:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            self.display.update(self.ended, self.counts(), self.ended / elapsed)

    def _summary(self) -> None:
        err = formatting.err()
        by_state: dict[str, int] = {}
        for item in self.items:
            state = item.state if item.ended else "not ended"
            if item.state == "unsubmitted":
                state = "not submitted"
            by_state[state] = by_state.get(state, 0) + 1
        order = sorted(by_state, key=lambda s: (s != "done", s))
        parts = ", ".join(f"{by_state[s]} {s}" for s in order)
        elapsed = time.monotonic() - self.started
        total = len(self.items)
        submitted = (
            f"submitted in {self.submitted_in:.1f} s; " if self.submitted_in is not None else ""
        )
        err.print(
            f"{_jobs(total, '')}: {escape(parts)} in {elapsed:.1f} s "
            f"({submitted}label {RUN_LABEL}={escape(self.run_id)})"
        )
        if self.halted:
            err.print(f"[yellow]halted after {len(self.failed)} failed (--halt)[/]")
        for item in sorted(self.failed, key=lambda i: i.seq)[:SHOWN_FAILURES]:
            err.print(
                f"[red]failed[/] job {item.job_id} ({escape(_how(item.job))}): {escape(item.value)}"
            )
        if len(self.failed) > SHOWN_FAILURES:
            more = len(self.failed) - SHOWN_FAILURES
            err.print(f"… and {more} more failed (--joblog FILE lists every job)")


def _ask_on_terminal(question: str) -> bool:
    """A y/N question on the controlling terminal, which is still the user's when stdin
    holds the inputs (`find … | jobbalancer parallel`); no without a terminal."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:  # no controlling terminal (a service, cron, a detached session)
        return False
    try:
        os.write(tty, f"{question} [y/N]: ".encode())
        answer = os.read(tty, 1024).decode(errors="replace")  # the terminal gives a line
    except KeyboardInterrupt:
        os.write(tty, b"\n")
        return False
    except OSError:
        return False
    finally:
        os.close(tty)
    return answer.strip().lower() in ("y", "yes")


def _jobs(count: int, kind: str = "submitted ") -> str:
    return f"{count} {kind}job{'' if count == 1 else 's'}"


def _transient(exc: client.ClientError) -> bool:
    """An error that may pass: the server unreachable, or without its database."""
    return isinstance(exc, client.ConnectionFailed) or (
        isinstance(exc, client.ApiError) and exc.status in (502, 503, 504)
    )


def _how(job: dict[str, Any]) -> str:
    state = str(job.get("state"))
    if state == "failed" and job.get("exit_code") is not None:
        return f"exit code {job['exit_code']}"
    if job.get("error"):
        return f"{state}: {job['error']}"
    return state

"""The worker loop: register, heartbeat, pick up assigned jobs, report, drain.

Deciding and reporting live here; running a process is the runner's
(:mod:`jobbalancer.worker.runner`), batching output the sink's
(:mod:`jobbalancer.worker.output`). Each job gets a thread that starts its process,
waits for it, and reports the outcome through the job manager.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TypeVar

import psutil
import sqlalchemy as sa

from jobbalancer import __version__, balancer, db, errors, jobs, procsec, registry, settings
from jobbalancer.settings import Settings, WorkerSettings
from jobbalancer.worker import runner, uids
from jobbalancer.worker.output import OutputSink

log = logging.getLogger(__name__)
T = TypeVar("T")
PID_RECORD_DELAY = 0.5  # seconds a job runs before its pid is written on its own


DYNAMIC = "dynamic"  # run_as: each job a uid of its own (worker/uids.py)


def check_privileges(ws: WorkerSettings) -> None:
    """Refuse to run jobs as root unless told to; check that run_as can be used."""
    if ws.run_as == DYNAMIC:
        if os.geteuid() != 0:
            raise errors.ConfigError(
                "only root can give each job a uid of its own: start the worker as root "
                "(jobs still run unprivileged) or drop --run-as dynamic"
            )
        return
    if ws.run_as:
        try:
            user = pwd.getpwnam(ws.run_as)
        except KeyError:
            raise errors.ConfigError(f"run_as user {ws.run_as!r} does not exist") from None
        if user.pw_uid == 0:
            raise errors.RootRefused("run_as must name an unprivileged user, not root")
        if os.geteuid() != 0 and os.geteuid() != user.pw_uid:
            raise errors.ConfigError(
                f"only root can run jobs as {ws.run_as!r}: start the worker as root "
                "(jobs still run unprivileged) or drop --run-as"
            )
        return
    if os.geteuid() == 0 and not ws.allow_root:
        raise errors.RootRefused()


def isolation(ws: WorkerSettings) -> str:
    """What a job of this worker can reach, in a line for its start-up log."""
    if ws.run_as == DYNAMIC:
        return (
            f"jobs run as uids of their own ({ws.dynamic_uids}): a job cannot read, "
            "signal or trace other jobs or the worker"
        )
    if ws.run_as:
        return (
            f"jobs all run as user {ws.run_as!r}: a job can read the environment and "
            "files of other running jobs and signal them (--run-as dynamic isolates "
            "them)"
        )
    if os.geteuid() == 0:
        return (
            "JOBS RUN AS ROOT (--allow-root): a job can reach everything on this host, "
            "the worker's settings and other jobs included"
        )
    return (
        f"jobs run as the worker's own user (uid {os.geteuid()}): a job can read other "
        "running jobs and everything of that user (its files, a SQLite database it "
        "owns) and signal the worker; it cannot read the worker's memory or "
        "environment. Start the worker as root with --run-as dynamic to isolate jobs"
    )


def machine_stats() -> registry.Stats:
    memory = psutil.virtual_memory()
    return registry.Stats(
        load=round(os.getloadavg()[0], 2),
        cpu_count=psutil.cpu_count() or None,
        memory_total=int(memory.total),
        memory_available=int(memory.available),
    )


@dataclass
class _Running:
    job: jobs.Job
    process: runner.JobProcess | None = None
    stopping_reason: str | None = None


@dataclass
class _Trouble:
    """A job's end that failed to be recorded (not because the database was away)."""

    tries: int = 0
    not_before: float = 0.0  # monotonic time of the next try
    error: str = "unknown"  # the last failure, said if the job is recorded as failed


@dataclass(frozen=True)
class _Report:
    """A job that ended, waiting to be recorded with the others that ended meanwhile."""

    job: jobs.Job
    token: str
    state: jobs.State
    error: str | None
    outcome: runner.Outcome
    pid: int | None


class Worker:
    """One worker process: ``Worker(settings).run()`` until drained or killed."""

    def __init__(self, settings_: Settings, engine: sa.Engine | None = None) -> None:
        self.settings = settings_
        self.ws = settings_.worker
        self._own_engine = engine is None
        self.engine = engine or db.connect(settings_.database_url, pool_size=4)
        self.name = self.ws.name
        self.worker_id = 0
        self.session = ""
        self.owner = ""
        self.tunables = settings.Tunables()
        self.sink = OutputSink(
            self.engine,
            flush_interval=self.ws.flush_interval,
            flush_bytes=self.ws.flush_bytes,
            max_buffer_bytes=self.ws.buffer_max_bytes,
        )
        self._running: dict[int, _Running] = {}
        self._started: list[tuple[int, str, int, float]] = []  # (job, token, pid, when)
        self._reports: list[_Report] = []  # ended jobs not recorded yet, oldest first
        self._job_queue: queue.SimpleQueue[jobs.Job] = queue.SimpleQueue()
        self._idle_threads = 0  # job threads waiting on _job_queue
        self._poll_failing_since: float | None = None
        self._report_failing_since: float | None = None
        self._report_trouble: dict[int, _Trouble] = {}  # ends that failed to be recorded
        self._lock = threading.Lock()
        self._wake = threading.Event()  # something to do: a job ended, or poll now
        self._poll_now = threading.Event()  # told that jobs were assigned or are to be killed
        self._draining = threading.Event()
        self._hard_stop = threading.Event()
        self._signals = 0
        self._heartbeat_thread: threading.Thread | None = None
        self._listener = db.WakeListener(self.engine, lambda: self.worker_id, self._woken)
        self._claim_in_one = db.writable_ctes(self.engine)
        self._uid_pool: uids.UidPool | None = None

    # -- the whole life ----------------------------------------------------------------

    def run(self, *, burst: bool = False) -> int:
        """Work until drained (SIGTERM) or killed (a second signal); the exit code.

        ``burst``: run what is assigned now and whatever that frees up, then return
        (for tests: no sleeping and hoping).
        """
        check_privileges(self.ws)
        # So that no job, even one of the worker's own uid, reads its environment or memory.
        procsec.make_undumpable()
        runner.become_subreaper()
        if self.ws.run_as == DYNAMIC and self._uid_pool is None:
            try:
                self._uid_pool = uids.UidPool(uids.UidRange.parse(self.ws.dynamic_uids))
            except uids.UidError as exc:
                raise errors.ConfigError(str(exc)) from exc
        self._install_signal_handlers()
        self._retry(lambda: db.upgrade(self.engine), "upgrade the schema")
        self._register()
        self._clean_up_after_predecessor()
        self.sink.start()
        self._listener.start()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, name="heartbeat", daemon=True
        )
        self._heartbeat_thread.start()
        log.info("worker %s (id %d) is online", self.name, self.worker_id)
        log.log(logging.WARNING if self.ws.run_as != DYNAMIC else logging.INFO,
                "isolation: %s", isolation(self.ws))  # fmt: skip
        try:
            self._loop(burst)
        finally:
            self._shutdown()
        return 0

    def _loop(self, burst: bool) -> None:
        """Record ended jobs as soon as they end (taking new ones for the freed slots in
        the same transaction); poll when told to (a wake-up) or when the adaptive poll
        interval is up."""
        interval = self.ws.poll_min
        next_poll = 0.0
        while not self._draining.is_set():
            self._wake.clear()
            reported = self._flush_reports()
            found = False
            if burst or self._poll_now.is_set() or time.monotonic() >= next_poll:
                woken = self._poll_now.is_set()
                self._poll_now.clear()
                found = self._poll(woken)
                interval = self.ws.poll_min if found else min(interval * 2, self.ws.poll_max)
                next_poll = time.monotonic() + interval
            if burst and not found and not reported and not self._running:
                return
            self._wake.wait(max(0.0, next_poll - time.monotonic()))
        self._drain()

    def _woken(self) -> None:
        self._poll_now.set()
        self._wake.set()

    def stop(self, *, kill: bool = False) -> None:
        """Stop taking jobs; with ``kill``, also kill the running ones."""
        self._draining.set()
        if kill:
            self._hard_stop.set()
            self._kill_all("the worker was stopped")
        self._wake.set()

    # -- registration and heartbeat ----------------------------------------------------

    def _register(self) -> None:
        stats = machine_stats()
        host = socket.gethostname()
        if not self.name:
            self.name = self._retry(lambda: self._free_name(host), "choose a worker name")

        def register() -> tuple[int, str]:
            with db.write(self.engine) as conn:
                ids = registry.register(
                    conn, name=self.name, host=host, worker_class=self.ws.worker_class,
                    max_jobs=self.ws.max_jobs, pid=os.getpid(), version=__version__,
                    stats=stats,
                )  # fmt: skip
                self.tunables = settings.load_tunables(conn)
                # A worker joining is a slot freeing up: fill it at once.
                balancer.assign_waiting(conn, worker_id=ids[0])
                return ids

        self.worker_id, self.session = self._retry(register, "register")

    def _clean_up_after_predecessor(self) -> None:
        """Kill what jobs of an earlier run of this worker left running, and remove their
        temp dirs: a worker killed with SIGKILL cannot clean up after its jobs, which were
        recovered (lost, retried elsewhere) when it registered again."""
        self.owner = runner.owner_tag(self.name, str(self.engine.url))
        killed, removed = runner.clean_up_after(self.owner)
        if killed or removed:
            log.warning(
                "an earlier run of %s left %d job process(es) running and %d temp dir(s); "
                "removed them", self.name, killed, removed,
            )  # fmt: skip

    def _free_name(self, host: str) -> str:
        """The host name, or host-2, host-3… when a live worker on this host has it."""
        with db.read(self.engine) as conn:
            taken = {w.name: w for w in registry.list_all(conn) if w.name.startswith(host)}
        for n in range(1, 1000):
            name = host if n == 1 else f"{host}-{n}"
            other = taken.get(name)
            if other is None or other.state == "offline" or other.host != host:
                return name
            if other.pid is not None and not psutil.pid_exists(other.pid):
                return name  # our own earlier incarnation: the same worker
        raise errors.ConfigError("could not find a free worker name; pass --name")

    def _heartbeat_loop(self) -> None:
        while not self._hard_stop.wait(self.ws.heartbeat_interval):
            # Descendants that escaped their job and re-parented to us end as zombies here.
            runner.reap_orphans()
            try:
                self._heartbeat()
            except Exception as exc:
                log.warning("heartbeat failed (%s); retrying", exc)

    def _heartbeat(self) -> None:
        stats = machine_stats()
        with db.write(self.engine) as conn:
            state = registry.heartbeat(conn, self.worker_id, self.session, stats)
            self.tunables = settings.load_tunables(conn)
        if state is None and not self._draining.is_set():
            self._lost_session()

    def _lost_session(self) -> None:
        # We were declared offline (silent too long) or another process took our name:
        # our jobs were recovered elsewhere, so stop them and come back as a new session.
        log.error(
            "worker %s lost its registration; stopping its jobs and re-registering", self.name
        )
        self._kill_all("the worker lost its registration")
        self._register()

    # -- picking up jobs ---------------------------------------------------------------

    def _poll(self, woken: bool = False) -> bool:
        """Start newly assigned jobs and pass on kill requests; True if there was any.

        ``woken``: we were told there is something for us, so look and claim in one write
        transaction (a round trip less to the start of the job); otherwise look first in
        a read-only one, which on SQLite does not take the write lock. On PostgreSQL
        one statement outside a transaction claims and looks, woken or not (a poll is
        then one round trip).
        """
        claimed: list[jobs.Job] | None = None
        try:
            if self._claim_in_one:
                with db.one_statement(self.engine) as conn:
                    claimed, todo = jobs.claim_for_worker(conn, self.worker_id)
            elif woken:
                with db.write(self.engine) as conn:
                    todo = jobs.for_worker(conn, self.worker_id)
                    claimed = [
                        job for job in self._fresh(todo)
                        if jobs.claim(conn, job.id, self.worker_id, job.token or "")
                    ]  # fmt: skip
            else:
                with db.read(self.engine) as conn:
                    todo = jobs.for_worker(conn, self.worker_id)
        except Exception as exc:
            if self._poll_failing_since is None:
                self._poll_failing_since = time.monotonic()
                log.warning("cannot poll for jobs (%s); running jobs go on, retrying", exc)
            return False
        if self._poll_failing_since is not None:
            away = time.monotonic() - self._poll_failing_since
            log.warning("polling for jobs works again after %.1f s", away)
            self._poll_failing_since = None
        self._record_pids()
        for job in todo:
            with self._lock:
                current = self._running.get(job.id)
            if job.state == jobs.State.RUNNING and current is not None:
                self._pass_kill(current)
        if claimed is None:
            claimed = self._claim(self._fresh(todo))
        for job in claimed:
            self._start_thread(job)
        return bool(todo or claimed)

    def _fresh(self, todo: list[jobs.Job]) -> list[jobs.Job]:
        """The assigned jobs we have not started."""
        with self._lock:
            return [j for j in todo if j.state == jobs.State.ASSIGNED and j.id not in self._running]

    def _pass_kill(self, current: _Running) -> None:
        if current.process is not None and current.stopping_reason is None:
            current.stopping_reason = "killed by request"
            current.process.kill()

    def _claim(self, assigned: list[jobs.Job]) -> list[jobs.Job]:
        """assigned → running for all of them in one transaction; those we got."""
        if not assigned:
            return []

        def claim() -> list[jobs.Job]:
            with db.write(self.engine) as conn:
                return [
                    job for job in assigned
                    if jobs.claim(conn, job.id, self.worker_id, job.token or "")
                ]  # fmt: skip

        try:
            return self._retry(claim, "claim jobs")
        except Exception as exc:
            log.warning("could not claim jobs (%s); they stay assigned", exc)
            return []

    def _record_pids(self) -> None:
        """Write the pids of jobs running for a while, all in one transaction (a short
        job records its pid with its result, saving a write)."""
        settled = time.monotonic() - PID_RECORD_DELAY
        with self._lock:
            started = [(j, t, p) for j, t, p, at in self._started if at <= settled]
            self._started = [s for s in self._started if s[3] > settled and s[0] in self._running]
        if not started:
            return

        def record() -> None:
            with db.write(self.engine) as conn:
                for job_id, token, pid in started:
                    jobs.set_pid(conn, job_id, token, pid)

        self._try(record, "record job pids")

    def _start_thread(self, job: jobs.Job) -> None:
        """Hand the job to an idle job thread, starting one if none is idle (threads are
        kept: starting a thread waits until it runs, a slow step on a busy machine)."""
        with self._lock:
            self._running[job.id] = _Running(job)
            spawn = self._idle_threads == 0
            if not spawn:
                self._idle_threads -= 1
        self._job_queue.put(job)
        if spawn:
            threading.Thread(target=self._job_thread, name="job", daemon=True).start()

    def _job_thread(self) -> None:
        while True:
            report = self._run_job(self._job_queue.get())
            with self._lock:
                # Idle from the moment its report is seen: the main loop that records it
                # then hands the next job to this thread, not to a new one.
                self._idle_threads += 1
                self._reports.append(report)
            self._wake.set()

    # -- one job -------------------------------------------------------------------------

    def _run_job(self, job: jobs.Job) -> _Report:
        """Run a job; its end, for the main loop to record. The job stays in
        ``_running`` (holding its slot) until its end is in the database."""
        try:
            return self._run_claimed(job)
        except Exception as exc:
            # Whatever went wrong, the job must not stay "running" behind anyone's back.
            log.exception("job %d: unexpected error in the worker", job.id)
            outcome = runner.Outcome.start_failed(f"worker error: {exc}")
            return self._make_report(job, outcome, None)

    def _run_claimed(self, job: jobs.Job) -> _Report:
        assert job.token is not None
        tunables = self.tunables
        self.sink.open(job.id, tunables.max_log_bytes)
        process = runner.JobProcess(self._run_spec(job, tunables), self._on_output(job.id))
        try:
            pid = process.start()
        except runner.StartError as exc:
            return self._make_report(job, runner.Outcome.start_failed(str(exc)), None)
        with self._lock:
            self._running[job.id].process = process
            self._started.append((job.id, job.token, pid, time.monotonic()))
        if self._hard_stop.is_set():
            process.kill()
        return self._make_report(job, process.wait(), pid)

    def _run_spec(self, job: jobs.Job, tunables: settings.Tunables) -> runner.RunSpec:
        return runner.RunSpec(
            job_id=job.id,
            command=job.command,
            interpreter=job.interpreter,
            script=job.script_content,
            params=job.params,
            env=job.env,
            watchdog=job.watchdog or None,
            kill_grace=tunables.kill_grace,
            run_as=self.ws.run_as if self.ws.run_as not in ("", DYNAMIC) else None,
            uid_pool=self._uid_pool,
            path=self.ws.job_path,
            owner=self.owner,
            cgroup=self.ws.cgroups,
        )

    def _on_output(self, job_id: int) -> Callable[[str, bytes], None]:
        def on_output(stream: str, data: bytes) -> None:
            self.sink.write(job_id, stream, data)

        return on_output

    def _make_report(self, job: jobs.Job, outcome: runner.Outcome, pid: int | None) -> _Report:
        state, error = self._judge(job, outcome)
        return _Report(job, job.token or "", state, error, outcome, pid)

    def _flush_reports(self) -> bool:
        """Record every job that ended since the last call, with its last output, in one
        transaction; in the same transaction take waiting jobs for the freed slots, and
        start them. True if anything was recorded."""
        now = time.monotonic()
        with self._lock:
            reports = [r for r in self._reports if self._due(r.job.id, now)]
        if not reports:
            return False
        take = not self._draining.is_set()

        def record(conn: sa.Connection, kept: dict[int, int]) -> tuple[list[int], list[jobs.Job]]:
            stale = [r.job.id for r in reports if not self._finish(conn, r, kept[r.job.id])]
            fresh = []
            if take:
                fresh = balancer.take_for_worker(conn, self.worker_id)
            return stale, fresh

        try:
            stale, fresh = self.sink.finish_many([r.job.id for r in reports], record)
        except db.UNAVAILABLE as exc:
            # The database is away: keep the reports (and their output) and try again.
            if self._report_failing_since is None:
                self._report_failing_since = time.monotonic()
                log.warning("cannot record ended jobs (%s); retrying", exc)
            return False
        except Exception:
            log.exception("could not record %d ended jobs together; one by one", len(reports))
            (stale, later), fresh = self._report_singly(reports), []
            reports = [r for r in reports if r.job.id not in later]
        if self._report_failing_since is not None:
            away = time.monotonic() - self._report_failing_since
            log.warning("recording ended jobs works again after %.1f s", away)
            self._report_failing_since = None
        for job_id in stale:
            log.warning("job %d ended but was no longer this worker's; result dropped", job_id)
        done = {r.job.id for r in reports}
        for job_id in done:
            self._report_trouble.pop(job_id, None)
        with self._lock:
            self._reports = [r for r in self._reports if r.job.id not in done]
            for job_id in done:
                self._running.pop(job_id, None)
        for job in fresh:
            self._start_thread(job)
        return True

    def _report_singly(self, reports: list[_Report]) -> tuple[list[int], set[int]]:
        """Record each job's end on its own, after recording them together failed for a
        reason other than the database being away: one bad report must not hold up the
        others. Returns the ids no longer this worker's, and those to try again later.

        A report that keeps failing is tried again later and later (up to every 30 s);
        after _REPORT_TRIES tries the job is recorded as ``failed``, saying why, without
        a retry (it may well have done its work), rather than left ``running``.
        """
        stale: list[int] = []
        later: set[int] = set()
        for r in reports:
            job_id = r.job.id
            trouble = self._report_trouble.get(job_id) or _Trouble()

            def record(conn: sa.Connection, kept: int, r: _Report = r) -> bool:
                return self._finish(conn, r, kept)

            try:
                if trouble.tries >= _REPORT_TRIES:
                    recorded = self._record_as_failed(r, trouble.error)
                elif self.sink.finish(job_id, record):
                    recorded = True
                else:
                    stale.append(job_id)
                    continue
            except db.UNAVAILABLE as exc:
                log.warning("job %d: cannot record its end (%s); retrying", job_id, exc)
                later.add(job_id)
                continue
            except Exception as exc:
                log.exception(
                    "job %d: could not record its end (try %d)", job_id, trouble.tries + 1
                )
                trouble.error = _describe(exc)
                recorded = None
            if recorded is None:  # try again, later
                trouble.not_before = time.monotonic() + min(0.5 * 2**trouble.tries, 30.0)
                trouble.tries += 1
                self._report_trouble[job_id] = trouble
                later.add(job_id)
            elif not recorded:
                stale.append(job_id)
        return stale, later

    def _due(self, job_id: int, now: float) -> bool:
        """Whether a job's end is to be recorded now (not waiting after failed tries)."""
        trouble = self._report_trouble.get(job_id)
        return trouble is None or trouble.not_before <= now

    def _record_as_failed(self, r: _Report, why: str) -> bool | None:
        """The last resort for a job whose end cannot be recorded: ``failed``, saying why,
        with no retry; with its output if that can still be written, else without. False
        if no longer ours; None if even that failed (then it is tried again later)."""
        failed = dataclasses.replace(
            r,
            state=jobs.State.FAILED,
            error=f"the worker could not record how this job ended ({why})",
        )

        def record(conn: sa.Connection, kept: int) -> bool:
            return self._finish(conn, failed, kept, retry=False)

        try:
            return self.sink.finish(r.job.id, record)
        except Exception:
            log.exception("job %d: recording it with its output failed too; without", r.job.id)
        try:
            with db.write(self.engine) as conn:
                recorded = self._finish(conn, failed, None, retry=False)
        except Exception:
            log.exception("job %d: its end cannot be recorded; trying again later", r.job.id)
            return None
        self.sink.discard(r.job.id)  # recorded without its output: it is not kept
        return recorded

    def _finish(
        self, conn: sa.Connection, r: _Report, kept: int | None, *, retry: bool = True
    ) -> bool:
        return jobs.finish(
            conn, r.job.id, r.token, r.state, exit_code=r.outcome.exit_code,
            signal=r.outcome.signal, error=r.error, output_bytes=kept, pid=r.pid, retry=retry,
        )  # fmt: skip

    def _judge(self, job: jobs.Job, outcome: runner.Outcome) -> tuple[jobs.State, str | None]:
        if outcome.reason == "start_failed":
            return jobs.State.FAILED, outcome.error or "the job could not start"
        if outcome.reason == "timeout":
            return jobs.State.TIMEOUT, f"watchdog: ran longer than {job.watchdog:g} s"
        if outcome.reason == "killed":
            with self._lock:
                running = self._running.get(job.id)
            reason = running.stopping_reason if running else None
            return jobs.State.KILLED, reason or "killed"
        if outcome.exit_code == 0:
            return jobs.State.DONE, None
        if outcome.signal is not None:
            name = signal.Signals(outcome.signal).name if outcome.signal in _SIGNALS else ""
            return jobs.State.FAILED, f"ended by signal {outcome.signal} {name}".strip()
        return jobs.State.FAILED, None

    # -- stopping ------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.warning("%s: draining (running jobs finish; again to kill them)",
                        signal.Signals(signum).name)  # fmt: skip
            self.stop()
        else:
            log.warning("%s again: killing running jobs and exiting", signal.Signals(signum).name)
            self.stop(kill=True)

    def _drain(self) -> None:
        def draining() -> None:
            with db.write(self.engine) as conn:
                # Under the assign lock, so no balancer hands us a job after this.
                db.lock_row(conn, "assign")
                registry.set_state(conn, self.worker_id, self.session, "draining")
                jobs.unassign_worker(conn, self.worker_id)

        self._try(draining, "mark the worker draining")
        while True:
            self._wake.clear()
            self._flush_reports()
            with self._lock:
                left = len(self._running)
                unreported = left - len(self._reports)
            if not left:
                break
            if self._hard_stop.is_set() and self._signals > 1 and not unreported:
                break  # told twice to go, and the database is away: recovery handles them
            self._wake.wait(0.2)

    def _kill_all(self, reason: str) -> None:
        with self._lock:
            running = list(self._running.values())
        for item in running:
            if item.stopping_reason is None:
                item.stopping_reason = reason
            if item.process is not None:
                item.process.kill()

    def _shutdown(self) -> None:
        self._hard_stop.set()
        self._try(self._flush_reports, "record ended jobs")
        self._listener.stop()
        self.sink.stop()

        def offline() -> None:
            with db.write(self.engine) as conn:
                db.lock_row(conn, "assign")
                registry.set_state(conn, self.worker_id, self.session, "offline")
                jobs.unassign_worker(conn, self.worker_id)

        self._try(offline, "mark the worker offline")
        log.info("worker %s stopped", self.name)
        if self._own_engine:
            self.engine.dispose()

    # -- database access with retries --------------------------------------------------

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        """Call ``fn`` until it works: the database may be away for a while."""
        delay, warned = 0.1, False
        while True:
            try:
                return fn()
            except db.UNAVAILABLE as exc:
                if self._hard_stop.is_set() and self._signals > 1:
                    raise
                if not warned:
                    log.warning("cannot %s (%s); retrying with backoff", what, exc)
                    warned = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _try(self, fn: Callable[[], object], what: str) -> None:
        try:
            fn()
        except Exception as exc:
            log.warning("could not %s: %s", what, exc)


_SIGNALS = {s.value for s in signal.Signals}
# Tries to record a job's end that failed otherwise, before it is recorded as failed.
_REPORT_TRIES = 3


def _describe(exc: Exception) -> str:
    """An error in a line, for a job's record: a database error's own message, never the
    statement and parameters (a fencing token, output) SQLAlchemy adds to it."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}"[:300] if text else type(cause).__name__

"""The worker loop, the coordinator: pick up assigned jobs, run each in a thread, free
its slot once its end is recorded, drain.

Deciding lives here. Being registered and heartbeating is the presence's
(:mod:`jobbalancer.worker.presence`), recording job ends the reports'
(:mod:`jobbalancer.worker.reports`), running a process the runner's
(:mod:`jobbalancer.worker.runner`), batching output the sink's
(:mod:`jobbalancer.worker.output`). Each job gets a thread that starts its process,
waits for it, and hands its end to the reports.
"""

from __future__ import annotations

import logging
import os
import pwd
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TypeVar

import sqlalchemy as sa

from jobbalancer import db, errors, jobs, procsec, registry, settings, vault
from jobbalancer.settings import Settings, WorkerSettings
from jobbalancer.worker import capacity, cgroups, fence, runner, uids
from jobbalancer.worker.output import OutputSink
from jobbalancer.worker.presence import Presence
from jobbalancer.worker.reports import Report, Reports, Stop

log = logging.getLogger(__name__)
T = TypeVar("T")
PID_RECORD_DELAY = 0.5  # seconds a job runs before its pid is written on its own
_NOT_STARTED = "not started: its worker was cut off from the database"
_AWAY = (
    "the database is away: not marking the worker offline (the server does after worker_timeout)"
)


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


@dataclass
class _Running:
    job: jobs.Job
    process: runner.JobProcess | None = None
    stop: Stop | None = None  # why the worker stopped it, once it did


def _load_key(config: Settings) -> tuple[vault.Key | None, str | None]:
    """This worker's key for secrets, or why it has none that works (the worker runs on:
    only jobs with secrets need it, and they fail saying so)."""
    try:
        return vault.from_settings(config), None
    except errors.ConfigError as exc:
        log.error("secret key: %s; jobs that use secrets will fail here", exc.message)
        return None, exc.message


def _with_secret_args(job: jobs.Job, values: dict[str, str]) -> tuple[str, ...]:
    """The job's params with those that name a secret (``secret_args``) replaced by its value."""
    if not job.secret_args:
        return job.params
    params = list(job.params)
    for index, name in job.secret_args.items():
        if 0 <= index < len(params):
            params[index] = values[name]
        else:
            raise vault.Unusable(f"secret {name!r} is for param {index}, which the job lacks")
    return tuple(params)


class _Interrupted(BaseException):
    """SIGTERM/SIGINT when there is nothing to finish: before the worker is online, or
    idle (or fenced: its jobs killed) while the database is away. Raised from the
    handler, so it also breaks out of a connect or query stuck on a dead link."""


class Worker:
    """One worker process: ``Worker(settings).run()`` until drained or killed."""

    def __init__(self, settings_: Settings, engine: sa.Engine | None = None) -> None:
        self.settings = settings_
        self.ws = settings_.worker
        self._own_engine = engine is None
        self.engine = engine or db.connect(settings_.database_url, pool_size=4)
        self.sink = OutputSink(
            self.engine,
            flush_interval=self.ws.flush_interval,
            flush_bytes=self.ws.flush_bytes,
            max_buffer_bytes=self.ws.buffer_max_bytes,
        )
        self._running: dict[int, _Running] = {}
        self._gpus_held: dict[int, tuple[int, ...]] = {}  # job id → its GPU indexes
        self._started: list[tuple[int, str, int, float]] = []  # (job, token, pid, when)
        self._job_queue: queue.SimpleQueue[jobs.Job] = queue.SimpleQueue()
        self._idle_threads = 0  # job threads waiting on _job_queue
        self._poll_failing_since: float | None = None
        self._lock = threading.Lock()  # guards _running, _started, _idle_threads
        self._wake = threading.Event()  # something to do: a job ended, or poll now
        self._poll_now = threading.Event()  # told that jobs were assigned or are to be killed
        self._draining = threading.Event()
        self._hard_stop = threading.Event()
        self._signals = 0
        self._starting = True  # until the main loop runs: a signal then stops at once
        self.presence = Presence(
            self.engine, self.ws, retry=self._retry, kill_all=self._kill_lost,
            draining=self._draining, stopped=self._hard_stop,
        )  # fmt: skip
        # Three heartbeats fit before the fence, whatever worker_timeout is now.
        self.presence.heartbeat_every = lambda: fence.heartbeat_every(
            self.ws.heartbeat_interval, self.presence.tunables.worker_timeout
        )
        self.fence = fence.Fence(
            lambda: self.presence.renewed_at,
            lambda: self.presence.tunables.worker_timeout,
            self._fence,
        )
        self.reports = Reports(self.engine, self.sink)
        self._listener = db.WakeListener(self.engine, lambda: self.presence.worker_id, self._woken)
        self._claim_in_one = db.writable_ctes(self.engine)
        self._uid_pool: uids.UidPool | None = None
        self._secret_key, self._key_problem = _load_key(settings_)

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
        if self.ws.run_as == DYNAMIC:
            # A uid is handed on: no setuid file its last holder left may make a job it.
            procsec.no_new_privs()
        if self.ws.run_as == DYNAMIC and self._uid_pool is None:
            try:
                self._uid_pool = uids.UidPool(uids.UidRange.parse(self.ws.dynamic_uids))
            except uids.UidError as exc:
                raise errors.ConfigError(str(exc)) from exc
        self._install_signal_handlers()
        try:
            self._go_online()
        except _Interrupted:
            log.warning("stopped before going online")
            self._stop_parts()
            return 0
        try:
            self._loop(burst)
        except _Interrupted:
            log.warning("stopped with nothing running and the database away")
        finally:
            self._shutdown()
        return self.presence.exit_code

    def _go_online(self) -> None:
        """Wait for the schema, register, start the helpers; a signal meanwhile raises
        _Interrupted (nothing runs yet, so nothing is to finish)."""
        self.presence.wait_for_schema()  # only the server or `db upgrade` migrates
        # Before registering: once the worker says it is online, nothing of its start reads
        # the database any more (a link cut from then on meets the loop and its fence).
        self._check_secret_key()
        self.presence.register()  # a dead predecessor's leftovers are cleaned up first
        self.sink.start()
        self._listener.start()
        self.presence.start_heartbeat()
        self.fence.start()
        log.info("worker %s (id %d) is online", self.presence.name, self.presence.worker_id)
        self._log_capacity()
        log.log(logging.WARNING if self.ws.run_as != DYNAMIC else logging.INFO,
                "isolation: %s", isolation(self.ws))  # fmt: skip
        self._starting = False

    def _loop(self, burst: bool) -> None:
        """Record ended jobs as soon as they end (taking new ones for the freed slots in
        the same transaction); poll when told to (a wake-up) or when the adaptive poll
        interval is up (poll_min after a timed poll found work, doubling up to poll_max
        otherwise)."""
        interval = self.ws.poll_min
        next_poll = 0.0
        while not self._draining.is_set():
            self._wake.clear()
            reported = self._flush_reports()
            found = False
            if not self.fence.can_start():
                pass  # fenced: take nothing until a heartbeat goes through again
            elif burst or self._poll_now.is_set() or time.monotonic() >= next_poll:
                woken = self._poll_now.is_set()
                self._poll_now.clear()
                found = self._poll(woken)
                # Work found by a timed poll: wake-ups may be missing, so poll sooner. Found
                # when woken, they work: polling only covers what they miss, and slows down.
                fast = found and not woken
                interval = self.ws.poll_min if fast else min(interval * 2, self.ws.poll_max)
                next_poll = time.monotonic() + interval
            if burst and not found and not reported and not self._running:
                return
            self._wake.wait(min(max(0.0, next_poll - time.monotonic()), fence.STEP))
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
                    claimed, todo = jobs.claim_for_worker(conn, self.presence.worker_id)
            elif woken:
                with db.write(self.engine) as conn:
                    todo = jobs.for_worker(conn, self.presence.worker_id)
                    claimed = [
                        job for job in self._fresh(todo)
                        if jobs.claim(conn, job.id, self.presence.worker_id, job.token or "")
                    ]  # fmt: skip
            else:
                with db.read(self.engine) as conn:
                    todo = jobs.for_worker(conn, self.presence.worker_id)
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
        if current.process is not None and current.stop is None:
            current.stop = Stop("killed by request")
            current.process.kill()

    def _claim(self, assigned: list[jobs.Job]) -> list[jobs.Job]:
        """assigned → running for all of them in one transaction; those we got."""
        if not assigned:
            return []

        def claim() -> list[jobs.Job]:
            with db.write(self.engine) as conn:
                return [
                    job for job in assigned
                    if jobs.claim(conn, job.id, self.presence.worker_id, job.token or "")
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
                # Idle from before its report is seen: the main loop that records it then
                # hands the next job to this thread, not to a new one.
                self._idle_threads += 1
            self.reports.add(report)
            self._wake.set()

    # -- one job -------------------------------------------------------------------------

    def _log_capacity(self) -> None:
        """Say what jobs may request here, and whether their requests are enforced."""
        offered = self.presence.capacity
        problem = cgroups.limits_problem() if self.ws.cgroups else "job cgroups are off"
        if problem is None:
            enforced = f"enforced by job cgroups ({cgroups.limits_files()})"
        else:
            enforced = f"NOT enforced ({problem}): requests only place jobs"
        log.info("offers %s; jobs' cpus and memory %s", capacity.describe(offered), enforced)

    def _take_gpus(self, job: jobs.Job) -> tuple[int, ...] | None:
        """The GPU indexes a job gets for itself (CUDA_VISIBLE_DEVICES). A job that asked
        for none on a worker with GPUs gets () (an empty CUDA_VISIBLE_DEVICES: it sees none,
        and cannot use the ones other jobs hold); None: the worker has no GPUs to hide."""
        if not job.gpus:
            return () if self.presence.capacity.gpus else None
        with self._lock:
            held = {d for devices in self._gpus_held.values() for d in devices}
            free = [d for d in range(self.presence.capacity.gpus or 0) if d not in held]
            devices = tuple(free[: job.gpus])
            self._gpus_held[job.id] = devices
        return devices

    def _run_job(self, job: jobs.Job) -> Report:
        """Run a job; its end, for the main loop to record. The job stays in
        ``_running`` (holding its slot) until its end is in the database."""
        try:
            return self._run_claimed(job)
        except Exception as exc:
            # Whatever went wrong, the job must not stay "running" behind anyone's back.
            log.exception("job %d: unexpected error in the worker", job.id)
            outcome = runner.Outcome.start_failed(f"worker error: {exc}")
            return self._report(job, outcome, None)
        finally:
            with self._lock:
                self._gpus_held.pop(job.id, None)

    def _run_claimed(self, job: jobs.Job) -> Report:
        assert job.token is not None
        tunables = self.presence.tunables
        self.sink.open(job.id, tunables.max_log_bytes)
        try:
            values = self._secrets(job)
            spec = self._run_spec(job, tunables, values)
        except vault.Unusable as exc:
            # Never run without the secret: the job fails saying why (never with a value).
            return self._report(job, runner.Outcome.start_failed(str(exc)), None)
        self.sink.mask(job.id, values.values())
        process = runner.JobProcess(spec, self._on_output(job.id))
        if not self.fence.can_start():
            with self._lock:
                self._running[job.id].stop = Stop(_NOT_STARTED, jobs.State.LOST)
            self.sink.discard(job.id)
            return self._report(job, runner.Outcome.start_failed(_NOT_STARTED), None)
        try:
            pid = process.start()
        except runner.StartError as exc:
            return self._report(job, runner.Outcome.start_failed(str(exc)), None)
        with self._lock:
            current = self._running[job.id]
            current.process = process
            self._started.append((job.id, job.token, pid, time.monotonic()))
            stop = current.stop  # stopped (fenced, say) while it was starting
        if stop is not None or self._hard_stop.is_set():
            process.kill(now=stop is not None and stop.state == jobs.State.LOST)
        return self._report(job, process.wait(), pid)

    def _report(self, job: jobs.Job, outcome: runner.Outcome, pid: int | None) -> Report:
        with self._lock:
            running = self._running.get(job.id)
        return Report.of(job, outcome, pid, running.stop if running else None)

    # -- freeing slots -------------------------------------------------------------------

    def _flush_reports(self) -> bool:
        """Record every job that ended since the last call (see :meth:`Reports.flush`):
        free their slots, and start the jobs taken for them. True if anything was
        recorded."""
        take = not self._draining.is_set() and self.fence.can_start()
        recorded = self.reports.flush(self.presence.worker_id, take=take)
        if recorded is None:
            return False
        done, fresh = recorded
        with self._lock:
            for job_id in done:
                self._running.pop(job_id, None)
        for job in fresh:
            self._start_thread(job)
        return True

    def _secrets(self, job: jobs.Job) -> dict[str, str]:
        """The values of the secrets the job names, checked again now (vault.resolve);
        vault.Unusable says why the job cannot have them."""
        names = vault.names_of(job.secret_env, job.secret_args)
        if not names:
            return {}
        if self._secret_key is None and self._key_problem is not None:
            raise vault.Unusable(f"this worker cannot read its secret key: {self._key_problem}")
        with db.read(self.engine) as conn:
            return vault.resolve(
                conn, self._secret_key, names, owner_id=job.user_id,
                worker_class=job.worker_class, job_id=job.id,
            )  # fmt: skip

    def _check_secret_key(self) -> None:
        """Say at the start what jobs with secrets will meet here."""
        try:
            with db.read(self.engine) as conn:
                stored = vault.stored_key_id(conn)
        except Exception:  # only a log line: the jobs check again
            return
        if self._secret_key is None:
            if stored is not None:
                why = self._key_problem or "no JOBBALANCER_SECRET_KEY and no secret key file"
                log.warning("jobs that use secrets fail on this worker: %s "
                            "(docs/operations.md, 'Secrets')", why)  # fmt: skip
        elif stored is not None and stored != self._secret_key.id:
            log.error(
                "this worker's secret key (id %s) is not the server's (id %s): jobs that "
                "use secrets fail on it (docs/operations.md, 'Secrets')",
                self._secret_key.id, stored,
            )  # fmt: skip

    def _run_spec(
        self, job: jobs.Job, tunables: settings.Tunables, values: dict[str, str] | None = None
    ) -> runner.RunSpec:
        values = values or {}
        return runner.RunSpec(
            job_id=job.id,
            command=job.command,
            interpreter=job.interpreter,
            script=job.script_content,
            params=_with_secret_args(job, values),
            env={**job.env, **{var: values[name] for var, name in job.secret_env.items()}},
            watchdog=job.watchdog or None,
            kill_grace=tunables.kill_grace,
            run_as=self.ws.run_as if self.ws.run_as not in ("", DYNAMIC) else None,
            uid_pool=self._uid_pool,
            path=self.ws.job_path,
            owner=self.presence.owner,
            cgroup=self.ws.cgroups,
            workdir=job.workdir,
            cpus=job.cpus,
            memory=job.memory,
            gpu_devices=self._take_gpus(job),
        )

    def _on_output(self, job_id: int) -> Callable[[str, bytes], None]:
        def on_output(stream: str, data: bytes) -> None:
            self.sink.write(job_id, stream, data)

        return on_output

    # -- stopping ------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        # No lock here: the handler runs on the main thread, which may hold it. Fenced, every
        # job was killed already (and none starts); the main thread may be stuck on the link.
        idle = not self._running or self.fence.fenced.is_set()
        if self._starting or (idle and self._db_away()):
            # Nothing to finish, and maybe stuck on a dead link: stop at once.
            log.warning("%s: stopping", signal.Signals(signum).name)
            self._draining.set()
            raise _Interrupted
        if self._signals == 1:
            log.warning("%s: draining (running jobs finish; again to kill them)",
                        signal.Signals(signum).name)  # fmt: skip
            self.stop()
        else:
            log.warning("%s again: killing running jobs and exiting", signal.Signals(signum).name)
            self.stop(kill=True)

    def _db_away(self) -> bool:
        """Whether the database seems away: polls fail, or no heartbeat went through for
        two heartbeat periods (the heartbeat thread may sit in a hung call)."""
        if self._poll_failing_since is not None or self.fence.fenced.is_set():
            return True
        silent = fence.clock() - self.presence.renewed_at
        return self.presence.renewed_at > 0 and silent > 2 * self.presence.heartbeat_every()

    def _drain(self) -> None:
        def draining() -> None:
            with db.write(self.engine) as conn:
                # Under the assign lock, so no balancer hands us a job after this.
                db.lock_row(conn, "assign")
                registry.set_state(conn, self.presence.worker_id, self.presence.session, "draining")
                jobs.unassign_worker(conn, self.presence.worker_id)

        if self._db_away():
            log.warning(_AWAY)
        else:
            self._try(draining, "mark the worker draining")
        while True:
            self._wake.clear()
            self._flush_reports()
            with self._lock:
                left = len(self._running)
            # Only this thread removes from _running: no end recorded meanwhile.
            unreported = left - self.reports.waiting()
            if not left:
                break
            if self._hard_stop.is_set() and self._signals > 1 and not unreported:
                break  # told twice to go, and the database is away: recovery handles them
            if self.fence.fenced.is_set() and not unreported:
                break  # all killed by the fence: the server's verdict records them (lost)
            self._wake.wait(0.2)

    def _kill_all(self, reason: str) -> None:
        self._stop_all(Stop(reason), now=False, discard=False)

    def _kill_lost(self, reason: str) -> None:
        """The presence found the registration lost: the jobs were recovered (lost and
        retried) already, so they die at once and their unwritten output goes with them."""
        self._stop_all(Stop(reason), now=True, discard=True)

    def _fence(self, age: float) -> None:
        """The lease ran out (see worker/fence.py): kill every job before the server may
        declare it lost, so no retry runs while it does. They end as lost."""
        timeout = self.presence.tunables.worker_timeout
        why = (f"its worker could not reach the database for {age:.1f} s and stopped it "
               f"before its worker_timeout ({timeout:g} s)")  # fmt: skip
        n = self._stop_all(Stop(why, jobs.State.LOST), now=True, discard=True)
        log.error(
            "fenced: no heartbeat for %.1f s (worker_timeout %g s, fence at %.1f s): killed "
            "%d job(s) with SIGKILL; they end as lost",
            age, timeout, fence.deadline(timeout), n,
        )  # fmt: skip

    def _stop_all(self, stop: Stop, *, now: bool, discard: bool) -> int:
        """Stop every running job (a job already stopped keeps its first reason, unless
        this one is a fence); how many."""
        with self._lock:
            running = list(self._running.values())
            for item in running:
                if item.stop is None or stop.state == jobs.State.LOST:
                    item.stop = stop
        for item in running:
            if discard:
                self.sink.discard(item.job.id)
            if item.process is not None:
                item.process.kill(now=now)
        return len(running)

    def _stop_parts(self) -> None:
        """Stop what the start got to: heartbeat, fence, listener, sink, engine."""
        self._hard_stop.set()
        self.fence.stop()
        self._stop_listener(wait=False)
        self.sink.stop()
        if self._own_engine:
            self.engine.dispose()

    def _stop_listener(self, *, wait: bool) -> None:
        if wait:
            self._listener.stop()
        else:
            # Its thread may sit in a connect to a dead link: it ends by itself, unwaited.
            threading.Thread(target=self._listener.stop, name="stop-listener", daemon=True).start()

    def _shutdown(self) -> None:
        self._hard_stop.set()
        self.fence.stop()
        away = self._db_away()
        if not away:
            self._try(self._flush_reports, "record ended jobs")
        self._stop_listener(wait=not away)
        self.sink.stop()
        if away:
            log.warning(_AWAY)
            log.info("worker %s stopped", self.presence.name)
            if self._own_engine:
                self.engine.dispose()
            return

        def offline() -> None:
            with db.write(self.engine) as conn:
                db.lock_row(conn, "assign")
                registry.set_state(conn, self.presence.worker_id, self.presence.session, "offline")
                jobs.unassign_worker(conn, self.presence.worker_id)

        self._try(offline, "mark the worker offline")
        log.info("worker %s stopped", self.presence.name)
        if self._own_engine:
            self.engine.dispose()

    # -- database access with retries --------------------------------------------------

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        """Call ``fn`` until it works: the database may be away for a while. Given up
        (the error raised) once told to stop with nothing left running, or told twice."""
        delay, warned = 0.1, False
        while True:
            try:
                return fn()
            except db.UNAVAILABLE as exc:
                if self._hard_stop.is_set() and self._signals > 1:
                    raise
                with self._lock:
                    idle = not self._running
                if self._draining.is_set() and idle:
                    raise
                if not warned:
                    log.warning("cannot %s (%s); retrying with backoff", what, exc)
                    warned = True
            # Woken by a stop; once draining, by a second signal (jobs still run).
            (self._hard_stop if self._draining.is_set() else self._draining).wait(delay)
            delay = min(delay * 2, 5.0)

    def _try(self, fn: Callable[[], object], what: str) -> None:
        try:
            fn()
        except Exception as exc:
            log.warning("could not %s: %s", what, exc)

"""Run one job's process: private directory, process group, watchdog, kill, output pipes.

How, and why this way (cgroups, gates, finding every descendant): docs/worker.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import glob
import hashlib
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psutil

from jobbalancer import procsec
from jobbalancer.worker import cgroups, jobenv, pipes, procs, spawn, uids

# Read here by callers and tests; they live where they are used.
from jobbalancer.worker.pipes import CHUNK_SIZE as CHUNK_SIZE
from jobbalancer.worker.spawn import SCRIPT_NAME as SCRIPT_NAME
from jobbalancer.worker.spawn import StartError as StartError
from jobbalancer.worker.spawn import owned_lock as _owned_lock
from jobbalancer.worker.spawn import owned_pids as _owned_pids

log = logging.getLogger(__name__)

JOB_ID_VAR: Final = "JOBBALANCER_JOB_ID"
RUN_TAG_VAR: Final = "JOBBALANCER_RUN_TAG"
OWNER_VAR: Final = "JOBBALANCER_JOB_OWNER"

_TICK: Final = 0.1  # longest sleep of the wait loop: bounds how late kill() is noticed
_COLLECT_EVERY: Final = 0.5  # how often the process tree is re-read
_DRAIN: Final = 0.5  # reading on after the tree is gone, for output still in the pipes
_GIVE_UP: Final = 5.0  # after SIGKILL, how long to wait for descendants stuck in the kernel
_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37
_SURE_TRIES: Final = 3  # reads of the worker's children before falling back to a /proc walk
_HAVE_PROC: Final = os.path.exists("/proc/self/stat")
_HAS_WAITID: Final = hasattr(os, "waitid")
_EXITED_NOWAIT: Final = os.WEXITED | os.WNOHANG | os.WNOWAIT if _HAS_WAITID else 0


@dataclass(frozen=True)
class RunSpec:
    """What to run for one job, and under which limits.

    Exactly one of ``command`` (run by ``/bin/sh -c``, ``params`` become ``$1``…) or
    ``script`` (written to a file and run as ``[interpreter, file, *params]``; without an
    interpreter the file is executed itself, so it needs a ``#!`` line) must be given.
    """

    job_id: int
    command: str | None
    interpreter: str | None
    script: str | None
    params: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    watchdog: float | None = None
    kill_grace: float = 5.0
    run_as: str | None = None
    # A uid of its own from this pool, instead of run_as (the worker runs as root).
    uid_pool: uids.UidPool | None = None
    # The job's PATH (unless its env sets one): where it and its interpreter are found.
    path: str = jobenv.DEFAULT_PATH
    # Who runs it (a worker's name): marks the job's processes and names its temp dir, so a
    # worker restarted after a crash can find what its dead predecessor left running.
    owner: str = ""
    # Track the job by a cgroup of its own where the host allows one (see cgroups.py).
    cgroup: bool = True
    # The job's working directory on this worker; None: its private temp dir.
    workdir: str | None = None
    # Placement: what it requested, enforced through its cgroup (cpu.max, memory.max; on
    # cgroup v1 hosts, cgroups of its own in the cpu and memory hierarchies);
    # the GPUs it holds (CUDA_VISIBLE_DEVICES; (): none, all hidden), None: left unset.
    cpus: float | None = None
    memory: int | None = None
    gpu_devices: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Outcome:
    """How a job ended.

    ``reason`` is ``"exited"``, ``"timeout"`` (watchdog), ``"killed"`` (kill()),
    ``"out_of_memory"`` (the OOM killer killed a process of it in its cgroup; ``error``
    says the limit) or ``"start_failed"`` (then ``error`` says why). ``exit_code`` is
    None when a signal ended the main process; ``signal`` is that signal's number.
    """

    exit_code: int | None
    signal: int | None
    reason: str
    error: str | None

    @classmethod
    def start_failed(cls, error: str) -> Outcome:
        return cls(exit_code=None, signal=None, reason="start_failed", error=error)


def _workdir_prefix(owner: str) -> str:
    # "@" ends the owner (worker names cannot hold it), so "a" never matches "a-1".
    return f"jobbalancer-{owner}@" if owner else "jobbalancer-"


def owner_tag(name: str, database_url: str) -> str:
    """What marks the jobs of worker ``name`` of the installation on ``database_url``.

    The name alone is not enough: two installations (or test runs) on one host may both
    have a worker "w", and a restarted "w" must never kill the other one's jobs. So the
    database (backend, host, port, database; never the password) is part of it.
    """
    import sqlalchemy as sa  # only here: the runner itself does not need the database

    url = sa.make_url(database_url)
    where = f"{url.get_backend_name()}://{url.host or ''}:{url.port or ''}/{url.database or ''}"
    digest = hashlib.sha256(where.encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.{digest}"


def clean_up_after(owner: str) -> tuple[int, int]:
    """Kill processes and remove temp dirs left by jobs of an earlier process of ``owner``
    that died with them running (SIGKILL, a crash). Call it before running any job as
    ``owner``: everything marked so then belongs to the dead predecessor, whose jobs were
    recovered elsewhere. Returns (processes killed, directories removed)."""
    if not owner:
        return 0, 0
    killed = cgroups.clean_up_after(owner)
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(OWNER_VAR) == owner:
                proc.kill()
                killed += 1
    removed = 0
    prefix = _workdir_prefix(owner)
    for path in Path(tempfile.gettempdir()).glob(f"{glob.escape(prefix)}*"):
        if path.is_dir() and not path.is_symlink():
            spawn.remove_dir(str(path))
            removed += 1
    return killed, removed


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux); True if it worked.

    Without it an orphan goes to init, where only the environment scan can find it.
    """
    libc = procs.libc()
    if libc is None:
        return False
    one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)
    result: int = libc.prctl(_PR_SET_CHILD_SUBREAPER, one, zero, zero, zero)
    return result == 0


def reap_orphans() -> None:
    """Collect the exit status of zombie children no running JobProcess owns.

    A subreaper inherits orphans; unless someone waits for them they stay zombies. Only
    zombies are waited for, one pid at a time: ``waitpid(-1)`` would also take the exit
    status of a job's main process away from its Popen.
    """
    with _owned_lock:
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        for child in children:
            if child.pid not in _owned_pids and procs.is_zombie(child):
                procs.reap(child.pid)


class JobProcess:
    """One job's process tree, from start until its last descendant is gone.

    ``start()`` launches it; ``wait()`` (in one thread) pumps its output to ``on_output``,
    enforces the watchdog and returns the :class:`Outcome`; ``kill()`` may be called from
    any thread. ``on_output(stream, data)`` gets ``"stdout"`` or ``"stderr"`` and the raw
    bytes as read.
    """

    def __init__(self, spec: RunSpec, on_output: pipes.OutputCallback) -> None:
        self._spec = spec
        self._on_output = on_output
        self._kill_requested = threading.Event()
        self._kill_now = threading.Event()  # no grace: SIGKILL at once
        self._tag = secrets.token_hex(8)
        self._run: _Run | None = None
        self._outcome: Outcome | None = None
        self._tmpdir: str | None = None  # the private directory, once made
        self._started_nothing = True  # no process of the job was created (yet)

    @property
    def pid(self) -> int | None:
        return self._run.proc.pid if self._run is not None else None

    def start(self) -> int:
        """Start the job and return its pid; raise StartError, leaving nothing behind."""
        if self._run is not None:
            raise RuntimeError("start() was already called")
        spec = self._spec
        _check_spec(spec)
        user = spawn.usable(jobenv.lookup_user, spec.run_as) if spec.run_as else None
        path = spec.env.get("PATH", spec.path)
        # Resolved before anything is created, so a missing interpreter leaves nothing;
        # any dynamic uid has the same rights as any other, so the lease can come later.
        checked_as = user or (spawn.ANY_DYNAMIC if spec.uid_pool else None)
        interpreter = (
            spawn.usable(jobenv.find_interpreter, spec.interpreter, path, checked_as)
            if spec.interpreter
            else None
        )
        if spec.workdir:
            spawn.usable(jobenv.check_workdir, spec.workdir, checked_as)
        lease = spawn.lease(spec.uid_pool) if spec.uid_pool else None
        try:
            return self._start(spec, user if lease is None else lease.identity, interpreter, lease)
        except BaseException:
            if self._run is None:
                # The uid first: its release kills what is left of the job, so nothing of
                # it can swap links in its directory while root removes that.
                if lease is not None:
                    lease.release(processes_gone=self._started_nothing)
                if self._tmpdir is not None:
                    spawn.remove_dir(self._tmpdir)
            raise

    def _start(
        self,
        spec: RunSpec,
        user: uids.Identity | None,
        interpreter: str | None,
        lease: uids.Lease | None,
    ) -> int:
        workdir = spawn.make_workdir(f"{_workdir_prefix(spec.owner)}{spec.job_id}-", user)
        self._tmpdir = workdir  # start() removes it if the start fails
        if lease is not None and user is not None:
            user = dataclasses.replace(user, home=workdir)  # its only home
        markers = {JOB_ID_VAR: str(spec.job_id), RUN_TAG_VAR: self._tag}
        if spec.owner:
            markers[OWNER_VAR] = spec.owner
        if spec.gpu_devices is not None:
            markers["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in spec.gpu_devices)
        env = jobenv.job_env(spec.env, user or jobenv.own_identity(), workdir, spec.path, markers)
        group = cgroups.create(spec.owner, spec.job_id, self._tag) if spec.cgroup else None
        limits = self._limits(group) if spec.cgroup and (spec.cpus or spec.memory) else None
        gate: spawn.Gate | None = None
        later: dict[str, str] = {}
        try:
            if group is not None or limits is not None:
                gate = spawn.Gate()
                # Nothing of the job's choosing may run before the gate: not even what the
                # loader or the shell would run as the shell starts (LD_PRELOAD…).
                later = _held_for_gate(env)
                env = {k: v for k, v in env.items() if k not in later}
            shell_gate = spawn.gate(later) if gate is not None else None
            argv = _argv(spec, interpreter, workdir, user, gate=shell_gate)
            # Never spec.workdir here: Popen enters cwd as root, before it switches to the
            # job's user, following links; the job's own shell enters it (see _argv).
            proc = spawn.popen(argv, env, workdir, user, stdin=gate.read_end if gate else None)
        except BaseException:
            if gate is not None:
                gate.close()
            if group is not None:
                group.remove()
            if limits is not None:
                limits.remove()
            raise
        self._started_nothing = False
        try:
            if group is not None:
                group = spawn.move_in(group, proc.pid)
            if limits is not None:
                limits = _move_into_limits(limits, proc.pid)
            if gate is not None:
                gate.open(later.values())
            tree = _Tree(spec.job_id, self._tag, proc.pid, group)
            self._run = _Run(proc, workdir, tree, self._on_output, lease)
            self._run.limits = limits
        except BaseException:
            _abandon(proc, group)
            if limits is not None:
                limits.remove()
            raise
        finally:
            if gate is not None:
                gate.close()
        return proc.pid

    def _limits(self, group: cgroups.JobCgroup | None) -> cgroups.V1Limits | None:
        """Enforce the job's cpus and memory: in its cgroup2 cgroup where the controllers
        are enabled, else in cgroup v1 cgroups of its own (returned, to join)."""
        spec = self._spec
        missed = group.limit(spec.cpus, spec.memory) if group is not None else ["cpus", "memory"]
        if not missed:
            return None
        limits, still = cgroups.create_v1(
            spec.owner, spec.job_id, self._tag,
            cpus=spec.cpus if "cpus" in missed else None,
            memory=spec.memory if "memory" in missed else None,
        )  # fmt: skip
        if still:
            log.debug("job %d: %s not enforced (no controller)", spec.job_id, still)
        return limits

    def wait(self) -> Outcome:
        """Block until the job and every descendant are gone; return how it ended."""
        if self._outcome is not None:
            return self._outcome
        run = self._run
        if run is None or run.finished:
            raise RuntimeError("wait() needs a started job")
        watch = _JobWatch(run, self._spec, self._kill_requested, self._kill_now)
        try:
            watch.supervise()
            run.pipes.drain(_DRAIN, _TICK)
        except BaseException:
            run.abort()  # e.g. on_output failed: the job must not outlive its supervision
            raise
        finally:
            returncode = run.finish()
        self._outcome = _outcome(returncode, watch.reason)
        ended = self._outcome
        # A process of it was killed for memory, and the job did not succeed anyway.
        if (
            run.oom_kills
            and self._spec.memory
            and ended.reason == "exited"
            and ended.exit_code != 0
        ):
            limit = _format_size(self._spec.memory)
            self._outcome = dataclasses.replace(
                self._outcome, reason="out_of_memory", error=f"out of memory (limit {limit})"
            )
        return self._outcome

    def kill(self, *, now: bool = False) -> None:
        """Ask wait() to terminate the job (reason "killed"); safe from any thread.

        ``now``: SIGKILL without the grace of SIGTERM first (a fenced worker: a retry may
        start elsewhere within seconds, and nobody could be told the job is still ending).
        """
        if now:
            self._kill_now.set()
        self._kill_requested.set()


# --- starting -------------------------------------------------------------------------


def _check_spec(spec: RunSpec) -> None:
    if (spec.command is None) == (spec.script is None):
        raise StartError(f"job {spec.job_id}: give exactly one of a command or a script")
    if spec.command is not None and spec.interpreter is not None:
        raise StartError(f"job {spec.job_id}: an interpreter goes with a script, not a command")


def _held_for_gate(env: Mapping[str, str]) -> dict[str, str]:
    """The variables a gated job's shell gets only from its gate (jobenv.after_gate), a
    line each; a start error if they cannot be given so (procsec.at_start_problem)."""
    problem = procsec.at_start_problem(env)
    if problem is not None:
        raise StartError(f"environment: {problem}")
    return jobenv.after_gate(env)


def _argv(
    spec: RunSpec,
    interpreter: str | None,
    workdir: str,
    user: uids.Identity | None,
    *,
    gate: str | None = None,
) -> list[str]:
    """The job's argv; ``gate``: the shell text it waits at first (spawn.gate), if gated."""
    gate = gate or ""
    # The job's workdir is entered by its shell, as its user: checked before the start,
    # the path may be a link swapped since, and root must never follow it (see popen).
    enter = f"cd -- {shlex.quote(spec.workdir)} || exit 126; " if spec.workdir else ""
    if spec.command is not None:
        # Params stay out of the command text: the shell sees them as "$1"…, never parses them.
        return ["/bin/sh", "-c", gate + enter + spec.command, "sh", *spec.params]
    if interpreter is None:
        spawn.usable(jobenv.check_shebang, spec.script or "", user)
    script = spawn.write_script(workdir, spec.script or "", user)
    head = [interpreter] if interpreter is not None else []
    if gate or enter:  # a shell that then becomes the script's own process
        return ["/bin/sh", "-c", gate + enter + 'exec "$0" "$@"', *head, script, *spec.params]
    return [*head, script, *spec.params]


# --- a running job --------------------------------------------------------------------


class _Run:
    """What start() leaves for wait(): the process, its pipes, its tree, its directory."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        workdir: str,
        tree: _Tree,
        on_output: pipes.OutputCallback,
        lease: uids.Lease | None = None,
    ) -> None:
        self.proc = proc
        self.lease = lease
        self.workdir = workdir
        self.started = time.monotonic()
        self.pipes = pipes.Pipes(proc, on_output)
        self.tree = tree
        self.finished = False
        self.oom_kills = 0  # processes of the job the OOM killer killed (cgroup only)
        self.limits: cgroups.V1Limits | None = None  # its cgroup v1 limits, if any
        self._pidfd = procs.open_pidfd(proc.pid)
        if self._pidfd is not None:
            self.pipes.add_wakeup(self._pidfd)  # so the end of the job wakes wait() at once

    def main_exited(self) -> bool:
        """Whether the main process has ended; it stays an unreaped zombie until finish()."""
        if not _HAS_WAITID:  # reaping now is the only way to know; the pgid may be reused
            if self.proc.poll() is None:
                return False
        else:
            with contextlib.suppress(ChildProcessError):
                if os.waitid(os.P_PID, self.proc.pid, _EXITED_NOWAIT) is None:
                    return False
        self._close_pidfd()  # a pidfd stays readable once the process ended
        return True

    def abort(self) -> None:
        """SIGKILL everything known, for when supervision itself failed.

        Returns once they are dead (or after _GIVE_UP): a signalled process dies only when
        it is next scheduled, and the caller reports the job over once this returns.
        """
        with contextlib.suppress(Exception):
            self.tree.scan(deep=True)
        self.tree.signal_all(signal.SIGKILL)
        deadline = time.monotonic() + _GIVE_UP
        while time.monotonic() < deadline:
            if not self.tree.in_cgroup() and not self.tree.alive():
                return
            time.sleep(0.01)

    def finish(self) -> int:
        """Reap the main process, release everything; return its returncode."""
        self.finished = True
        returncode = _reap_main(self.proc)
        self.tree.reap()
        self._close_pidfd()
        self.pipes.close()
        if self.tree.cgroup is not None:
            self.oom_kills = self.tree.cgroup.oom_kills()
        if self.limits is not None:
            sigkilled = returncode == -signal.SIGKILL
            self.oom_kills += self.limits.oom_kills(sigkilled=sigkilled)
            if not self.limits.remove():  # the worker's next start sweeps it
                log.warning("job cgroups %s still have processes", list(self.limits.paths.values()))
        emptied = self.tree.cgroup is not None and _remove_cgroup(self.tree.cgroup)
        if self.lease is not None:
            # An empty cgroup proves no process of the job is left; without one, every
            # process of its uid is killed before the uid goes back. Before the directory
            # goes: no process of the job may swap links in it while root removes it.
            self.lease.release(processes_gone=emptied)
        spawn.remove_dir(self.workdir)
        return returncode

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self.pipes.remove_wakeup(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class _JobWatch:
    """The wait loop of one job: output, watchdog, kill requests, and taking the tree down.

    Phases: running → SIGTERM sent (grace) → SIGKILL sent. A job also enters them when its
    main process exits on its own while descendants live on; its reason stays "exited".
    """

    def __init__(
        self,
        run: _Run,
        spec: RunSpec,
        kill_requested: threading.Event,
        kill_now: threading.Event | None = None,
    ) -> None:
        self._run = run
        self._kill_now = kill_now or threading.Event()
        self._grace = max(spec.kill_grace, 0.0)
        limit = spec.watchdog
        self._deadline = run.started + limit if limit is not None and limit > 0 else None
        self._kill_requested = kill_requested
        self.reason: str | None = None
        self._exited = False
        self._term_at: float | None = None
        self._sigkill_at: float | None = None
        self._sent: signal.Signals | None = None
        # No walk at once: a short job is over before one could find anything.
        self._next_scan = time.monotonic() + _COLLECT_EVERY

    def supervise(self) -> None:
        while not self._step():
            pass

    def _step(self) -> bool:
        """One turn of the loop; True once the main process and all descendants are gone."""
        self._run.pipes.pump(self._timeout())
        if not self._exited:
            self._exited = self._run.main_exited()
        now = time.monotonic()
        if now >= self._next_scan:
            self._scan(deep=self._term_at is not None)
        if self._term_at is None:
            return self._while_running(now)
        if self._sigkill_at is None:
            return self._while_terminating(now, self._term_at)
        return self._while_killed(now, self._sigkill_at)

    def _while_running(self, now: float) -> bool:
        if not self._exited:
            if self._kill_requested.is_set():
                self.reason = "killed"
            elif self._deadline is not None and now >= self._deadline:
                self.reason = "timeout"
            else:
                return False
        elif self._tree_gone(cheap=True):
            return True
        self._terminate(now)  # killed, timed out, or the main process left others behind
        return False

    def _while_terminating(self, now: float, term_at: float) -> bool:
        if now >= term_at + self._grace or self._kill_now.is_set():
            self._send(signal.SIGKILL)
            self._sigkill_at = now
            return False
        return self._exited and self._tree_gone()

    def _while_killed(self, now: float, sigkill_at: float) -> bool:
        if not self._exited:
            return False  # SIGKILL always ends it; its exit status is still to come
        if self._tree_gone():
            return True
        if now < sigkill_at + _GIVE_UP:
            return False
        pids = sorted(p.pid for p in self._run.tree.alive())
        log.warning("job pid %d: descendants %s survived SIGKILL", self._run.proc.pid, pids)
        return True

    def _terminate(self, now: float) -> None:
        self._term_at = now
        if self._kill_now.is_set():
            self._send(signal.SIGKILL)
            self._sigkill_at = now
            return
        self._send(signal.SIGTERM)

    def _send(self, sig: signal.Signals) -> None:
        self._scan(deep=True)  # right before signalling, so late forks and escapees are known
        self._sent = sig
        self._run.tree.signal_all(sig)

    def _scan(self, *, deep: bool) -> None:
        found = self._run.tree.scan(deep=deep)
        if self._sent is not None:
            procs.signal_each(found, self._sent)  # latecomers get what the others already got
        self._next_scan = time.monotonic() + _COLLECT_EVERY

    def _tree_gone(self, *, cheap: bool = False) -> bool:
        """Whether no process of the job is left; cheap allows skipping the /proc walk.

        Only a main process that exited on its own allows it. A job being killed or timed
        out is no short job worth sparing a walk, and there the walks find what to signal.
        """
        if self._run.tree.in_cgroup():
            return False  # one read of the cgroup's own answer
        # Empty (or no cgroup): the checks below also find a process that left it.
        if self._run.tree.alive():
            return False
        if cheap and self._run.tree.surely_gone():
            return True
        self._scan(deep=True)  # a last look before saying so
        return not self._run.tree.alive()

    def _timeout(self) -> float:
        now = time.monotonic()
        edges = [now + _TICK]
        if self._term_at is None and self._deadline is not None:
            edges.append(self._deadline)
        elif self._term_at is not None and self._sigkill_at is None:
            edges.append(self._term_at + self._grace)
        return max(min(edges) - now, 0.0)


def _abandon(proc: subprocess.Popen[bytes], group: cgroups.JobCgroup | None) -> None:
    """Undo a start that failed after the process was created (start() then releases
    the uid and removes the directory)."""
    if group is not None:
        group.kill()
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    _reap_main(proc)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    if group is not None:
        _remove_cgroup(group)


def _move_into_limits(limits: cgroups.V1Limits, pid: int) -> cgroups.V1Limits:
    """Move the job's main process, still at its gate, into its v1 cgroups. If that
    failed, the job runs without the limits it could not join; they are removed with the
    others at its end (one it joined cannot be removed before)."""
    try:
        limits.add(pid)
    except OSError as exc:
        log.warning("job pid %d: cannot enforce its limits in %s (%s)", pid, limits.paths, exc)
    return limits


def _remove_cgroup(group: cgroups.JobCgroup) -> bool:
    """Remove a job's cgroup once its processes are gone; one that survived SIGKILL (stuck
    in the kernel) keeps it, and the worker's next start cleans it up. True if removed."""
    if not group.remove():
        log.warning("job cgroup %s still has processes %s", group.path, group.pids())
        return False
    return True


def _format_size(size: int) -> str:
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} B"


def _reap_main(proc: subprocess.Popen[bytes]) -> int:
    """Reap a job's main process once it has exited, and stop owning it; its returncode."""
    if _HAS_WAITID:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # wait, but keep the zombie
    # Reaping takes a pid off the worker's child list, which _Tree.surely_gone() reads
    # under this lock: a pid vanishing mid-read can hide others from it.
    with _owned_lock:
        returncode = proc.wait()
        _owned_pids.discard(proc.pid)
    return returncode


def _outcome(returncode: int, reason: str | None) -> Outcome:
    if returncode < 0:
        return Outcome(exit_code=None, signal=-returncode, reason=reason or "exited", error=None)
    return Outcome(exit_code=returncode, signal=None, reason=reason or "exited", error=None)


# --- the process tree -----------------------------------------------------------------


class _Tree:
    """Every process known to belong to one job, except its main process."""

    def __init__(
        self, job_id: int, tag: str, leader: int, cgroup: cgroups.JobCgroup | None = None
    ) -> None:
        self._job_id = str(job_id)
        self._tag = tag
        self._leader = leader
        # With a cgroup of its own, everything of the job is in it: no /proc walks needed.
        self.cgroup = cgroup
        # The leader is our unreaped child, so its row is there; if not, scan() retries.
        row = _process_row(leader)
        self._born: float | None = row.born if row is not None else None
        # Orphans re-parent to the worker only if it was a subreaper all along.
        self._subreaper_at_start = _is_subreaper()
        self._known: dict[int, psutil.Process] = {}

    def scan(self, *, deep: bool) -> list[psutil.Process]:
        """Look for more of the job's processes; return those not known before.

        Shallow: descendants of the main process and of every known process. Deep also
        claims processes by session id and by JOBBALANCER_JOB_ID in their environment.
        A job in a cgroup: shallow is whatever its cgroup holds (no /proc walk); deep adds
        the above, for a process privileged enough to have moved itself out of it.
        """
        in_cgroup: set[int] = set()
        if self.cgroup is not None:
            in_cgroup = set(self.cgroup.pids()) - {self._leader}
            if not deep:
                return self._add(in_cgroup - self._known.keys())
        table = _process_table()
        if self._born is None:
            row = table.get(self._leader)
            if row is None:
                return self._add(in_cgroup - self._known.keys())
            self._born = row.born
        # Nothing started before the job's main process can be part of it.
        young = {pid: row for pid, row in table.items() if row.born >= self._born}
        young.pop(self._leader, None)
        pids = self._descendants(young) | in_cgroup
        if deep:
            pids |= {pid for pid, row in young.items() if self._claims(pid, row)}
        return self._add(pids - self._known.keys())

    def alive(self) -> list[psutil.Process]:
        return [proc for proc in self._known.values() if procs.is_alive(proc)]

    def in_cgroup(self) -> bool:
        """Whether the job's cgroup still holds a running process (its main process
        included); False without a cgroup, where only the other checks can tell."""
        return self.cgroup is not None and self.cgroup.populated()

    def surely_gone(self) -> bool:
        """Whether, judged from the worker's children alone, nothing of the job is left.

        Call it once the main process has exited and no known process is alive. False
        means "unsure": then walk /proc. The reasoning: while the worker is a subreaper,
        a process whose parent dies is re-parented to the nearest living ancestor that is
        a subreaper, which is one of the job's processes or the worker. So every living
        process of the job has an ancestor (maybe itself) that is a living child of the
        worker, was started after the main process, and is not a main process of any job.
        No such child: nothing is left.
        """
        if self._born is None or not self._subreaper_at_start or not _is_subreaper():
            return False
        # Held throughout: no main process is started or reaped meanwhile, so the owned
        # set matches the lists read, and no reap by this module can make a read skip.
        with _owned_lock:
            return _no_young_strays(self._born)

    def signal_all(self, sig: signal.Signals) -> None:
        if sig == signal.SIGKILL and self.cgroup is not None:
            self.cgroup.kill()  # all in it, even a process forking right now; and then
            # the group and every known process too, for one that moved out of it
        # The group id is the main pid, held by its zombie until finish(): never reused.
        alive = self.alive()
        for each in (sig, signal.SIGCONT) if sig == signal.SIGTERM else (sig,):
            # SIGCONT after SIGTERM: a stopped process would not act on SIGTERM before SIGKILL.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._leader, each)
            procs.signal_each(alive, each)

    def reap(self) -> None:
        """Wait for known descendants that became our zombies (we are their subreaper)."""
        if not self._known:
            return  # the usual short job: no need to queue for the lock behind a spawn
        me = os.getpid()
        with _owned_lock:
            for proc in self._known.values():
                with contextlib.suppress(psutil.Error):
                    if proc.ppid() == me and proc.pid not in _owned_pids and procs.is_zombie(proc):
                        procs.reap(proc.pid)

    def _descendants(self, young: Mapping[int, procs.Row]) -> set[int]:
        children: dict[int, list[int]] = {}
        for pid, row in young.items():
            children.setdefault(row.ppid, []).append(pid)
        found: set[int] = set()
        todo = [self._leader, *(proc.pid for proc in self.alive())]
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def _claims(self, pid: int, row: procs.Row) -> bool:
        if row.sid == self._leader:
            return True
        try:
            env = psutil.Process(pid).environ()
        except psutil.Error:  # gone, or not ours to read
            return False
        return env.get(JOB_ID_VAR) == self._job_id and env.get(RUN_TAG_VAR) == self._tag

    def _add(self, pids: Iterable[int]) -> list[psutil.Process]:
        added = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                self._known[pid] = proc
                added.append(proc)
        return added


def _process_table() -> dict[int, procs.Row]:
    """Parent, session and start time of every process, in one pass over /proc."""
    if not _HAVE_PROC:
        return procs.psutil_table()
    names = os.listdir("/proc")
    table = {}
    for name in names:
        if name.isdigit():
            row = procs.read_stat(name)
            if row is not None:
                table[int(name)] = row
    return table


def _process_row(pid: int) -> procs.Row | None:
    """One process's row, comparable with those of _process_table()."""
    if _HAVE_PROC:
        return procs.read_stat(str(pid))
    try:
        proc = psutil.Process(pid)
        return procs.Row(proc.ppid(), os.getsid(pid), proc.create_time())
    except (psutil.Error, OSError):
        return None


# --- the worker's own children --------------------------------------------------------


def _no_young_strays(born: float) -> bool:
    """Whether the worker has no running child started at or after born, except main
    processes of jobs; the caller holds _owned_lock. False also when unsure.

    Two reads of the child lists, with the states checked in between; a child that
    appears only in the second (say re-parented meanwhile) makes it start over. If the
    second adds nothing, every child the worker had when the second began was in the
    first and found ended, old or a main process; an ended process never runs again.
    So at that moment no stray ran, and with none running a job cannot grow a new one.
    """
    for _ in range(_SURE_TRIES):
        first = _worker_children()
        if first is None:
            continue
        strays = first.keys() - _owned_pids
        if any(first[pid] and _is_young(pid, born) for pid in strays):
            return False
        second = _worker_children()
        if second is not None and second.keys() - _owned_pids <= strays:
            return True
    return False


def _worker_children() -> dict[int, bool] | None:
    """The worker's children, each with whether it still runs; None if unsure.

    A process is the child of the thread that started it, so every thread's list is
    read. The kernel walks a list without holding a lock between entries: if a listed
    child is reaped (or a thread ends) during the read, it may skip others. So a read
    is trusted only if every pid it listed is still our child afterwards and the same
    threads are there.
    """
    if not _HAS_WAITID:
        return None
    try:
        threads = os.listdir("/proc/self/task")
        listed: list[int] = []
        # Orphans, and the children of a thread that ends, go to the first live thread
        # (listed first: the main thread). Read last, it also holds what moved meanwhile.
        for tid in reversed(threads):
            children = procs.read_file(f"/proc/self/task/{tid}/children")
            listed.extend(int(pid) for pid in children.split())
        if sorted(os.listdir("/proc/self/task")) != sorted(threads):
            return None
    except (OSError, ValueError):  # no /proc, or a kernel without the children files
        return None
    running = {}
    for pid in listed:
        try:
            running[pid] = os.waitid(os.P_PID, pid, _EXITED_NOWAIT) is None
        except ChildProcessError:
            return None  # reaped during the read
    return running


def _is_young(pid: int, born: float) -> bool:
    row = _process_row(pid)
    return row is None or row.born >= born  # unreadable: assume the worst


def _is_subreaper() -> bool:
    libc = procs.libc()
    if libc is None:
        return False
    flag, zero = ctypes.c_int(0), ctypes.c_ulong(0)
    result: int = libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), zero, zero, zero)
    return result == 0 and flag.value != 0

"""Run one job's process: private directory, process group, watchdog, kill, output pipes.

The worker loop decides *what* to run and records what happened; this module only runs
it. A job starts in a new session (so its process group is its own), in a private
temporary directory, with stdin on /dev/null and stdout/stderr on pipes, as its user
with a clean minimal environment (:mod:`jobenv`); given a pool (:mod:`uids`), under a uid
of its own, held from before its directory is made until everything of it is gone.

No orphan may survive its job, and a job can shed its process group (``setsid``,
double forks). Where the host allows, a job gets a cgroup of its own (see
:mod:`cgroups`): it holds every process of the job, so its list is the job's processes
and ``cgroup.kill`` ends them all. A command is gated so its shell starts nothing before
it is in the cgroup: it waits for a line on its stdin (a pipe), written once it is moved;
a script is started the same way, by a shell that then execs it.
Without a cgroup, descendants are found three ways, each covering the others' blind
spots:

* the process tree under the main process, re-read about every half second while the
  job runs, so a process that later leaves the group or loses its parent is still known;
* the session: everything the main process started without ``setsid`` keeps its session
  id, which is the main pid (the main process is kept as a zombie, ``WNOWAIT``, until the
  end, so that id cannot be reused meanwhile);
* the environment: ``JOBBALANCER_JOB_ID=<id>`` is inherited by everything the job starts
  unless it scrubs its environment. A random ``JOBBALANCER_RUN_TAG`` must match too:
  job ids are only unique within one database, and two installations (or test runs) on
  one host must never kill each other's jobs.

Only processes started after the main process are considered, so nothing older (the
worker, its parents, other jobs) can ever be claimed by mistake. A worker that calls
:func:`become_subreaper` also gets orphans re-parented to itself instead of to init;
:func:`reap_orphans` collects their exit status without stealing that of the jobs'
own main processes.

Walking all of /proc costs milliseconds, far more than a short job, so a job whose main
process exits on its own is first judged from the worker's own children (see
:meth:`_Tree.surely_gone`): in a subreaper, every survivor of a job descends from a live
child of the worker started after the job. Only when there is such a child, or when the
worker is no subreaper, are the walks above done; kills and timeouts always do them.
Non-owned children of the worker must only be reaped through this module (never with
``waitpid(-1)``), under ``_owned_lock``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import glob
import hashlib
import logging
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, TypeVar

import psutil

from jobbalancer.worker import cgroups, jobenv, uids

log = logging.getLogger(__name__)

JOB_ID_VAR: Final = "JOBBALANCER_JOB_ID"
RUN_TAG_VAR: Final = "JOBBALANCER_RUN_TAG"
OWNER_VAR: Final = "JOBBALANCER_JOB_OWNER"
CHUNK_SIZE: Final = 64 * 1024
SCRIPT_NAME: Final = "job-script"

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
# Put before a command run in a cgroup (a script is run by a shell doing the same, then
# exec'ing it): the shell waits for a line on stdin (a pipe the worker writes once it has
# moved the shell into the job's cgroup), then takes /dev/null as stdin. So nothing of
# the job can start outside its cgroup.
_GATE: Final = "read _; exec 0<>/dev/null; "

OutputCallback = Callable[[str, bytes], None]
T = TypeVar("T")

# Pids of main processes that a running JobProcess will reap itself (through Popen).
# reap_orphans() must never wait for these, or Popen would lose the exit status.
_owned_lock = threading.Lock()
_owned_pids: set[int] = set()


class StartError(Exception):
    """The job's process could not be started."""


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


@dataclass(frozen=True)
class Outcome:
    """How a job ended.

    ``reason`` is ``"exited"``, ``"timeout"`` (watchdog), ``"killed"`` (kill()) or
    ``"start_failed"`` (then ``error`` says why). ``exit_code`` is None when a signal
    ended the main process; ``signal`` is that signal's number.
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
            _remove_dir(str(path))
            removed += 1
    return killed, removed


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux); True if it worked.

    Without it an orphan goes to init, where only the environment scan can find it.
    """
    libc = _libc()
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
            if child.pid not in _owned_pids and _is_zombie(child):
                _reap(child.pid)


class JobProcess:
    """One job's process tree, from start until its last descendant is gone.

    ``start()`` launches it; ``wait()`` (in one thread) pumps its output to ``on_output``,
    enforces the watchdog and returns the :class:`Outcome`; ``kill()`` may be called from
    any thread. ``on_output(stream, data)`` gets ``"stdout"`` or ``"stderr"`` and the raw
    bytes as read.
    """

    def __init__(self, spec: RunSpec, on_output: OutputCallback) -> None:
        self._spec = spec
        self._on_output = on_output
        self._kill_requested = threading.Event()
        self._tag = secrets.token_hex(8)
        self._run: _Run | None = None
        self._outcome: Outcome | None = None
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
        user = _usable(jobenv.lookup_user, spec.run_as) if spec.run_as else None
        path = spec.env.get("PATH", spec.path)
        # Resolved before anything is created, so a missing interpreter leaves nothing;
        # any dynamic uid has the same rights as any other, so the lease can come later.
        checked_as = user or (_ANY_DYNAMIC if spec.uid_pool else None)
        interpreter = (
            _usable(jobenv.find_interpreter, spec.interpreter, path, checked_as)
            if spec.interpreter
            else None
        )
        lease = _lease(spec.uid_pool) if spec.uid_pool else None
        try:
            return self._start(spec, user if lease is None else lease.identity, interpreter, lease)
        except BaseException:
            if lease is not None and self._run is None:
                lease.release(processes_gone=self._started_nothing)
            raise

    def _start(
        self,
        spec: RunSpec,
        user: uids.Identity | None,
        interpreter: str | None,
        lease: uids.Lease | None,
    ) -> int:
        workdir = _make_workdir(f"{_workdir_prefix(spec.owner)}{spec.job_id}-", user)
        if lease is not None and user is not None:
            user = dataclasses.replace(user, home=workdir)  # its only home
        markers = {JOB_ID_VAR: str(spec.job_id), RUN_TAG_VAR: self._tag}
        if spec.owner:
            markers[OWNER_VAR] = spec.owner
        env = jobenv.job_env(spec.env, user or jobenv.own_identity(), workdir, spec.path, markers)
        group = cgroups.create(spec.owner, spec.job_id, self._tag) if spec.cgroup else None
        gate: _Gate | None = None
        try:
            if group is not None:
                gate = _Gate()
            argv = _argv(spec, interpreter, workdir, user, gated=gate is not None)
            proc = _spawn(argv, env, workdir, user, stdin=gate.read_end if gate else None)
        except BaseException:
            _remove_dir(workdir)
            if gate is not None:
                gate.close()
            if group is not None:
                group.remove()
            raise
        self._started_nothing = False
        try:
            if group is not None:
                group = _move_in(group, proc.pid)
            if gate is not None:
                gate.open()
            tree = _Tree(spec.job_id, self._tag, proc.pid, group)
            self._run = _Run(proc, workdir, tree, self._on_output, lease)
        except BaseException:
            _abandon(proc, workdir, group)
            raise
        finally:
            if gate is not None:
                gate.close()
        return proc.pid

    def wait(self) -> Outcome:
        """Block until the job and every descendant are gone; return how it ended."""
        if self._outcome is not None:
            return self._outcome
        run = self._run
        if run is None or run.finished:
            raise RuntimeError("wait() needs a started job")
        supervisor = _Supervisor(run, self._spec, self._kill_requested)
        try:
            supervisor.supervise()
            run.pipes.drain(_DRAIN)
        except BaseException:
            run.abort()  # e.g. on_output failed: the job must not outlive its supervision
            raise
        finally:
            returncode = run.finish()
        self._outcome = _outcome(returncode, supervisor.reason)
        return self._outcome

    def kill(self) -> None:
        """Ask wait() to terminate the job (reason "killed"); safe from any thread."""
        self._kill_requested.set()


# --- starting -------------------------------------------------------------------------


# What a program is checked against when the job gets a dynamic uid: none owns a file.
_ANY_DYNAMIC: Final = uids.Identity(uid=-1, gid=-1, name="dynamic", home="/")


def _usable(check: Callable[..., T], *args: object) -> T:
    """check(*args), its refusal as a StartError."""
    try:
        return check(*args)
    except jobenv.NotUsable as exc:
        raise StartError(str(exc)) from None


def _lease(pool: uids.UidPool) -> uids.Lease:
    try:
        return pool.acquire()
    except uids.UidError as exc:
        raise StartError(f"no uid for the job: {exc}") from exc


def _check_spec(spec: RunSpec) -> None:
    if (spec.command is None) == (spec.script is None):
        raise StartError(f"job {spec.job_id}: give exactly one of a command or a script")
    if spec.command is not None and spec.interpreter is not None:
        raise StartError(f"job {spec.job_id}: an interpreter goes with a script, not a command")


def _make_workdir(prefix: str, user: uids.Identity | None) -> str:
    try:
        path = tempfile.mkdtemp(prefix=prefix)
    except OSError as exc:
        raise StartError(f"cannot create the job's temporary directory: {exc}") from exc
    try:
        os.chmod(path, 0o700)  # mkdtemp already does, but a umask must not matter
        if user is not None:
            os.chown(path, user.uid, user.gid)
    except OSError as exc:
        _remove_dir(path)
        raise StartError(f"cannot prepare the job's temporary directory: {exc}") from exc
    return path


def _argv(
    spec: RunSpec,
    interpreter: str | None,
    workdir: str,
    user: uids.Identity | None,
    *,
    gated: bool = False,
) -> list[str]:
    if spec.command is not None:
        # Params stay out of the command text: the shell sees them as "$1"…, never parses them.
        command = _GATE + spec.command if gated else spec.command
        return ["/bin/sh", "-c", command, "sh", *spec.params]
    if interpreter is None:
        _usable(jobenv.check_shebang, spec.script or "", user)
    script = _write_script(workdir, spec.script or "", user)
    head = [interpreter] if interpreter is not None else []
    if gated:  # the same gate, in a shell that then becomes the script's own process
        return ["/bin/sh", "-c", _GATE + 'exec "$0" "$@"', *head, script, *spec.params]
    return [*head, script, *spec.params]


def _write_script(workdir: str, body: str, user: uids.Identity | None) -> str:
    path = os.path.join(workdir, SCRIPT_NAME)
    try:
        data = body.encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o500)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            os.fchmod(file.fileno(), 0o500)
            if user is not None:
                os.fchown(file.fileno(), user.uid, user.gid)
    except (OSError, UnicodeEncodeError) as exc:
        raise StartError(f"cannot write the job's script: {exc}") from exc
    return path


def _spawn(
    argv: list[str],
    env: dict[str, str],
    workdir: str,
    user: uids.Identity | None,
    *,
    stdin: int | None = None,
) -> subprocess.Popen[bytes]:
    # Switching identity needs privilege; running as oneself does not, so skip it then.
    ident = user if user is not None and user.uid != os.geteuid() else None
    try:
        # Registered under the lock before any reap_orphans() can see the child exit.
        with _owned_lock:
            proc = subprocess.Popen(  # noqa: S603 - argv list, no shell beyond the job's own
                argv,
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=env,
                start_new_session=True,
                close_fds=True,
                user=ident.uid if ident else None,
                group=ident.gid if ident else None,
                extra_groups=[] if ident else None,
            )
            _owned_pids.add(proc.pid)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise StartError(f"cannot start {argv[0]!r}: {exc}") from exc
    return proc


class _Gate:
    """The pipe a gated command waits on (see _GATE) until the worker opens it."""

    def __init__(self) -> None:
        try:
            self.read_end, self._write_end = os.pipe()
        except OSError as exc:
            raise StartError(f"cannot make a pipe for the job: {exc}") from exc
        self._closed = False

    def open(self) -> None:
        with contextlib.suppress(OSError):  # the shell is gone already: nothing to wait for
            os.write(self._write_end, b"\n")

    def close(self) -> None:
        """Idempotent; closing without open() lets the shell go on too (it reads nothing)."""
        if not self._closed:
            self._closed = True
            os.close(self.read_end)
            os.close(self._write_end)


def _move_in(group: cgroups.JobCgroup, pid: int) -> cgroups.JobCgroup | None:
    """Move the job's main process, still waiting at its gate, into its cgroup. None if
    that failed: then the job is tracked without one, which is removed."""
    try:
        group.add(pid)
    except OSError as exc:
        log.warning("job pid %d: cannot use its cgroup %s (%s)", pid, group.path, exc)
        group.remove()
        return None
    return group


# --- a running job --------------------------------------------------------------------


class _Run:
    """What start() leaves for wait(): the process, its pipes, its tree, its directory."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        workdir: str,
        tree: _Tree,
        on_output: OutputCallback,
        lease: uids.Lease | None = None,
    ) -> None:
        self.proc = proc
        self.lease = lease
        self.workdir = workdir
        self.started = time.monotonic()
        self.pipes = _Pipes(proc, on_output)
        self.tree = tree
        self.finished = False
        self._pidfd = _open_pidfd(proc.pid)
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
        _remove_dir(self.workdir)
        emptied = self.tree.cgroup is not None and _remove_cgroup(self.tree.cgroup)
        if self.lease is not None:
            # An empty cgroup proves no process of the job is left; without one, every
            # process of its uid is killed before the uid goes back.
            self.lease.release(processes_gone=emptied)
        return returncode

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self.pipes.remove_wakeup(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class _Supervisor:
    """The wait loop: output, watchdog, kill requests, and taking the tree down.

    Phases: running → SIGTERM sent (grace) → SIGKILL sent. A job also enters them when its
    main process exits on its own while descendants live on; its reason stays "exited".
    """

    def __init__(self, run: _Run, spec: RunSpec, kill_requested: threading.Event) -> None:
        self._run = run
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
        if now >= term_at + self._grace:
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
        self._send(signal.SIGTERM)
        self._term_at = now

    def _send(self, sig: signal.Signals) -> None:
        self._scan(deep=True)  # right before signalling, so late forks and escapees are known
        self._sent = sig
        self._run.tree.signal_all(sig)

    def _scan(self, *, deep: bool) -> None:
        found = self._run.tree.scan(deep=deep)
        if self._sent is not None:
            _signal(found, self._sent)  # latecomers get what the others already got
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


def _abandon(proc: subprocess.Popen[bytes], workdir: str, group: cgroups.JobCgroup | None) -> None:
    """Undo a start that failed after the process was created."""
    if group is not None:
        group.kill()
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    _reap_main(proc)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    _remove_dir(workdir)
    if group is not None:
        _remove_cgroup(group)


def _remove_cgroup(group: cgroups.JobCgroup) -> bool:
    """Remove a job's cgroup once its processes are gone; one that survived SIGKILL (stuck
    in the kernel) keeps it, and the worker's next start cleans it up. True if removed."""
    if not group.remove():
        log.warning("job cgroup %s still has processes %s", group.path, group.pids())
        return False
    return True


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


# --- output ---------------------------------------------------------------------------


class _Pipes:
    """The job's stdout and stderr, read without blocking and handed to on_output."""

    def __init__(self, proc: subprocess.Popen[bytes], on_output: OutputCallback) -> None:
        self._on_output = on_output
        self._selector = selectors.DefaultSelector()
        self._files: dict[int, IO[bytes]] = {}
        for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            if pipe is None:
                raise RuntimeError("the job's output pipes are missing")
            os.set_blocking(pipe.fileno(), False)
            self._selector.register(pipe.fileno(), selectors.EVENT_READ, stream)
            self._files[pipe.fileno()] = pipe

    @property
    def open(self) -> bool:
        return bool(self._files)

    def add_wakeup(self, fd: int) -> None:
        """Also wake pump() when fd becomes readable (nothing is read from it)."""
        self._selector.register(fd, selectors.EVENT_READ, None)

    def remove_wakeup(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def pump(self, timeout: float) -> None:
        """Wait up to timeout for output and deliver what arrived."""
        if not self._selector.get_map():
            time.sleep(timeout)  # both pipes closed: nothing to wait on but the clock
            return
        for key, _ in self._selector.select(timeout):
            if key.data is not None:
                self._read(key.fd, key.data)

    def drain(self, seconds: float) -> None:
        """Read what is left, until both pipes end or seconds pass.

        Once the tree is gone a pipe can still be held open by a process nobody could
        attribute to the job; waiting for its end would hang the worker.
        """
        deadline = time.monotonic() + seconds
        while self.open:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.pump(min(left, _TICK))

    def close(self) -> None:
        for fd in list(self._files):
            self._close(fd)
        self._selector.close()

    def _read(self, fd: int, stream: str) -> None:
        try:
            data = os.read(fd, CHUNK_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # an unreadable pipe is as good as a closed one
        if data:
            self._on_output(stream, data)
        else:
            self._close(fd)

    def _close(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)
        self._files.pop(fd).close()


# --- the process tree -----------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    ppid: int
    sid: int
    born: float  # start time, comparable only with rows from the same table


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
        return [proc for proc in self._known.values() if _is_alive(proc)]

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
            _signal(alive, each)

    def reap(self) -> None:
        """Wait for known descendants that became our zombies (we are their subreaper)."""
        if not self._known:
            return  # the usual short job: no need to queue for the lock behind a spawn
        me = os.getpid()
        with _owned_lock:
            for proc in self._known.values():
                with contextlib.suppress(psutil.Error):
                    if proc.ppid() == me and proc.pid not in _owned_pids and _is_zombie(proc):
                        _reap(proc.pid)

    def _descendants(self, young: Mapping[int, _Row]) -> set[int]:
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

    def _claims(self, pid: int, row: _Row) -> bool:
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


def _process_table() -> dict[int, _Row]:
    """Parent, session and start time of every process, in one pass over /proc."""
    if not _HAVE_PROC:
        return _psutil_table()
    names = os.listdir("/proc")
    table = {}
    for name in names:
        if name.isdigit():
            row = _read_stat(name)
            if row is not None:
                table[int(name)] = row
    return table


def _process_row(pid: int) -> _Row | None:
    """One process's row, comparable with those of _process_table()."""
    if _HAVE_PROC:
        return _read_stat(str(pid))
    try:
        proc = psutil.Process(pid)
        return _Row(proc.ppid(), os.getsid(pid), proc.create_time())
    except (psutil.Error, OSError):
        return None


def _read_stat(pid: str) -> _Row | None:
    try:
        data = _read_file(f"/proc/{pid}/stat")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    return _Row(ppid=int(fields[1]), sid=int(fields[3]), born=float(fields[19]))


def _psutil_table() -> dict[int, _Row]:
    # Without /proc (not Linux): slower, but the same information.
    table = {}
    for proc in psutil.process_iter(["ppid", "create_time"]):
        with contextlib.suppress(OSError):
            sid = os.getsid(proc.pid)
            table[proc.pid] = _Row(proc.info["ppid"], sid, proc.info["create_time"])
    return table


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
            children = _read_file(f"/proc/self/task/{tid}/children")
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
    libc = _libc()
    if libc is None:
        return False
    flag, zero = ctypes.c_int(0), ctypes.c_ulong(0)
    result: int = libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), zero, zero, zero)
    return result == 0 and flag.value != 0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, if it has prctl (Linux); loading it each time costs too much."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl  # noqa: B018 - a missing symbol raises AttributeError here, not later
    except (OSError, AttributeError):
        return None
    return libc


# --- small helpers --------------------------------------------------------------------


def _signal(procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def _is_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell: assume the worst


def _is_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _read_file(path: str) -> bytes:
    # Without open()'s buffered wrapper: /proc files are read by the hundred.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts = []
        while part := os.read(fd, CHUNK_SIZE):
            parts.append(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, or a kernel older than 5.3
        return None


def _remove_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)  # most jobs leave it empty: one call, where rmtree walks and opens
        return
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return
    # A job may leave directories it made read-only; give them back to their owner.
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            sub = os.path.join(root, name)
            if not os.path.islink(sub):
                with contextlib.suppress(OSError):
                    os.chmod(sub, 0o700)
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warning("could not remove the job directory %s", path)

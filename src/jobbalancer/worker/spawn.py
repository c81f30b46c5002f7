"""Starting a job's process: its private directory, its script, the gate, ``Popen``
under its user, moving it into its cgroup.

The steps :meth:`jobbalancer.worker.runner.JobProcess.start` puts together; each raises
:class:`StartError` and leaves nothing of its own behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from jobbalancer.worker import cgroups, jobenv, uids

log = logging.getLogger(__name__)
T = TypeVar("T")

SCRIPT_NAME: Final = "job-script"
# Put before a command run in a cgroup (a script is run by a shell doing the same, then
# exec'ing it): the shell waits for a line on stdin (a pipe the worker writes once it has
# moved the shell into the job's cgroup), then takes /dev/null as stdin. So nothing of
# the job can start outside its cgroup. The variables that would run code as the shell
# itself starts (procsec.acts_at_start: LD_PRELOAD…) are not in its environment: they
# follow on the pipe, a line each, and are exported then. A read that gets no line (the
# worker gave up on the start; a read timeout) ends the shell: it never goes on ungated.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GATE_WAIT = 10.0  # seconds the worker waits for a stopped shell to take its variables
_SHUT: Final = "{ echo 'jobbalancer: the job was not let through its start gate' >&2; exit 125; }"


def gate(later: Iterable[str] = ()) -> str:
    """The shell text of the gate, reading the variables named ``later`` (in that order)
    after its first line."""
    reads = []
    for name in later:
        if not _NAME.fullmatch(name):
            raise StartError(f"environment variable name {name!r} is not a valid name")
        reads.append(f" && IFS= read -r {name} && export {name}")
    return f"{{ read _{''.join(reads)}; }} || {_SHUT}; exec 0<>/dev/null; "


# Pids of main processes that a running JobProcess will reap itself (through Popen).
# reap_orphans() must never wait for these, or Popen would lose the exit status. Other
# children of the worker are reaped only by the runner, one pid at a time and under this
# lock (never with waitpid(-1)).
owned_lock = threading.Lock()
owned_pids: set[int] = set()


class StartError(Exception):
    """The job's process could not be started."""


# What a program is checked against when the job gets a dynamic uid: none owns a file.
ANY_DYNAMIC: Final = uids.Identity(uid=-1, gid=-1, name="dynamic", home="/")


def usable(check: Callable[..., T], *args: object) -> T:
    """check(*args), its refusal as a StartError."""
    try:
        return check(*args)
    except jobenv.NotUsable as exc:
        raise StartError(str(exc)) from None


def lease(pool: uids.UidPool) -> uids.Lease:
    try:
        return pool.acquire()
    except uids.UidError as exc:
        raise StartError(f"no uid for the job: {exc}") from exc


def make_workdir(prefix: str, user: uids.Identity | None) -> str:
    try:
        path = tempfile.mkdtemp(prefix=prefix)
    except OSError as exc:
        raise StartError(f"cannot create the job's temporary directory: {exc}") from exc
    try:
        os.chmod(path, 0o700)  # mkdtemp already does, but a umask must not matter
        if user is not None:
            os.chown(path, user.uid, user.gid)
    except OSError as exc:
        remove_dir(path)
        raise StartError(f"cannot prepare the job's temporary directory: {exc}") from exc
    return path


def write_script(workdir: str, body: str, user: uids.Identity | None) -> str:
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


def popen(
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
        with owned_lock:
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
            owned_pids.add(proc.pid)
    except OSError as exc:
        if exc.filename == workdir:  # subprocess names the cwd when its chdir failed
            raise StartError(
                f"cannot enter the job's directory {workdir!r}: {exc.strerror}"
            ) from exc
        raise StartError(f"cannot start {argv[0]!r}: {exc}") from exc
    except (ValueError, subprocess.SubprocessError) as exc:
        raise StartError(f"cannot start {argv[0]!r}: {exc}") from exc
    return proc


class Gate:
    """The pipe a gated command waits on (see gate) until the worker opens it."""

    def __init__(self) -> None:
        try:
            self.read_end, self._write_end = os.pipe()
        except OSError as exc:
            raise StartError(f"cannot make a pipe for the job: {exc}") from exc
        self._read_closed = self._closed = False

    def open(self, values: Iterable[str] = ()) -> None:
        """Let the shell go on, giving it ``values`` (what ``gate(later)`` reads).

        The worker's copy of the read end is closed first, so a shell that is gone makes
        the write fail at once (nothing to wait for then). A pipe holds 64 KiB and the
        values are kept below half that (procsec.AT_START_MAX_BYTES); a smaller pipe (an
        unprivileged worker over its pipe quota) is written as the shell reads, for up to
        _GATE_WAIT seconds: a shell stopped by someone else is a start error, not a hang.
        """
        self._close_read()
        data = b"\n" + b"".join(os.fsencode(v) + b"\n" for v in values)
        deadline = time.monotonic() + _GATE_WAIT
        try:
            os.set_blocking(self._write_end, False)
            while data:
                try:
                    data = data[os.write(self._write_end, data) :]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    writable = select.poll()  # poll, not select: any fd number
                    writable.register(self._write_end, select.POLLOUT)
                    if left <= 0 or not writable.poll(left * 1000):
                        raise StartError("the job's shell did not read its gate") from None
        except OSError:
            pass  # the shell is gone (or cannot be given its values: it exits at its gate)

    def _close_read(self) -> None:
        if not self._read_closed:
            self._read_closed = True
            os.close(self.read_end)

    def close(self) -> None:
        """Idempotent; closing without open() ends the shell at its gate (it reads nothing)."""
        if not self._closed:
            self._closed = True
            self._close_read()
            os.close(self._write_end)


def move_in(group: cgroups.JobCgroup, pid: int) -> cgroups.JobCgroup | None:
    """Move the job's main process, still waiting at its gate, into its cgroup. None if
    that failed: then the job is tracked without one, which is removed."""
    start = time.monotonic()
    try:
        group.add(pid)
    except OSError as exc:
        log.warning("job pid %d: cannot use its cgroup %s (%s)", pid, group.path, exc)
        group.remove()
        return None
    slow = cgroups.slow_move(time.monotonic() - start)
    if slow is not None:
        log.info("job starts: %s", slow)
    return group


def remove_dir(path: str) -> None:
    """Remove a job's private directory, as root, never following a link.

    The job owned it and may have put a link in its place (or anywhere inside it) while
    it ran: everything here goes through descriptors opened with ``O_NOFOLLOW`` and
    ``*at`` calls relative to them, so nothing outside the directory is touched.
    """
    try:
        info = os.lstat(path)
    except OSError:
        return  # gone already (or its parent is): nothing of ours to remove
    parent, name = os.path.split(os.path.abspath(path))
    if not stat.S_ISDIR(info.st_mode):  # a link or file the job put there: only it goes
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    with contextlib.suppress(OSError):
        os.rmdir(path)  # most jobs leave it empty: one call, where rmtree walks and opens
        return
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        log.warning("could not remove the job directory %s: %s", path, exc)
        return
    try:
        _remove_tree_at(parent_fd, name)
    finally:
        os.close(parent_fd)
    if os.path.lexists(path):
        log.warning("could not remove the job directory %s", path)


def _remove_tree_at(dir_fd: int, name: str) -> None:
    # shutil.rmtree with dir_fd walks by descriptors and refuses a link as its top.
    with contextlib.suppress(RecursionError):
        shutil.rmtree(name, ignore_errors=True, dir_fd=dir_fd)
    if not _exists_at(dir_fd, name):
        return
    # A job may leave directories it made read-only; give them back to their owner.
    _chmod_dir_at(dir_fd, name)
    with contextlib.suppress(OSError, RecursionError):
        walk = os.fwalk(name, dir_fd=dir_fd, follow_symlinks=False)
        for _, dirs, _, fd in walk:
            for sub in dirs:
                _chmod_dir_at(fd, sub)
        shutil.rmtree(name, ignore_errors=True, dir_fd=dir_fd)


def _exists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def _chmod_dir_at(dir_fd: int, name: str) -> None:
    """chmod 0700 the directory ``name`` in ``dir_fd``; nothing if it is not one (a link).

    O_PATH needs no permission on the directory itself (one left 0000 still opens), and
    the /proc link of the descriptor is the directory opened, never a path looked up again.
    """
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
    with contextlib.suppress(OSError):
        fd = os.open(name, flags, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{fd}", 0o700)
        finally:
            os.close(fd)

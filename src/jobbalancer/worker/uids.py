"""A uid of its own for each job while it runs, as systemd's ``DynamicUser`` gives one.

A worker started as root with ``run_as = "dynamic"`` takes a uid (and the gid of the
same number) from ``dynamic_uids`` for each job and gives it back when the job is over.
Jobs of different users then differ the way Unix users do: one cannot read another's
``/proc/PID/environ``, temp dir or script, signal it (``kill -9 -1`` reaches only its
own processes) or trace it.

Uniqueness on the host: a uid is held by an exclusive ``flock`` on
``/run/jobbalancer/uids/<uid>`` (the directory root's, 0700), taken without waiting and
held while the job runs. ``flock`` belongs to the open file, so two job threads of one
worker exclude each other as two workers do, and the kernel drops it when its holder
dies. The file says ``busy <pid>`` while a job runs and ``free`` once everything of it is
gone: a uid found ``busy`` was held by a worker that died with the job running, so its
processes are killed and its files removed when a worker starts, and again before it is
handed out.

Reuse is rare: each worker hands out the least recently used uid it knows of (ordered by
the files' times when it starts, then by its own releases). Before a uid goes back, what
it left in the places every uid may write (``/tmp``, ``/var/tmp``, ``/dev/shm``) is
removed, so the next job with that uid finds nothing of the last one.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import grp
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

LOCK_DIR: Final = "/run/jobbalancer/uids"
# Outside the regular users (1000-60000 by login.defs), systemd's own ranges (60001-65535,
# its DynamicUser 61184-65519), nobody (65534) and the subordinate ids that rootless
# containers map (100000 and up, by useradd's default).
DEFAULT_RANGE: Final = "70000-79999"
# Where any uid may create files: what a job left there is removed when its uid is freed.
SHARED_DIRS: Final = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")  # noqa: S108
# System V IPC objects outlive their creator too; removed like files (as systemd's RemoveIPC).
_IPC: Final = (("shm", "shmctl"), ("sem", "semctl"), ("msg", "msgctl"))
_IPC_RMID: Final = 0
_MAX_DEPTH: Final = 4  # how deep to follow world-writable directories of others
_FREE: Final = b"free\n"


class UidError(Exception):
    """No uid could be taken (all busy, or the lock directory is unusable)."""


@dataclass(frozen=True)
class UidRange:
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> UidRange:
        """``"A-B"``, both inclusive; ValueError saying what is wrong."""
        match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
        if match is None:
            raise ValueError(f"{text!r} is not a range like {DEFAULT_RANGE}")
        first, last = int(match[1]), int(match[2])
        if not 1000 <= first <= last < 2**31 - 1:
            raise ValueError(f"{text!r}: give 1000 <= first <= last < 2147483647")
        return cls(first, last)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))

    def __len__(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Identity:
    """Who a job runs as: a passwd user, or a dynamic uid without an entry."""

    uid: int
    gid: int
    name: str
    home: str  # for a dynamic uid, its temp dir (set once that exists)

    @classmethod
    def from_passwd(cls, entry: pwd.struct_passwd) -> Identity:
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)


class Lease:
    """One uid held for one job; :meth:`release` gives it back (idempotent)."""

    def __init__(self, pool: UidPool, uid: int, fd: int) -> None:
        self.uid = uid
        self._pool = pool
        self._fd: int | None = fd

    @property
    def identity(self) -> Identity:
        return Identity(self.uid, self.uid, f"jb-{self.uid}", "/")

    def release(self, *, processes_gone: bool = True) -> None:
        """Remove what the uid left and unlock it. ``processes_gone``: the job's cgroup
        proved none of its processes is left; otherwise every process of the uid is
        killed first."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if not processes_gone:
                kill_all_of(self.uid)
            remove_files_of(self.uid)
            remove_ipc_of(self.uid)
            os.pwrite(fd, _FREE, 0)
            os.ftruncate(fd, len(_FREE))
        finally:
            os.close(fd)  # closing drops the flock
            self._pool.released(self.uid)


class UidPool:
    """The uids one worker hands out; thread-safe."""

    def __init__(self, uids: UidRange, lock_dir: str = LOCK_DIR) -> None:
        self.range = uids
        self.lock_dir = lock_dir
        _prepare_lock_dir(lock_dir)
        taken = _taken_ids(uids)
        if taken:
            shown = ", ".join(str(u) for u in sorted(taken)[:5])
            log.warning(
                "dynamic uids: %d of %d-%d belong to accounts or subordinate ranges (%s…); "
                "skipping them", len(taken), uids.first, uids.last, shown,
            )  # fmt: skip
        usable = [u for u in uids if u not in taken]
        if not usable:
            raise UidError(f"dynamic uids {uids.first}-{uids.last}: every one is in use")
        self._lock = threading.Lock()
        self._order: collections.deque[int] = collections.deque()
        self._sweep_abandoned(usable)
        self._order = collections.deque(sorted(usable, key=self._last_used))
        self._size = len(usable)

    def acquire(self) -> Lease:
        """The least recently used free uid, locked; UidError if none is free."""
        with self._lock:
            tries = len(self._order)
        for _ in range(tries):
            with self._lock:
                if not self._order:
                    break
                uid = self._order.popleft()  # no other thread of ours tries it meanwhile
            try:
                lease = self._try(uid)
            except BaseException:
                self.released(uid)
                raise
            if lease is not None:
                return lease
            self.released(uid)  # another worker's now: to the back of the line
        raise UidError(f"all {self._size} dynamic uids are busy; widen worker.dynamic_uids")

    def released(self, uid: int) -> None:
        with self._lock:
            self._order.append(uid)

    def _sweep_abandoned(self, usable: list[int]) -> None:
        """Clean up after every uid a dead worker left busy (its job outlived it), now
        rather than when the uid is next handed out: its files would stay meanwhile."""
        try:
            names = set(os.listdir(self.lock_dir))
        except OSError:
            return
        for uid in usable:
            if str(uid) not in names:
                continue
            with contextlib.suppress(OSError, UidError):  # the next acquire tries again
                with open(os.path.join(self.lock_dir, str(uid)), "rb") as file:
                    if file.read(4) != b"busy":
                        continue
                lease = self._try(uid)  # None: a live worker's job holds it
                if lease is not None:
                    lease.release()

    def _try(self, uid: int) -> Lease | None:
        path = os.path.join(self.lock_dir, str(uid))
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise UidError(f"cannot open {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.pread(fd, 64, 0).startswith(b"busy"):
                # Its last holder died with the job running: nothing of that job may stay.
                log.warning("dynamic uid %d was left busy by a dead worker; cleaning up", uid)
                kill_all_of(uid)
                remove_files_of(uid)
                remove_ipc_of(uid)
            record = f"busy {os.getpid()}\n".encode()
            os.pwrite(fd, record, 0)
            os.ftruncate(fd, len(record))
        except BaseException:
            os.close(fd)
            raise
        return Lease(self, uid, fd)

    def _last_used(self, uid: int) -> int:
        try:
            return os.stat(os.path.join(self.lock_dir, str(uid))).st_mtime_ns
        except OSError:
            return 0  # never used: first


def _prepare_lock_dir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise UidError(f"{path} is not a directory of the worker's own")
        os.chmod(path, 0o700)
    except OSError as exc:
        raise UidError(f"cannot use {path} for dynamic uids: {exc}") from exc


def _taken_ids(uids: UidRange) -> set[int]:
    """Ids of the range that name an account or group, or lie in a subordinate range."""
    taken = {entry.pw_uid for entry in pwd.getpwall()}
    taken |= {entry.pw_gid for entry in pwd.getpwall()}
    taken |= {entry.gr_gid for entry in grp.getgrall()}
    for path in ("/etc/subuid", "/etc/subgid"):
        with contextlib.suppress(OSError):
            with open(path) as file:
                for line in file:
                    parts = line.strip().split(":")
                    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                        start, count = int(parts[1]), int(parts[2])
                        low, high = max(start, uids.first), min(start + count - 1, uids.last)
                        taken.update(range(low, high + 1))
    return {u for u in taken if uids.first <= u <= uids.last}


def kill_all_of(uid: int) -> None:
    """SIGKILL every process of ``uid``: ``kill -9 -1`` run as that uid reaches exactly
    the processes whose real or saved uid it is (and not itself)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["/bin/sh", "-c", "kill -9 -1"],  # the shell's builtin: no kill(1) needed
            user=uid, group=uid, extra_groups=[], env={},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            check=False, timeout=10,
        )  # fmt: skip


def remove_files_of(uid: int, dirs: tuple[str, ...] | None = None) -> int:
    """Remove what ``uid`` owns in the shared writable directories; how many entries.

    Only directories the uid could write to are searched: those it owns (removed whole)
    and world-writable ones (``/tmp`` itself, ``/tmp/.X11-unix``…); it has no groups but
    its own. Everything is done relative to open directories, never following a link.
    """
    found = 0
    places = dirs if dirs is not None else (*SHARED_DIRS, tempfile.gettempdir())
    for place in dict.fromkeys(places):
        with contextlib.suppress(OSError):
            fd = os.open(place, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                found += _remove_in(fd, uid, _MAX_DEPTH)
            finally:
                os.close(fd)
    return found


def remove_ipc_of(uid: int) -> int:
    """Remove the System V shared memory segments, semaphore sets and message queues
    ``uid`` owns (Linux: listed in /proc/sysvipc); how many."""
    removed = 0
    for kind, call in _IPC:
        try:
            with open(f"/proc/sysvipc/{kind}") as file:
                header, *rows = file.read().splitlines()
        except (OSError, ValueError):
            continue
        columns = header.split()
        for row in rows:
            fields = dict(zip(columns, row.split(), strict=False))
            if fields.get("uid") == str(uid) or fields.get("cuid") == str(uid):
                ident = int(fields[columns[1]])  # shmid, semid or msqid
                removed += _ipc_rmid(call, ident)
    return removed


def _ipc_rmid(call: str, ident: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if call == "semctl":
        result = libc.semctl(ident, 0, _IPC_RMID)
    else:
        result = getattr(libc, call)(ident, _IPC_RMID, None)
    return 1 if result == 0 else 0


def _remove_in(dir_fd: int, uid: int, depth: int) -> int:
    found = 0
    with os.scandir(dir_fd) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        is_dir = stat.S_ISDIR(info.st_mode)
        if info.st_uid == uid:
            found += 1
            if is_dir:
                shutil.rmtree(name, dir_fd=dir_fd, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dir_fd)
        elif is_dir and info.st_mode & stat.S_IWOTH and depth > 0:
            with contextlib.suppress(OSError):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                sub = os.open(name, flags, dir_fd=dir_fd)
                try:
                    found += _remove_in(sub, uid, depth - 1)
                finally:
                    os.close(sub)
    return found

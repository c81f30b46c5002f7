"""Small helpers over processes for the runner: rows of /proc, signalling, liveness,
reaping, pidfds, ``prctl``."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import psutil

_READ_SIZE: Final = 64 * 1024


@dataclass(frozen=True)
class Row:
    ppid: int
    sid: int
    born: float  # start time, comparable only with rows from the same table


def read_stat(pid: str) -> Row | None:
    try:
        data = read_file(f"/proc/{pid}/stat")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    return Row(ppid=int(fields[1]), sid=int(fields[3]), born=float(fields[19]))


def psutil_table() -> dict[int, Row]:
    # Without /proc (not Linux): slower, but the same information.
    table = {}
    for proc in psutil.process_iter(["ppid", "create_time"]):
        with contextlib.suppress(OSError):
            sid = os.getsid(proc.pid)
            table[proc.pid] = Row(proc.info["ppid"], sid, proc.info["create_time"])
    return table


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library, if it has prctl (Linux); loading it each time costs too much."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.prctl  # noqa: B018 - a missing symbol raises AttributeError here, not later
    except (OSError, AttributeError):
        return None
    return lib


def signal_each(procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def is_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell: assume the worst


def is_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def read_file(path: str) -> bytes:
    # Without open()'s buffered wrapper: /proc files are read by the hundred.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts = []
        while part := os.read(fd, _READ_SIZE):
            parts.append(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, or a kernel older than 5.3
        return None

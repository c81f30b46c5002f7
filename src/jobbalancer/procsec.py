"""Keeping a jobbalancer process's secrets from the jobs it runs and other local users.

A server or worker holds the database URL, password included, in its memory and (when
given through ``JOBBALANCER_DATABASE_URL``) in its environment. ``/proc/PID/environ`` and
``/proc/PID/mem`` are readable by any process of the same uid, which, for a worker not
started as root, includes the jobs it runs. :func:`make_undumpable` closes that door.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


# What the dynamic loader, the C library and a shell (dash, bash) act on as a process
# starts, before its first command runs: the loader's LD_* (LD_PRELOAD, LD_AUDIT: code of
# the caller's choosing), the other variables glibc ignores in a setuid program
# (unsecvars.h, but TMPDIR, which the worker sets itself), gettext's LANGUAGE (a path to
# message catalogues, whose strings are printf formats), musl's locale path, and a
# shell's start-up files, functions and read timeout (bash's TMOUT). A job behind a gate
# gets these only once its gate opens, inside its cgroup (worker/spawn.py), so none of
# them may hold a line break, and together they are kept small enough to pass through
# the gate's pipe at once (AT_START_MAX_BYTES).
_AT_START_PREFIXES = ("LD_", "BASH_FUNC_", "MALLOC_")
_AT_START = frozenset(
    {
        "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN",
        "LOCPATH", "MUSL_LOCPATH", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS",
        "TZDIR", "LANGUAGE", "BASH_ENV", "ENV", "PS4", "PROMPT_COMMAND", "TMOUT",
    }
)  # fmt: skip
AT_START_MAX_BYTES = 32 * 1024


def acts_at_start(name: str) -> bool:
    """Whether an environment variable can make code run as a process starts."""
    return name in _AT_START or name.startswith(_AT_START_PREFIXES)


def at_start_problem(env: Mapping[str, str]) -> str | None:
    """Why ``env``'s variables that act at start cannot be given after a gate, if they
    cannot: a line break in one, or more than AT_START_MAX_BYTES of them (names, which
    the gate's text holds twice, and values)."""
    size = 0
    for name, value in env.items():
        if acts_at_start(name):
            if "\n" in value:
                return f"the value of {name} must not contain a line break"
            size += 2 * len(name) + len(os.fsencode(value)) + 1
    if size > AT_START_MAX_BYTES:
        names = ", ".join(n for n in env if acts_at_start(n))
        return (
            f"the variables {names} take {size} bytes, more than the {AT_START_MAX_BYTES} "
            "a job's variables that act as a process starts may take together"
        )
    return None


def make_undumpable() -> bool:
    """Mark this process non-dumpable (Linux ``prctl(PR_SET_DUMPABLE, 0)``), best effort.

    Its ``/proc/PID/environ``, ``mem`` and ``fd`` then belong to root, so processes of
    the same uid can no longer read its environment or ptrace it, and it writes no core
    dump. (``/proc/PID/cmdline`` stays world-readable: no secret goes on a command
    line.) ``execve`` resets the flag, so every process that holds a secret calls this
    itself. True when it took effect.
    """
    if _prctl(_PR_SET_DUMPABLE, 0):
        return True
    log.debug("could not make the process non-dumpable; same-uid processes can read it")
    return False


def no_new_privs() -> bool:
    """Set ``PR_SET_NO_NEW_PRIVS`` on this process (Linux), for good; True if it took.

    Inherited by every child across fork and execve, and never undone: no descendant
    gains a uid, gid or capability by executing a setuid/setgid or file-capability
    program. A worker running jobs under dynamic uids sets it, so a setuid copy of a
    shell left by an earlier holder of a uid cannot make a later job that uid. It takes
    nothing from a process that has privileges already (root stays root).
    """
    if _prctl(_PR_SET_NO_NEW_PRIVS, 1):
        return True
    log.warning("could not set no_new_privs: a setuid program may change a job's uid")
    return False


def _prctl(option: int, value: int) -> bool:
    """prctl(option, value) on this process (Linux); True if it took."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    return False


def private_umask() -> int:
    """Files this process creates are its user's alone from now on (umask 077); the old
    umask. Only for processes that start no jobs: a worker's umask would be its jobs'."""
    return os.umask(0o077)


def make_private_dir(path: Path) -> str | None:
    """``path`` as a directory of mode 0700, created so or repaired; what was repaired.

    A directory of ours that others may enter (an older version made it 0755) is
    chmod'ed; the answer says so (``"dir 0755 -> 0700"``) for the start-up log.
    """
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
        return None
    except FileExistsError:
        pass
    return _repair(path, PRIVATE_DIR_MODE)


def make_private_file(path: Path) -> str | None:
    """An existing file others may read or write made 0600; what was repaired, or None."""
    return _repair(path, PRIVATE_FILE_MODE)


def _repair(path: Path, private: int) -> str | None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None  # no such file: nothing to keep private
    if mode & 0o077 == 0:
        return None
    try:
        path.chmod(private)
    except OSError as exc:  # not ours (another user's database): say so, carry on
        log.warning("cannot make %s private to its user (%s): others may read it", path, exc)
        return None
    return f"{path} {mode:04o} -> {private:04o}"


def create_whole(path: str | Path, text: str, *, sync: bool = False) -> bool:
    """Make the file ``path`` (mode 0600) holding ``text``, unless it exists; True if this
    call made it. ``sync``: on disk before it appears.

    Written whole under another name, then linked in place: a process doing the same at
    the same moment sees no file or a whole one, never an empty one, and the one that
    loses the race reads the winner's. Never through a link at ``path``. On a file system
    without hard links it is made in place, exclusively.
    """
    target = Path(path)
    draft = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            if sync:
                file.flush()
                os.fsync(file.fileno())
        try:
            os.link(draft, target)
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
    finally:
        draft.unlink(missing_ok=True)
    return True

"""Who a job runs as, the environment it gets, and which programs it may start.

A job gets a clean, minimal environment, as ``sudo`` and systemd give one: ``PATH`` (the
worker's ``job_path``, not the worker's own), ``HOME``, ``USER`` and ``LOGNAME`` of the
job's user, ``TMPDIR`` (its private directory), ``LANG``/``LANGUAGE``/``LC_*`` and ``TZ``
from the worker if set, then what the job asked for, then the markers the runner finds
its processes by. Nothing else of the worker's environment (a database URL, an API key,
a proxy's password) reaches it.

Programs are looked up the way the job itself would: on the job's ``PATH``, and only
those its user may execute (the search permission of every directory on the way, and
the file's own mode bits; the job has no supplementary groups).
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import stat
from collections.abc import Mapping
from typing import Final

from jobbalancer import procsec
from jobbalancer.worker.uids import Identity

DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_FROM_WORKER: Final = ("LANG", "LANGUAGE", "TZ")


class NotUsable(Exception):
    """A user, interpreter or script that cannot be used; the message says why."""


def lookup_user(name: str) -> Identity:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise NotUsable(f"run_as user {name!r} does not exist on this worker") from None
    if entry.pw_uid == 0:
        raise NotUsable(f"run_as user {name!r} is root; name an unprivileged user")
    return Identity.from_passwd(entry)


@functools.cache
def own_identity() -> Identity:
    """The worker's own user, for jobs it runs without switching (read once: a passwd
    lookup per job costs more than the rest of building its environment)."""
    uid = os.geteuid()
    try:
        return Identity.from_passwd(pwd.getpwuid(uid))
    except KeyError:
        name = os.environ.get("USER", str(uid))
        return Identity(uid, os.getegid(), name, os.environ.get("HOME", "/"))


def job_env(
    requested: Mapping[str, str],
    ident: Identity,
    workdir: str,
    path: str,
    markers: Mapping[str, str],
) -> dict[str, str]:
    """The whole environment of a job run as ``ident`` in ``workdir``."""
    env = {k: v for k, v in os.environ.items() if k in _FROM_WORKER or k.startswith("LC_")}
    env.update(PATH=path, HOME=ident.home, USER=ident.name, LOGNAME=ident.name, TMPDIR=workdir)
    env.update(requested)
    env.update(markers)  # last, so a job cannot hide from the process scan
    return env


def after_gate(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` a gated job gets only after its gate, inside its cgroup
    (procsec.acts_at_start: what the loader, libc or the shell would act on as it starts)."""
    later = {name: value for name, value in env.items() if procsec.acts_at_start(name)}
    if "TMOUT" in later:  # last: bash times out every read after it with it
        later["TMOUT"] = later.pop("TMOUT")
    return later


def find_interpreter(name: str, path: str, ident: Identity | None) -> str:
    """The program ``name`` as the job's user would find it on ``path``."""
    if os.path.isabs(name):
        if os.path.isfile(name) and may_execute(name, ident):
            return name
        raise NotUsable(f"interpreter {name!r} not found or not executable")
    if os.sep in name:
        raise NotUsable(f"interpreter {name!r}: give a program name or an absolute path")
    for directory in path.split(os.pathsep):
        if not os.path.isabs(directory):
            continue  # an empty or relative entry would search the job's own directory
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and may_execute(candidate, ident):
            return candidate
    who = f"user {ident.name!r}" if ident else "the worker"
    raise NotUsable(f"interpreter {name!r} not found on PATH, or not executable by {who}")


def may_execute(path: str, ident: Identity | None) -> bool:
    """Whether ``ident`` (None: this process) may execute ``path``: every directory on the
    way (links resolved) searchable, the file executable, by mode bits."""
    if ident is None:
        return os.access(path, os.X_OK)
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for end in range(1, len(parts)):
        directory = os.sep.join(parts[:end]) or os.sep
        if not _allowed(directory, ident, 0o1):
            return False
    return _allowed(real, ident, 0o1)


def _allowed(path: str, ident: Identity, bit: int) -> bool:
    try:
        info = os.stat(path)
    except OSError:
        return False
    if ident.uid == info.st_uid:
        return bool(info.st_mode & (bit << 6))
    if ident.gid == info.st_gid:
        return bool(info.st_mode & (bit << 3))
    return bool(info.st_mode & bit)


def check_shebang(body: str, ident: Identity | None) -> None:
    """A script run without an interpreter names its own on a ``#!`` line. Refuse, as
    the kernel would, one that names none or names no program the job's user may run:
    started through a shell (the cgroup gate) such a script would not fail to start but
    fail later, or worse, run under that shell."""
    first = body.split("\n", 1)[0]
    if not first.startswith("#!"):
        raise NotUsable("cannot start the script: it has no #! line and no interpreter")
    if first.endswith("\r"):
        raise NotUsable(
            "cannot start the script: its #! line ends in a carriage return (Windows line "
            "endings); save it with Unix line endings"
        )
    words = first[2:].lstrip(" \t").replace("\t", " ").split(" ", 1)
    program = words[0]
    if not program:
        raise NotUsable("cannot start the script: its #! line names no interpreter")
    if not os.path.isabs(program):
        raise NotUsable(f"cannot start the script: its #! interpreter {program!r} is not an "
                        "absolute path (use #!/usr/bin/env NAME to look it up)")  # fmt: skip
    if not (os.path.isfile(program) and may_execute(program, ident)):
        raise NotUsable(
            f"cannot start the script: its #! interpreter {program!r} is not a program "
            f"{'user ' + repr(ident.name) if ident else 'the worker'} may run"
        )
    try:
        with open(program, "rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise NotUsable(f"cannot start the script: cannot read {program!r}: {exc}") from exc
    if magic != b"\x7fELF" and not magic.startswith(b"#!"):
        raise NotUsable(f"cannot start the script: its #! interpreter {program!r} is not a program")


def check_workdir(path: str, ident: Identity | None) -> None:
    """Refuse a working directory the job could not run in (checked before the start).

    ``subprocess`` changes into it before dropping to the job's user, so the worker's own
    rights prove nothing: every directory on the way must be searchable, and the directory
    itself readable and searchable (a job that cannot list it fails in confusing ways,
    ``*.mp4`` matching nothing), by the job's user, by mode bits as :func:`may_execute`.
    """
    if not os.path.isabs(path):
        raise NotUsable(f"workdir {path!r} is not an absolute path")
    if not os.path.lexists(path):
        raise NotUsable(f"workdir {path!r} does not exist on this worker")
    if not os.path.isdir(path):
        raise NotUsable(f"workdir {path!r} is not a directory")
    if ident is None:
        if not os.access(path, os.R_OK | os.X_OK):
            raise NotUsable(f"workdir {path!r}: the worker's user may not enter it ({_ls(path)})")
        return
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for end in range(1, len(parts)):
        directory = os.sep.join(parts[:end]) or os.sep
        if not _allowed(directory, ident, 0o1):
            raise _may_not_enter(path, directory, ident)
    if not (_allowed(real, ident, 0o4) and _allowed(real, ident, 0o1)):
        raise _may_not_enter(path, real, ident)


def _may_not_enter(path: str, blocking: str, ident: Identity) -> NotUsable:
    # The directory's mode and owners, or those of the ancestor in the way.
    shown = (
        f"({_ls(blocking)})"
        if blocking == os.path.realpath(path)
        else (f"({blocking} is {_ls(blocking)})")
    )
    if ident.uid < 0:  # any dynamic uid: it owns nothing, so only the "other" bits count
        return NotUsable(
            f"workdir {path!r}: a job's dynamic uid may not enter it {shown}: make it "
            "searchable by others (chmod o+rx) or run this worker with --run-as USER"
        )
    return NotUsable(f"workdir {path!r}: user {ident.name!r} may not enter it {shown}")


def _ls(path: str) -> str:
    """``drwx------ root root``: what ``ls -ld`` would say of who may do what."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return exc.strerror or "cannot stat"
    return f"{stat.filemode(info.st_mode)} {_owner(info.st_uid)} {_group(info.st_gid)}"


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)

"""A cgroup (version 2) per job, where the host lets the worker make them.

A cgroup holds every process of a job whatever it does: a process can leave its session,
double-fork, clear its environment and be re-parented to init, but only a privileged
process that writes it elsewhere can take it out of its cgroup. So where the worker may
create cgroups, the runner tracks a job by its cgroup: ``cgroup.procs`` lists its
processes, ``cgroup.events`` says whether any is left, and ``cgroup.kill`` (Linux 5.14)
SIGKILLs all of them at once, including ones forking at that moment.

The job's cgroups are made inside the worker's own cgroup, named like its temp
directories (``jobbalancer-<owner>@<job id>-<random>``), so a restarted worker finds
those its dead predecessor left (:func:`clean_up_after`). Nothing here enables a
controller: the cgroups only group processes, they limit nothing.

Hosts without a writable cgroup2 hierarchy (a worker that is not root, cgroup v1 only,
a container without its cgroup mounted) get ``None`` from :func:`create`, and the
runner falls back to tracking by session, process tree and environment.

A job's ``cpus`` and ``memory`` are enforced in its cgroup2 cgroup where the ``cpu`` and
``memory`` controllers are enabled there; where they are not, but the host mounts the
cgroup v1 ``cpu`` and ``memory`` hierarchies (older or hybrid hosts), in a
:class:`V1Limits`: one cgroup per job in each, made inside the worker's own v1 cgroups
and named like the v2 ones, so a restarted worker sweeps those too.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Final

log = logging.getLogger(__name__)

_PREFIX: Final = "jobbalancer-"
_KILL_WAIT: Final = 5.0  # how long clean_up_after waits for a killed cgroup to empty
_BY_HAND: Final = 2.0  # without cgroup.kill: how long to keep killing what is left
_CPU_PERIOD: Final = 100_000  # microseconds, cpu.max's default period
_MOUNTINFO: Final = "/proc/self/mountinfo"
_FEATURES: Final = "/sys/kernel/cgroup/features"
SLOW_MOVE: Final = 0.005  # seconds: a move this long waited for the kernel (slow_move)
_slow_move_said = False  # the worker's log says it once
_said_lock = threading.Lock()


class JobCgroup:
    """One job's cgroup: a directory in the cgroup2 hierarchy.

    A job may make cgroups below its own (if it may write there): reads and kills cover
    the whole subtree, and removal goes bottom-up.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def add(self, pid: int) -> None:
        """Move a process (and, from then on, everything it starts) into the cgroup."""
        _write(os.path.join(self.path, "cgroup.procs"), str(pid))

    def pids(self) -> list[int]:
        """The processes in it and below it now (zombies are not listed); [] once gone."""
        found: list[int] = []
        for path in _subtree(self.path):
            try:
                with open(os.path.join(path, "cgroup.procs"), "rb") as file:
                    found.extend(int(pid) for pid in file.read().split())
            except (OSError, ValueError):
                continue  # removed meanwhile
        return found

    def populated(self) -> bool:
        """Whether any process of the job still runs, below too (a zombie does not count)."""
        return _populated(self.path)

    def kill(self) -> bool:
        """SIGKILL every process in it and below it; True once none is left.

        ``cgroup.kill`` (Linux 5.14) does it at once, even to a process forking at that
        moment. Without it the cgroup is frozen (Linux 5.2; a frozen process still dies
        of SIGKILL), and its processes are killed one by one until none is left.
        """
        try:
            _write(os.path.join(self.path, "cgroup.kill"), "1")
        except OSError:
            if not os.path.isdir(self.path):
                return True  # removed: nothing is left in it
            return self._kill_one_by_one()
        return True

    def limit(self, cpus: float | None, memory: int | None) -> list[str]:
        """Enforce a job's request: ``cpus`` as ``cpu.max`` (that many CPUs' time per
        period), ``memory`` as ``memory.max`` with no swap (``memory.swap.max`` 0). What
        could not be set (the controller is not enabled for the worker's cgroups), named."""
        missed = []
        if cpus:
            quota = max(1000, int(cpus * _CPU_PERIOD))
            if not _try_write(os.path.join(self.path, "cpu.max"), f"{quota} {_CPU_PERIOD}"):
                missed.append("cpus")
        if memory:
            if not _try_write(os.path.join(self.path, "memory.max"), str(memory)):
                missed.append("memory")
            _try_write(os.path.join(self.path, "memory.swap.max"), "0")
        return missed

    def oom_kills(self) -> int:
        """How many of its processes the OOM killer killed (``memory.events``)."""
        try:
            with open(os.path.join(self.path, "memory.events"), "rb") as file:
                for line in file:
                    if line.startswith(b"oom_kill "):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> bool:
        """Remove the empty cgroup, and any below it; False if processes are still in it."""
        for path in _subtree(self.path):
            if not _remove(path):
                return False
        return True

    def _kill_one_by_one(self) -> bool:
        freeze = os.path.join(self.path, "cgroup.freeze")
        try:
            _write(freeze, "1")  # no more forks while we read and kill
            frozen = True
        except OSError:
            frozen = False
        try:
            deadline = time.monotonic() + _BY_HAND
            while True:
                left = self.pids()
                if not left and not self.populated():
                    return True
                if time.monotonic() > deadline:
                    return False
                _signal_each(left)
                time.sleep(0.01)
        finally:
            if frozen:
                with contextlib.suppress(OSError):
                    _write(freeze, "0")


def create(owner: str, job_id: int, tag: str) -> JobCgroup | None:
    """A new cgroup for one job, or None where the host does not allow one."""
    base = base_dir()
    if base is None:
        return None
    path = os.path.join(base, f"{_prefix(owner)}{job_id}-{tag}")
    try:
        os.mkdir(path)
    except FileExistsError:
        return JobCgroup(path)  # the same random tag twice: cannot happen in practice
    except OSError as exc:
        _report_unusable(base, exc)
        return None
    return JobCgroup(path)


def clean_up_after(owner: str) -> int:
    """Kill what is left in the cgroups of ``owner``'s jobs and remove them.

    Called by a worker before it runs anything: these cgroups belong to its dead
    predecessor's jobs, already recovered elsewhere. Returns how many processes were
    in them.
    """
    if not owner:
        return 0
    killed = _clean_up_v1(owner)
    base = base_dir()
    if base is None:
        return killed
    for path in glob.glob(os.path.join(glob.escape(base), f"{glob.escape(_prefix(owner))}*")):
        cgroup = JobCgroup(path)
        if cgroup.populated():
            killed += len(cgroup.pids())
            cgroup.kill()
        deadline = time.monotonic() + _KILL_WAIT
        while not cgroup.remove() and time.monotonic() < deadline:
            time.sleep(0.02)
        if os.path.isdir(path):
            log.warning("could not remove the job cgroup %s", path)
    return killed


@functools.cache
def base_dir() -> str | None:
    """The worker's own cgroup in the cgroup2 hierarchy, if it may make cgroups there."""
    own = _own_cgroup()
    if own is None:
        return None
    for mount, root in _cgroup2_mounts():
        relative = os.path.relpath(own, root)
        if relative.startswith(".."):
            continue  # this mount shows another part of the hierarchy
        path = os.path.normpath(os.path.join(mount, relative))
        if os.path.isfile(os.path.join(path, "cgroup.procs")) and os.access(path, os.W_OK):
            return path
    return None


def _own_cgroup() -> str | None:
    """This process's cgroup2 path, from the ``0::`` line of /proc/self/cgroup."""
    try:
        with open("/proc/self/cgroup") as file:
            for line in file:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def _cgroup2_mounts() -> Iterator[tuple[str, str]]:
    """(mount point, root in the hierarchy) of each cgroup2 mount."""
    for kind, mount, root, _ in _mounts():
        if kind == "cgroup2":
            yield mount, root


def _mounts() -> Iterator[tuple[str, str, str, list[str]]]:
    """(filesystem type, mount point, root in it, super options) of each mount, from
    /proc/self/mountinfo (nothing where it cannot be read)."""
    try:
        with open(_MOUNTINFO) as file:
            lines = file.readlines()
    except OSError:
        return
    for line in lines:
        left, _, right = line.partition(" - ")
        # Split on single spaces: the source may be empty ("cgroup2  rw,..."), and the
        # options must stay the third field.
        fields, tail = left.split(), right.rstrip("\n").split(" ")
        if tail and len(fields) >= 5:
            options = tail[2].split(",") if len(tail) >= 3 else []
            yield tail[0], _unescape(fields[4]), _unescape(fields[3]), options


def slow_move(seconds: float) -> str | None:
    """The worker's log line the first time a job's move into its cgroup took
    :data:`SLOW_MOVE` or longer (None for a quick one, and for every later slow one).

    A move takes the kernel's global ``cgroup_threadgroup_rwsem`` for writing, which waits
    for an RCU grace period unless another move came a moment before: about 10 ms for a
    job arriving at an idle worker. The ``favordynmods`` root option (Linux 6.0, listed in
    /sys/kernel/cgroup/features where the kernel has it, backports included) spares that
    wait; the worker does not remount the host's hierarchy itself (docs/operations.md,
    "Worker hosts: job start latency"). Measured rather than guessed from the mount: a
    host can have it off again with moves still quick (Linux 6.18 keeps the quicker lock
    until a reboot).
    """
    global _slow_move_said
    if seconds < SLOW_MOVE:
        return None
    with _said_lock:
        if _slow_move_said:
            return None
        _slow_move_said = True
    took = f"moving a job into its cgroup took {seconds * 1000:.1f} ms"
    if "favordynmods" not in _features():
        return (
            f"{took} (the kernel waits for an RCU grace period; this kernel has no "
            "favordynmods, rcupdate.rcu_expedited=1 shortens the wait for the whole host)"
        )
    mount = _mount_of(base_dir())
    if mount is None:
        return f"{took} (likely the kernel waiting for an RCU grace period)"
    if "favordynmods" in mount[1]:
        return f"{took} (favordynmods is on, so no grace period: the host was busy)"
    return (
        f"{took}: the kernel waits for an RCU grace period on each job start that does "
        f"not follow another closely, as cgroup2 at {mount[0]} is mounted without "
        "favordynmods; on the host, `mount -o remount,favordynmods "
        f"{mount[0]}` removes the wait (docs/operations.md, 'Worker hosts: job start "
        "latency')"
    )


def _features() -> set[str]:
    """What this kernel's cgroup2 offers (mount options, controllers' knobs)."""
    try:
        with open(_FEATURES) as file:
            return set(file.read().split())
    except OSError:
        return set()


def _mount_of(path: str | None) -> tuple[str, list[str]] | None:
    """The cgroup2 mount holding ``path``, with its root options. Every mount of the one
    cgroup2 hierarchy shows the same options: the first that holds it does."""
    if path is None:
        return None
    for kind, mount, _, options in _mounts():
        if kind == "cgroup2" and (path == mount or path.startswith(mount.rstrip("/") + "/")):
            return mount, options
    return None


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def _prefix(owner: str) -> str:
    # "@" ends the owner (worker names cannot hold it), as for the temp directories.
    return f"{_PREFIX}{owner}@" if owner else _PREFIX


def limits_problem() -> str | None:
    """Why job cgroups cannot enforce cpus and memory here (None: they can).

    The ``cpu`` and ``memory`` controllers must be enabled for the cgroups the worker
    makes: it asks for them in its cgroup's ``cgroup.subtree_control``, which works where
    its cgroup is delegated to it and holds no process itself (systemd ``Delegate=yes``
    with the worker in a leaf below), or where an admin enabled them already.
    """
    problem = _v2_limits_problem()
    if problem is not None and all(v1_base_dir(c) is not None for c in V1_CONTROLLERS):
        return None  # the cgroup v1 hierarchies enforce them instead
    return problem


def limits_files() -> str:
    """The files that enforce a job's cpus and memory on this host (for the worker's log)."""
    if _v2_limits_problem() is None:
        return "cpu.max, memory.max"
    return "cgroup v1: cpu.cfs_quota_us, memory.limit_in_bytes"


def _v2_limits_problem() -> str | None:
    base = base_dir()
    if base is None:
        return "the worker cannot make job cgroups here (cgroup v2, writable)"
    wanted = ("cpu", "memory")
    try:
        with open(os.path.join(base, "cgroup.controllers")) as file:
            available = file.read().split()
        with open(os.path.join(base, "cgroup.subtree_control")) as file:
            enabled = file.read().split()
    except OSError as exc:
        return f"cannot read the controllers of {base} ({exc.strerror})"
    missing = [c for c in wanted if c not in available]
    if missing:
        return f"the cgroup v2 controllers {', '.join(missing)} are not available in {base}"
    for controller in (c for c in wanted if c not in enabled):
        if not _try_write(os.path.join(base, "cgroup.subtree_control"), f"+{controller}"):
            return f"cannot enable the {controller} controller for the job cgroups in {base}"
    return None


# -- cgroup v1: the cpu and memory hierarchies --------------------------------------------

V1_CONTROLLERS: Final = ("cpu", "memory")


class V1Limits:
    """A job's cgroups in the cgroup v1 ``cpu`` and ``memory`` hierarchies, which only
    limit it: tracking and killing stay with its cgroup2 cgroup or the fallbacks.

    Every process the job starts inherits them. ``paths`` maps a controller to the job's
    directory in that hierarchy.
    """

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    def add(self, pid: int) -> None:
        """Move a process (and, from then on, everything it starts) into them; each is
        tried, and the first failure raised after."""
        failed: OSError | None = None
        for path in self.paths.values():
            try:
                _write(os.path.join(path, "cgroup.procs"), str(pid))
            except OSError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    def oom_kills(self, *, sigkilled: bool) -> int:
        """How many of its processes the OOM killer killed: ``oom_kill`` of
        ``memory.oom_control`` (Linux 4.13). Older kernels lack that line: there a main
        process ended by SIGKILL (``sigkilled``) after the limit was hit
        (``memory.failcnt``) counts as one."""
        path = self.paths.get("memory")
        if path is None:
            return 0
        try:
            with open(os.path.join(path, "memory.oom_control"), "rb") as file:
                for line in file:
                    if line.startswith(b"oom_kill "):
                        return int(line.split()[1])
            with open(os.path.join(path, "memory.failcnt"), "rb") as file:
                return 1 if sigkilled and int(file.read()) > 0 else 0
        except (OSError, ValueError):
            return 0

    def remove(self) -> bool:
        """Remove them once no process is in them; False if one could not be."""
        return all(_remove_v1(path) for path in self.paths.values())


def create_v1(
    owner: str, job_id: int, tag: str, *, cpus: float | None, memory: int | None
) -> tuple[V1Limits | None, list[str]]:
    """The v1 cgroups that enforce ``cpus`` and ``memory`` for one job (None if none
    was needed or could be made), and what of the request could not be enforced."""
    wanted = {"cpu": ("cpus", cpus), "memory": ("memory", memory)}
    paths: dict[str, str] = {}
    missed: list[str] = []
    for controller, (field, value) in wanted.items():
        if not value:
            continue
        base = v1_base_dir(controller)
        path = os.path.join(base or "", f"{_prefix(owner)}{job_id}-{tag}")
        if base is None or not _make_v1(path, controller, value):
            missed.append(field)
            continue
        paths[controller] = path
    return (V1Limits(paths) if paths else None), missed


def _make_v1(path: str, controller: str, value: float) -> bool:
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except OSError:
        return False
    if controller == "cpu":
        quota = max(1000, int(value * _CPU_PERIOD))
        done = _try_write(os.path.join(path, "cpu.cfs_period_us"), str(_CPU_PERIOD))
        done = done and _try_write(os.path.join(path, "cpu.cfs_quota_us"), str(quota))
    else:
        done = _try_write(os.path.join(path, "memory.limit_in_bytes"), str(int(value)))
        memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
        if done and os.path.exists(memsw):  # no swap (absent where swap accounting is off)
            done = _try_write(memsw, str(int(value)))
    if not done:
        _remove_v1(path)
    return done


@functools.cache
def v1_base_dir(controller: str) -> str | None:
    """The worker's own cgroup in the v1 hierarchy of ``controller``, if it may make
    cgroups there and that controller's limit files are in it."""
    path = v1_own_dir(controller)
    return path if path is not None and os.access(path, os.W_OK) else None


def v1_own_dir(controller: str) -> str | None:
    """This process's cgroup directory in the v1 hierarchy of ``controller`` (``cpu`` or
    ``memory``), where that hierarchy is mounted with its limit files; else None."""
    own = _own_v1_cgroup(controller)
    if own is None:
        return None
    probe = "cpu.cfs_quota_us" if controller == "cpu" else "memory.limit_in_bytes"
    for mount, root in _v1_mounts(controller):
        relative = os.path.relpath(own, root)
        if relative.startswith(".."):
            continue
        path = os.path.normpath(os.path.join(mount, relative))
        if os.path.isfile(os.path.join(path, probe)):
            return path
    return None


def _own_v1_cgroup(controller: str) -> str | None:
    """This process's cgroup in the v1 hierarchy of ``controller`` (/proc/self/cgroup)."""
    try:
        with open("/proc/self/cgroup") as file:
            for line in file:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controller in controllers.split(","):
                    return path
    except (OSError, ValueError):
        pass
    return None


def _v1_mounts(controller: str) -> Iterator[tuple[str, str]]:
    """(mount point, root in the hierarchy) of each cgroup v1 mount of ``controller``."""
    for kind, mount, root, options in _mounts():
        if kind == "cgroup" and controller in options:
            yield mount, root


def _clean_up_v1(owner: str) -> int:
    """Kill what is left in ``owner``'s v1 job cgroups and remove them."""
    killed = 0
    for controller in V1_CONTROLLERS:
        base = v1_base_dir(controller)
        if base is None:
            continue
        for path in glob.glob(os.path.join(glob.escape(base), f"{glob.escape(_prefix(owner))}*")):
            left = _v1_pids(path)
            killed += len(left)
            deadline = time.monotonic() + _KILL_WAIT
            while left and time.monotonic() < deadline:
                _signal_each(left)
                time.sleep(0.02)
                left = _v1_pids(path)
            if not _remove_v1(path):
                log.warning("could not remove the job cgroup %s", path)
    return killed


def _v1_pids(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs"), "rb") as file:
            return [int(pid) for pid in file.read().split()]
    except (OSError, ValueError):
        return []


def _remove_v1(path: str) -> bool:
    """rmdir, retried a moment: a killed process leaves its v1 cgroup only once reaped."""
    deadline = time.monotonic() + _BY_HAND
    while not _remove(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _try_write(path: str, data: str) -> bool:
    try:
        _write(path, data)
    except OSError:
        return False
    return True


def _subtree(path: str) -> list[str]:
    """A cgroup and those below it, the deepest first (the order to remove them in)."""
    below = [os.path.join(root, name) for root, dirs, _ in os.walk(path) for name in dirs]
    return [*sorted(below, key=lambda p: p.count(os.sep), reverse=True), path]


def _populated(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events"), "rb") as file:
            for line in file:
                if line.startswith(b"populated "):
                    return line.split()[1] != b"0"
    except FileNotFoundError:
        return False  # removed: nothing in it
    except OSError:
        pass
    return True  # cannot tell: assume the worst


def _remove(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def _signal_each(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


_reported: set[str] = set()


def _report_unusable(base: str, exc: OSError) -> None:
    if base not in _reported:
        _reported.add(base)
        log.warning(
            "cannot create job cgroups in %s (%s): tracking jobs by session and process "
            "tree instead", base, exc,
        )  # fmt: skip

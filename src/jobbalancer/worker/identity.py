"""Who a worker is: a machine id of its own, the process that holds a name, and the
decision whether a starting worker may take a name (or must pick another, wait, or give up).

The machine id lives in a file of ours (``worker.id_file``, default
``<data_dir>/worker-id``), not ``/etc/machine-id``: containers often have none (or the
host's), and VM images often carry one. A file alone is not enough either: two processes
on one filesystem, or a clone of a VM that already ran the worker, share it. So the row
also records the *instance* holding it (boot, PID namespace, pid, start time), and a name
held by a live worker is never taken over: :func:`decide` says what to do instead.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from jobbalancer import errors, procsec
from jobbalancer.registry import Holder

log = logging.getLogger(__name__)

SYSTEM_MACHINE_ID = "/etc/machine-id"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
MAX_DEFAULT_NAMES = 10  # host, host-<id6>, host-<id6>-2 … -9
CLONE_RECHECK_SLACK = 0.5  # seconds past worker_timeout before looking at the holder again


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def machine_id(path: str) -> str:
    """This machine's worker id from ``path``, made on the first start (a random hex id and
    the /etc/machine-id it was made on); made anew when /etc/machine-id changed since (a
    cloned disk whose clone got a fresh machine-id)."""
    system = _read(SYSTEM_MACHINE_ID)
    try:
        # Never through a link: the id file is read, replaced and made 0600 by the path.
        with open(path, encoding="ascii", opener=_no_follow) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return _make(path, system)
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.ConfigError(f"cannot read the worker id file {path}: {exc}") from exc
    mid = lines[0].strip() if lines else ""
    made_on = lines[1].strip() if len(lines) > 1 else ""
    if not _valid(mid):
        raise errors.ConfigError(
            f"the worker id file {path} is not one jobbalancer wrote: delete it "
            "(a new id is made at the next start)"
        )
    if system and made_on != system:
        log.warning(
            "%s was made on another machine (its /etc/machine-id differs): this machine is "
            "a clone, so it gets a worker id of its own", path,
        )  # fmt: skip
        os.unlink(path)
        return _make(path, system)
    return mid


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def _valid(mid: str) -> bool:
    return 8 <= len(mid) <= 64 and all(c in "0123456789abcdef" for c in mid)


def _make(path: str, system: str) -> str:
    mid = uuid.uuid4().hex
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # Whole or not at all (0600, never through a link): of two workers starting at
        # once on one disk, one writes it and both read it, never an empty file.
        made = procsec.create_whole(path, f"{mid}\n{system}\n")
    except OSError as exc:
        raise errors.ConfigError(f"cannot create the worker id file {path}: {exc}") from exc
    return mid if made else machine_id(path)


@functools.cache
def ephemeral_machine_id() -> str:
    """An id for this process's in-process workers when no id file is set (tests)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Instance:
    """One process: the boot, its PID namespace, its pid and when it started."""

    boot_id: str
    pidns: str
    pid: int
    start_time: float

    @classmethod
    def here(cls) -> Instance:
        st = os.stat("/proc/self/ns/pid")
        return cls(
            _read(BOOT_ID), f"{st.st_dev}:{st.st_ino}", os.getpid(), psutil.Process().create_time()
        )

    def __str__(self) -> str:
        return f"{self.boot_id}/{self.pidns}/{self.pid}/{self.start_time:.2f}"

    @classmethod
    def parse(cls, text: str | None) -> Instance | None:
        parts = (text or "").split("/")
        try:
            return cls(parts[0], parts[1], int(parts[2]), float(parts[3]))
        except (IndexError, ValueError):
            return None


def alive_here(instance: str | None) -> bool | None:
    """Whether the process ``instance`` names is alive, if this process can tell: only in
    the same boot and PID namespace (elsewhere its pid means nothing here): else None."""
    other, me = Instance.parse(instance), Instance.here()
    if other is None or other.boot_id != me.boot_id or other.pidns != me.pidns:
        return None
    try:
        process = psutil.Process(other.pid)
        # Compared at the precision stored: a reused pid has another start time.
        same = f"{process.create_time():.2f}" == f"{other.start_time:.2f}"
        return same and process.status() != psutil.STATUS_ZOMBIE  # a zombie is dead
    except psutil.Error:
        return False


def host_name() -> str:
    """The first label of this host's name (what the workers page shows)."""
    return socket.gethostname().split(".")[0] or "worker"


def default_names(host: str, mid: str) -> list[str]:
    """The names a worker without --name tries, in order: stable for a machine, and
    different on a clone with an id of its own."""
    own = f"{host}-{mid[:6]}"
    return [host, own, *(f"{own}-{n}" for n in range(2, MAX_DEFAULT_NAMES))]


@dataclass(frozen=True)
class Me:
    """The starting worker, as :func:`decide` sees it."""

    machine_id: str
    host: str
    id_file: str  # where machine_id came from ("" when none: in-process workers)


@dataclass(frozen=True)
class Take:
    """Register under this name (whoever held it is gone)."""


@dataclass(frozen=True)
class Next:
    """Try the next default name."""


@dataclass(frozen=True)
class Wait:
    """Look again after ``seconds``: by then a dead holder's heartbeat is stale."""

    seconds: float


@dataclass(frozen=True)
class Refuse:
    """Give up, saying why and what to set."""

    message: str


Decision = Take | Next | Wait | Refuse


def decide(
    holder: Holder | None,
    me: Me,
    *,
    explicit: bool,
    worker_timeout: float,
    alive_here: Callable[[str | None], bool | None] = alive_here,
    waited: bool = False,
) -> Decision:
    """Whether a worker may take a name. ``explicit``: the name was given (--name), so it
    is this worker's or nobody's; a default name may move on to the next. ``waited``: we
    waited once already for this holder's heartbeat to go stale, and it did not."""
    if holder is None:
        return Take()
    ours = holder.machine_id == me.machine_id
    if holder.state == "offline" or holder.age >= worker_timeout:
        # A stale holder has fenced itself off by now (its deadline is shorter).
        return Take() if explicit or ours or holder.machine_id is None else Next()
    if ours:
        alive = alive_here(holder.instance)
        if alive is False:
            return Take()  # our predecessor, dead without going offline (SIGKILL, a crash)
        if alive:
            if explicit:
                return Refuse(f"worker {holder.name!r} already runs here (pid {holder.pid})")
            return Next()
        return Refuse(clone_message(holder, me)) if waited else _wait(holder, worker_timeout)
    if holder.machine_id is None and holder.host.split(".")[0] == me.host and not waited:
        # A row written by a version before machine ids, from a host of our name: maybe
        # our own predecessor; its heartbeat will tell.
        return _wait(holder, worker_timeout)
    return Refuse(in_use_message(holder)) if explicit else Next()


def _wait(holder: Holder, worker_timeout: float) -> Wait:
    return Wait(max(0.0, worker_timeout - holder.age) + CLONE_RECHECK_SLACK)


def in_use_message(holder: Holder) -> str:
    machine = f"machine {holder.machine_id[:8]}, " if holder.machine_id else ""
    return (
        f"worker name {holder.name!r} is in use by a live worker on host {holder.host!r} "
        f"({machine}pid {holder.pid}, last heartbeat {holder.age:.1f} s ago): give this "
        "worker a name of its own with --name (JOBBALANCER_WORKER_NAME, worker.name)"
    )


def clone_message(holder: Holder, me: Me) -> str:
    source = f" (from {me.id_file})" if me.id_file else ""
    return (
        f"another worker with this machine's id {me.machine_id[:8]}{source} runs as "
        f"{holder.name!r} on host {holder.host!r} (pid {holder.pid}): this machine was cloned "
        "with its id file; delete that file here (a new id is made at the next start) or "
        "give this worker --name"
    )

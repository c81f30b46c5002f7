"""What a worker offers its jobs: CPUs, memory and GPUs it may really use, and its labels.

Detected unless set (``--cpus``, ``--memory``, ``--gpus``): CPUs are those the process may
run on (``sched_getaffinity``), fewer if the cgroup it runs in (or one above) has a
``cpu.max`` quota (cgroup v1: ``cpu.cfs_quota_us`` per ``cpu.cfs_period_us``); memory is
the machine's, less if a cgroup's ``memory.max`` (cgroup v1: its
``hierarchical_memory_limit``, which counts the cgroups above) is lower; GPUs are those
``nvidia-smi -L`` lists (none without it).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import psutil

from jobbalancer import registry, resources
from jobbalancer.settings import WorkerSettings
from jobbalancer.worker import cgroups

log = logging.getLogger(__name__)
_CGROUP2 = "/sys/fs/cgroup"


def detect(ws: WorkerSettings) -> registry.Capacity:
    """The capacity to register: what is set, else what is detected."""
    return registry.Capacity(
        cpus=ws.cpus if ws.cpus is not None else detect_cpus(),
        memory=ws.memory if ws.memory is not None else detect_memory(),
        gpus=ws.gpus if ws.gpus is not None else len(detect_gpus()),
        labels=resources.parse_labels(ws.labels),
    )


def describe(capacity: registry.Capacity) -> str:
    """``2 cpus, 7.6 GiB memory, 0 gpus, labels os=debian ssd``, for the start-up log."""
    parts = [
        f"{resources.format_cpus(capacity.cpus or 0)} cpus" if capacity.cpus else "cpus unlimited",
        resources.format_memory(capacity.memory) + " memory"
        if capacity.memory
        else "memory unlimited",
        f"{capacity.gpus or 0} gpus",
    ]
    if capacity.labels:
        shown = " ".join(f"{k}={v}" if v else k for k, v in capacity.labels.items())
        parts.append(f"labels {shown}")
    return ", ".join(parts)


def detect_cpus() -> float:
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cpus = float(os.cpu_count() or 1)
    for path in _own_cgroup2_dirs():
        quota = _cpu_max(os.path.join(path, "cpu.max"))
        if quota is not None:
            cpus = min(cpus, quota)
    v1 = cgroups.v1_own_dir("cpu")
    if v1 is not None:
        for quota in _cfs_quotas(v1):
            cpus = min(cpus, quota)
    return round(cpus, 2)


def _cfs_quotas(path: str) -> list[float]:
    """The cgroup v1 CPU quotas (in CPUs) of ``path`` and the cgroups above it."""
    quotas = []
    while os.path.isfile(os.path.join(path, "cpu.cfs_quota_us")):
        quota = _read_int(os.path.join(path, "cpu.cfs_quota_us"))  # -1: none (not digits)
        period = _read_int(os.path.join(path, "cpu.cfs_period_us"))
        if quota and period:
            quotas.append(quota / period)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return quotas


def detect_memory() -> int:
    memory = int(psutil.virtual_memory().total)
    for path in _own_cgroup2_dirs():
        limit = _read_int(os.path.join(path, "memory.max"))
        if limit is not None:
            memory = min(memory, limit)
    v1 = cgroups.v1_own_dir("memory")
    if v1 is not None:
        limit = _hierarchical_limit(v1)
        if limit is not None:
            memory = min(memory, limit)
    return memory


def _hierarchical_limit(path: str) -> int | None:
    """A v1 memory cgroup's effective limit (its own or one above it, the lowest)."""
    try:
        with open(os.path.join(path, "memory.stat")) as file:
            for line in file:
                if line.startswith("hierarchical_memory_limit "):
                    value = int(line.split()[1])
                    return value if value < (1 << 62) else None
    except (OSError, ValueError):
        pass
    return _read_int(os.path.join(path, "memory.limit_in_bytes"))


def detect_gpus() -> list[int]:
    """The indexes of the GPUs ``nvidia-smi -L`` lists; [] without it."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return []
    try:
        listed = subprocess.run(  # noqa: S603 - a fixed program, no shell
            [program, "-L"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi -L failed (%s): no GPUs offered", exc)
        return []
    return [i for i, line in enumerate(ln for ln in listed.splitlines() if ln.startswith("GPU "))]


def _own_cgroup2_dirs() -> list[str]:
    """This process's cgroup v2 directory and those above it (limits there count too)."""
    own = _own_cgroup1("")
    if own is None:
        return []
    dirs, path = [], own
    while True:
        full = os.path.normpath(os.path.join(_CGROUP2, path.lstrip("/")))
        if os.path.isfile(os.path.join(full, "cgroup.controllers")):
            dirs.append(full)
        if path in ("/", ""):
            return dirs
        path = os.path.dirname(path)


def _own_cgroup1(controller: str) -> str | None:
    """The path of this process's cgroup for a v1 controller ("": the v2 hierarchy)."""
    try:
        with open("/proc/self/cgroup") as file:
            for line in file:
                _, names, path = line.rstrip("\n").split(":", 2)
                if (controller == "" and names == "") or controller in names.split(","):
                    if controller or names == "":
                        return path
    except (OSError, ValueError):
        pass
    return None


def _cpu_max(path: str) -> float | None:
    try:
        with open(path) as file:
            quota, period = file.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as file:
            text = file.read().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # "max"
    value = int(text)
    return value if value < (1 << 62) else None  # v1's "no limit" is a huge number

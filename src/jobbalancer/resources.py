"""Resources and labels: what a worker has, what a job asks for, and whether it fits.

A worker offers ``cpus`` (may be fractional), ``memory`` (bytes) and ``gpus``, and free-form
``labels`` (``os=debian``, ``ssd``). A job may request any of the three and put
``constraints`` on labels. Pure functions, no database: the balancer, the submission
checks, the worker's start-up and the faces all use them.

Constraints, one entry per label (docs/api.md, "Placement")::

    {"ffmpeg": "6"}        the label ffmpeg has the value 6
    {"os": "!windows"}     the label os is missing or has another value than windows
    {"ssd": true}          the label ssd exists (any value)
    {"gpu-old": false}     the label gpu-old does not exist
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# What a request may ask for at most: more than any machine, less than the columns hold.
MAX_CPUS = 100_000.0
MAX_MEMORY = 1 << 60  # 1 EiB
MAX_GPUS = 10_000
MAX_CONSTRAINTS = 50
MAX_LABELS = 100
LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]*")

_UNITS = {
    "": 1, "B": 1,
    "K": 1 << 10, "KB": 1 << 10, "KI": 1 << 10, "KIB": 1 << 10,
    "M": 1 << 20, "MB": 1 << 20, "MI": 1 << 20, "MIB": 1 << 20,
    "G": 1 << 30, "GB": 1 << 30, "GI": 1 << 30, "GIB": 1 << 30,
    "T": 1 << 40, "TB": 1 << 40, "TI": 1 << 40, "TIB": 1 << 40,
}  # fmt: skip
_MEMORY = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_memory(value: Any) -> int:
    """Bytes from ``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"100k"`` or a number of bytes.

    Units are binary (K = 1024, M = 1024², G, T; ``MB``, ``MiB`` and ``Mi`` mean the
    same); ValueError names what is wrong.
    """
    if isinstance(value, bool):
        raise ValueError("must be a size such as 512M or 2G, or a number of bytes")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("must not be negative")
        number, unit = float(value), ""
    elif isinstance(value, str):
        match = _MEMORY.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not a size: write e.g. 512M, 2G or 1073741824")
        number, unit = float(match[1]), match[2].upper()
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {match[2]!r}: use K, M, G or T (powers of 1024)")
    else:
        raise ValueError("must be a size such as 512M or 2G, or a number of bytes")
    size = int(number * _UNITS[unit])
    if size > MAX_MEMORY:
        raise ValueError(f"{value!r} is more than any machine has (at most 1 EiB)")
    return size


def check_cpus(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError("must not be negative")
    if value > MAX_CPUS:
        raise ValueError(f"at most {MAX_CPUS:g}")
    return value


def check_gpus(value: int) -> int:
    if value < 0:
        raise ValueError("must not be negative")
    if value > MAX_GPUS:
        raise ValueError(f"at most {MAX_GPUS}")
    return value


def format_memory(size: int | float) -> str:
    """``512 MiB``, ``8 GiB``, ``1.5 GiB``: the unit that keeps the number readable."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{int(size)} B"


def format_cpus(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


# -- labels and constraints ---------------------------------------------------------------


def parse_label(text: str) -> tuple[str, str]:
    """``name=value`` or a bare ``name`` (value ""), as ``--label`` gives it."""
    name, _, value = text.partition("=")
    name = name.strip()
    check_label_name(name)
    if len(value) > 1000:
        raise ValueError(f"label {name}: the value must be at most 1000 characters")
    return name, value.strip()


def parse_labels(texts: Iterable[str]) -> dict[str, str]:
    labels = dict(parse_label(text) for text in texts if text.strip())
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    return labels


def check_label_name(name: str) -> str:
    if len(name) > 100 or not LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"label name {name!r}: use 1 to 100 letters, digits, '_', '.', '-' or '/', "
            "starting with a letter or digit"
        )
    return name


def check_constraints(value: Mapping[str, Any]) -> dict[str, str | bool]:
    """Constraints as stored: label name → value (``"6"``, ``"!windows"``) or true/false."""
    if len(value) > MAX_CONSTRAINTS:
        raise ValueError(f"at most {MAX_CONSTRAINTS} constraints")
    out: dict[str, str | bool] = {}
    for name, want in value.items():
        check_label_name(name)
        if isinstance(want, bool):
            out[name] = want
        elif isinstance(want, str | int | float):
            text = str(want)
            if len(text) > 1000:
                raise ValueError(f"constraint {name}: at most 1000 characters")
            if text in ("!", ""):
                raise ValueError(
                    f"constraint {name}: give a value, '!value', or true/false for exists"
                )
            out[name] = text
        else:
            raise ValueError(f"constraint {name}: must be a string, or true/false")
    return out


def parse_constraint(text: str) -> tuple[str, str | bool]:
    """``--constraint`` forms: ``ffmpeg=6``, ``os!=windows``, ``ssd`` (exists), ``!ssd``."""
    text = text.strip()
    if "!=" in text:
        name, _, value = text.partition("!=")
        return check_label_name(name.strip()), "!" + value.strip()
    if "=" in text:
        name, _, value = text.partition("=")
        return check_label_name(name.strip()), value.strip()
    if text.startswith("!"):
        return check_label_name(text[1:].strip()), False
    return check_label_name(text), True


def matches(constraints: Mapping[str, str | bool] | None, labels: Mapping[str, str]) -> bool:
    """Whether a worker with ``labels`` meets every constraint."""
    return constraints is None or all(
        _meets(want, labels.get(name)) for name, want in constraints.items()
    )


def _meets(want: str | bool, have: str | None) -> bool:
    if want is True:
        return have is not None
    if want is False:
        return have is None
    if want.startswith("!"):
        return have != want[1:]
    return have == want


def describe_constraint(name: str, want: str | bool) -> str:
    if want is True:
        return name
    if want is False:
        return f"!{name}"
    if want.startswith("!"):
        return f"{name}!={want[1:]}"
    return f"{name}={want}"


# -- fitting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What one job asks for; zero/None: nothing of that (one slot is always needed)."""

    cpus: float = 0.0
    memory: int = 0
    gpus: int = 0
    constraints: Mapping[str, str | bool] | None = None

    @classmethod
    def of(
        cls, cpus: float | None, memory: int | None, gpus: int | None, constraints: Any
    ) -> Request:
        return cls(float(cpus or 0), int(memory or 0), int(gpus or 0), constraints or None)

    @property
    def empty(self) -> bool:
        return not (self.cpus or self.memory or self.gpus or self.constraints)

    def shape(self) -> tuple[Any, ...]:
        """What jobs with one pending reason share: the same request."""
        items = tuple(sorted((self.constraints or {}).items()))
        return (self.cpus, self.memory, self.gpus, items)

    def describe(self) -> str:
        """``2 cpus, 4 GiB memory, 1 gpu, ffmpeg=6`` (empty: ``one slot``)."""
        parts = []
        if self.cpus:
            parts.append(f"{format_cpus(self.cpus)} cpus")
        if self.memory:
            parts.append(f"{format_memory(self.memory)} memory")
        if self.gpus:
            parts.append(f"{self.gpus} gpu{'s' if self.gpus != 1 else ''}")
        parts += [describe_constraint(n, w) for n, w in (self.constraints or {}).items()]
        return ", ".join(parts) or "one slot"


@dataclass(frozen=True)
class Capacity:
    """What a worker has (None: unknown, not limited) and what its jobs use now."""

    cpus: float | None = None
    memory: int | None = None
    gpus: int | None = None
    used_cpus: float = 0.0
    used_memory: int = 0
    used_gpus: int = 0

    @property
    def free_cpus(self) -> float:
        return math.inf if self.cpus is None else self.cpus - self.used_cpus

    @property
    def free_memory(self) -> float:
        return math.inf if self.memory is None else self.memory - self.used_memory

    @property
    def free_gpus(self) -> float:
        return math.inf if self.gpus is None else self.gpus - self.used_gpus

    def fits(self, request: Request) -> bool:
        """Whether the request fits in what is free now (a tiny tolerance for float cpus)."""
        return (
            request.cpus <= self.free_cpus + 1e-9
            and request.memory <= self.free_memory
            and request.gpus <= self.free_gpus
        )

    def could_fit(self, request: Request) -> bool:
        """Whether the request fits in the whole capacity (when nothing else runs)."""
        return Capacity(self.cpus, self.memory, self.gpus).fits(request)

    def plus(self, request: Request) -> Capacity:
        return Capacity(
            self.cpus,
            self.memory,
            self.gpus,
            self.used_cpus + request.cpus,
            self.used_memory + request.memory,
            self.used_gpus + request.gpus,
        )

    def use(self) -> float:
        """The fullest of cpus, memory and gpus, as a fraction (0 when none is known)."""
        fractions = [0.0]
        for total, used in (
            (self.cpus, self.used_cpus),
            (self.memory, self.used_memory),
            (self.gpus, self.used_gpus),
        ):
            if total:
                fractions.append(used / total)
        return max(fractions)


def too_big(request: Request, capacities: Iterable[Capacity]) -> str | None:
    """Why no worker with these capacities could ever run the request (None: one could).

    The message names the largest capacity of the resource that stopped it.
    """
    known = list(capacities)
    if not known or any(c.could_fit(request) for c in known):
        return None
    for name, asked, have in (
        ("cpus", request.cpus, [c.cpus for c in known]),
        ("memory", request.memory, [c.memory for c in known]),
        ("gpus", request.gpus, [c.gpus for c in known]),
    ):
        largest = max((h for h in have if h is not None), default=None)
        if asked and largest is not None and asked > largest:
            if name == "memory":
                return (
                    f"needs {format_memory(asked)} memory; the largest worker has "
                    f"{format_memory(largest)}"
                )
            shown = format_cpus(float(asked)) if name == "cpus" else str(asked)
            shown_largest = format_cpus(float(largest)) if name == "cpus" else str(largest)
            return f"needs {shown} {name}; the largest worker has {shown_largest}"
    return (
        f"needs {request.describe()}; no single worker has all of it (each has too little of one)"
    )

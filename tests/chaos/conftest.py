"""Fault tests: the e2e Cluster harness (real server and worker processes), plus ways to
read every job straight from the database and to count jobs' side effects.

Each job of a load writes one line to its own marker file, ``<marks>/<n>``, so a side effect
that happens twice shows as two lines, whatever the database says.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import db
from jobbalancer.db import schema
from tests.e2e.conftest import FAST_ENV, Cluster, Proc, free_port, make_cluster

__all__ = ["FAST_ENV", "Cluster", "Proc", "free_port", "make_cluster"]

FINAL = {"done", "failed", "timeout", "killed", "lost", "occupied"}


@dataclass(frozen=True)
class Row:
    id: int
    state: str
    attempt: int
    retry_of: int | None
    worker_id: int | None
    command: str | None


def rows(url: str) -> list[Row]:
    """Every job, read from the database itself (not through the server under test)."""
    engine = db.connect(url, pool_size=1)
    try:
        with db.read(engine) as conn:
            j = schema.jobs
            result = conn.execute(
                sa.select(j.c.id, j.c.state, j.c.attempt, j.c.retry_of, j.c.worker_id, j.c.command)
            )
            return [Row(*r) for r in result]
    finally:
        engine.dispose()


def count_states(url: str) -> collections.Counter[str]:
    return collections.Counter(r.state for r in rows(url))


def chains(all_rows: list[Row]) -> dict[int, list[Row]]:
    """Attempts grouped by their first attempt's id, in attempt order."""
    by_id = {r.id: r for r in all_rows}

    def root(r: Row) -> int:
        while r.retry_of is not None:
            r = by_id[r.retry_of]
        return r.id

    out: dict[int, list[Row]] = collections.defaultdict(list)
    for r in sorted(all_rows, key=lambda r: r.attempt):
        out[root(r)].append(r)
    return dict(out)


class Marks:
    """A directory where job ``n`` appends a line to file ``n`` each time it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # jobs may run as nobody

    def command(self, n: int, before: str = "") -> str:
        return f"{before}echo $JOBBALANCER_JOB_ID >> {self.path}/{n}"

    def count(self, n: int) -> int:
        f = self.path / str(n)
        return len(f.read_text().split()) if f.exists() else 0

    def total(self) -> int:
        return sum(len(f.read_text().split()) for f in self.path.iterdir())


def check_nothing_lost_or_doubled(
    url: str, marks: Marks, submitted: dict[int, int], *, retried: set[int] = frozenset()
) -> dict[str, Any]:
    """Every submitted job (first attempt id → n) ends in exactly one final state; its side
    effect happened once per attempt at most, and at least once when it ended done;
    jobs without retries never ran twice. Returns figures for the report."""
    all_rows = rows(url)
    grouped = chains(all_rows)
    assert set(grouped) == set(submitted), "a job appeared or vanished"
    not_final = [r for r in all_rows if r.state not in FINAL]
    assert not not_final, f"jobs not in a final state: {not_final[:5]}"
    doubled = []
    for first, attempts in grouped.items():
        n = submitted[first]
        effects = marks.count(n)
        last = attempts[-1]
        # Only the last attempt may be anything but lost/failed (earlier ones were retried).
        assert all(a.state in ("lost", "failed") for a in attempts[:-1]), attempts
        if last.state == "done":
            assert effects >= 1, f"job {first} done but its side effect never happened"
        if effects > len(attempts) or (len(attempts) == 1 and effects > 1):
            doubled.append((first, effects, attempts))
        if first not in retried:
            assert len(attempts) == 1, f"job {first} had no retries but ran again: {attempts}"
    assert not doubled, f"side effects beyond the attempts: {doubled[:5]}"
    return {
        "submitted": len(submitted),
        "recorded": len(grouped),
        "attempts": len(all_rows),
        "states": dict(collections.Counter(r.state for r in all_rows)),
        "side_effects": marks.total(),
    }


@pytest.fixture
def marks(tmp_path: Path) -> Marks:
    return Marks(tmp_path / "marks")


# Fixtures imported from the e2e harness are used by name in this directory's tests.
_ = make_cluster

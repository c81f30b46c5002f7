"""Schedules: the leader's firing tick as enabled schedules grow to 10 000 (100 000 in a
full run), and how late occurrences fire.

``python -m bench.schedules [--backend sqlite] [--levels 1000,10000] [--seconds 10]``,
or ``python -m bench --only schedules``.

At each level, N schedules exist, all enabled: ``DUE`` of them fire every second (``*
* * * * *``, overlap ``allow``: each occurrence submits a job), the others at times
spread over the next days (their rows sit in the ``next_fire_at`` index, past its due
range). Measured in-process on a fresh database, with the firing code the server runs
(:class:`jobbalancer.service.firing.Firer`):

- idle tick: a pass with nothing due (the due query);
- firing tick: a pass that fires the ``DUE`` occurrences, each a job (ms per pass and per
  occurrence);
- burst: ``BURST`` schedules due at the same instant (a top of the hour): ms until the
  last has fired, which is the lateness of the last one;
- lateness: the leader's loop (``Firer.run``) for ``--seconds`` s, each occurrence's
  decision time minus its fire time (``late_ms``), p50 / p99 / max.

A tick reads the due range of an index: it should cost the same at every level.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from bench.cluster import BACKENDS, Database
from jobbalancer import auth, db
from jobbalancer.db import schema
from jobbalancer.service import firing

S, O = schema.schedules, schema.schedule_occurrences  # noqa: E741
DUE = 10
TICKS = 20
BURST = 200


def _setup(engine: sa.Engine, n: int) -> list[int]:
    """N schedules: DUE firing every second, the rest once a day at spread times. The
    ids of the DUE ones."""
    now = datetime.now(UTC).replace(microsecond=0)
    with db.write(engine) as conn:
        owner = auth.create_user(conn, "bench", auth.Role.ADMIN)

    def row(i: int) -> dict[str, object]:
        every_second = i < DUE
        minute, hour = i % 60, (i // 60) % 24
        return {
            "name": f"s{i}", "description": "", "job": {"command": "true"},
            "cron": "* * * * * *" if every_second else f"{minute} {hour} * * *",
            "timezone": "UTC", "enabled": True, "overlap": "allow", "catch_up": "latest",
            "catch_up_max": 10, "user_id": owner.id, "user_name": owner.name,
            "next_fire_at": now + (timedelta(days=1) if every_second
                                   else timedelta(days=1, seconds=i)),
            "created_at": now, "updated_at": now,
        }  # fmt: skip

    for start in range(0, n, 5000):
        with db.write(engine) as conn:
            conn.execute(sa.insert(S), [row(i) for i in range(start, min(n, start + 5000))])
    with engine.connect() as conn:
        sql = {"postgresql": "ANALYZE", "mysql": "ANALYZE TABLE schedules", "sqlite": "ANALYZE"}
        conn.exec_driver_sql(sql[db.backend(conn)])
        conn.commit()
    with db.read(engine) as conn:
        return list(conn.execute(sa.select(S.c.id).where(S.c.cron == "* * * * * *")).scalars())


def _make_due(engine: sa.Engine, ids: list[int], at: datetime) -> None:
    with db.write(engine) as conn:
        conn.execute(sa.update(S).where(S.c.id.in_(ids)).values(next_fire_at=at))


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def ticks(engine: sa.Engine, ids: list[int]) -> tuple[float, float]:
    """Median ms of an idle pass and of a pass firing DUE occurrences."""
    idle, busy = [], []
    clock_at = datetime.now(UTC) + timedelta(hours=1)  # past the DUE ones' next second
    for k in range(TICKS):
        at = clock_at + timedelta(seconds=k)
        f = firing.Firer(engine, clock=lambda at=at: at)  # type: ignore[misc]
        _make_due(engine, ids, at + timedelta(days=1))
        start = time.perf_counter()
        assert f.tick() == 0
        idle.append(_ms(start))
        _make_due(engine, ids, at)
        start = time.perf_counter()
        fired = f.tick()
        busy.append(_ms(start))
        assert fired == len(ids), fired
    return statistics.median(idle), statistics.median(busy)


def burst(engine: sa.Engine, every_second: list[int]) -> float:
    """Ms to fire BURST occurrences due at one instant (other schedules than the DUE)."""
    with db.read(engine) as conn:
        ids = list(conn.execute(sa.select(S.c.id).where(S.c.cron != "* * * * * *")).scalars())
    ids = ids[:BURST]
    at = datetime.now(UTC) + timedelta(hours=3)
    _make_due(engine, every_second, at + timedelta(days=1))
    _make_due(engine, ids, at)
    start = time.perf_counter()
    fired = firing.Firer(engine, clock=lambda: at).tick()
    assert fired == len(ids), fired
    return _ms(start)


def lateness(engine: sa.Engine, ids: list[int], seconds: float) -> list[int]:
    """late_ms of every occurrence the leader's loop fired in ``seconds``."""
    with db.read(engine) as conn:
        now = db.now(conn)
        start_id = conn.execute(sa.select(sa.func.max(O.c.id))).scalar() or 0
    _make_due(engine, ids, now.replace(microsecond=0) + timedelta(seconds=1))
    stop = threading.Event()
    loop = threading.Thread(target=firing.Firer(engine).run, args=(lambda: True, stop))
    loop.start()
    time.sleep(seconds)
    stop.set()
    loop.join(timeout=30)
    with db.read(engine) as conn:
        rows = conn.execute(sa.select(O.c.late_ms).where(O.c.id > start_id, O.c.manual.is_(False)))
        return sorted(int(v) for v in rows.scalars())


def pct(values: list[int], p: float) -> float:
    return float(values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))])


def run(backend: str, levels: list[int], seconds: float) -> list[list[str]]:
    """One row per level: schedules, idle tick, firing tick, per occurrence, lateness."""
    out = []
    for n in levels:
        with tempfile.TemporaryDirectory() as tmp, Database(backend, Path(tmp)) as url:
            engine = db.connect(url)
            try:
                db.upgrade(engine)
                ids = _setup(engine, n)
                idle, busy = ticks(engine, ids)
                all_at_once = burst(engine, ids)
                late = lateness(engine, ids, seconds)
            finally:
                engine.dispose()
        out.append([
            backend, str(n), f"{idle:.2f}", f"{busy:.1f}", f"{busy / DUE:.2f}",
            f"{all_at_once:.0f}",
            str(len(late)), f"{pct(late, 50):.0f}", f"{pct(late, 99):.0f}", str(max(late)),
        ])  # fmt: skip
    return out


HEADER = ["backend", "schedules", "idle tick", f"tick firing {DUE}", "per occurrence",
          f"burst of {BURST}", "occurrences", "late p50", "p99", "max"]  # fmt: skip
TITLE = (
    f"7. Schedules: the leader's tick with N enabled schedules ({DUE} firing every second, "
    "each a job); ms"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--levels", default="1000,10000")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    rows = []
    for backend in args.backend.split(","):
        assert backend in BACKENDS, backend
        rows += run(backend, [int(x) for x in args.levels.split(",")], args.seconds)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER)]
    print(f"\n{TITLE}")
    for line in (HEADER, *rows):
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()

"""The output sink's closing(): a job's last output goes into the transaction of whoever
records its end, and nothing is lost when that transaction does not commit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from jobbalancer import db
from jobbalancer.db import schema
from jobbalancer.worker.output import OutputSink

OUT = schema.job_output


def _data(engine: sa.Engine, job_id: int) -> list[bytes]:
    with db.read(engine) as conn:
        query = sa.select(OUT.c.data).where(OUT.c.job_id == job_id).order_by(OUT.c.seq)
        return [row.data for row in conn.execute(query)]


def _sink(engine: sa.Engine, written: dict[int, bytes]) -> OutputSink:
    """A sink holding what each job wrote, at most 8 bytes of it."""
    sink = OutputSink(engine)
    for job_id, data in written.items():
        sink.open(job_id, cap=8)
        sink.write(job_id, "stdout", data)
    return sink


def test_the_rows_commit_with_the_recorders_transaction(sqlite_engine: sa.Engine) -> None:
    sink = _sink(sqlite_engine, {1: b"one\n", 2: b"two and more\n"})

    with sink.closing([1, 2]) as out, db.write(sqlite_engine) as conn:
        out.write(conn)
        assert out.kept == {1: 4, 2: 8}  # j2 past its cap of 8
        assert _data(sqlite_engine, 1) == []  # not committed yet

    assert _data(sqlite_engine, 1) == [b"one\n"]
    assert _data(sqlite_engine, 2) == [
        b"two and ",
        b"\n[jobbalancer: output truncated, 5 bytes dropped]\n",
    ]
    assert sink._jobs == {}  # written and forgotten
    assert sink._buffered == 0


def test_a_block_that_raises_gives_the_rows_back_for_the_next_try(
    sqlite_engine: sa.Engine,
) -> None:
    sink = _sink(sqlite_engine, {3: b"0123456789"})

    with pytest.raises(RuntimeError), sink.closing([3]) as out:
        with db.write(sqlite_engine) as conn:
            out.write(conn)
            raise RuntimeError("recording the end failed: nothing commits")

    assert _data(sqlite_engine, 3) == []
    # A retry writes the same rows once, and the truncation marker once.
    assert sink.finish(3, lambda conn, kept: kept) == 8
    assert _data(sqlite_engine, 3) == [
        b"01234567",
        b"\n[jobbalancer: output truncated, 2 bytes dropped]\n",
    ]


def test_a_block_that_never_writes_loses_nothing(sqlite_engine: sa.Engine) -> None:
    sink = _sink(sqlite_engine, {4: b"kept\n"})

    with sink.closing([4]) as out:
        assert out.kept == {4: 5}  # looked at, never written

    assert _data(sqlite_engine, 4) == []
    assert sink._buffered == 5
    sink.flush()
    assert _data(sqlite_engine, 4) == [b"kept\n"]


def test_closing_a_job_the_sink_never_saw_keeps_nothing(sqlite_engine: sa.Engine) -> None:
    sink = OutputSink(sqlite_engine)

    with sink.closing([99]) as out, db.write(sqlite_engine) as conn:
        out.write(conn)

    assert out.kept == {99: 0}
    assert _data(sqlite_engine, 99) == []
    assert sink._jobs == {}


def test_a_closed_job_takes_no_more_output(sqlite_engine: sa.Engine) -> None:
    sink = _sink(sqlite_engine, {5: b"a"})

    with pytest.raises(RuntimeError), sink.closing([5]):
        raise RuntimeError("failed before writing")
    sink.write(5, "stdout", b"late")  # the job ended: nothing it wrote after counts

    assert sink.finish(5, lambda conn, kept: kept) == 1
    assert _data(sqlite_engine, 5) == [b"a"]

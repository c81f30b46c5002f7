"""The output sink: batching, the byte cap and its marker, and surviving write failures."""

from __future__ import annotations

import sqlalchemy as sa

from jobbalancer import db
from jobbalancer.db import schema
from jobbalancer.worker.output import OutputSink

OUT = schema.job_output


def _rows(engine: sa.Engine, job_id: int) -> list[sa.Row[tuple[str, int, int, bytes]]]:
    with db.read(engine) as conn:
        query = sa.select(OUT.c.stream, OUT.c.offset, OUT.c.stream_offset, OUT.c.data)
        return list(conn.execute(query.where(OUT.c.job_id == job_id).order_by(OUT.c.seq)))


def _finish(sink: OutputSink, job_id: int) -> int:
    return sink.finish(job_id, lambda conn, kept: kept)


def test_runs_of_one_stream_become_one_chunk_with_offsets(sqlite_engine: sa.Engine) -> None:
    sink = OutputSink(sqlite_engine)
    sink.open(1, cap=1000)
    sink.write(1, "stdout", b"hello ")
    sink.write(1, "stdout", b"world\n")
    sink.write(1, "stderr", b"oops\n")
    sink.write(1, "stdout", b"more\n")
    assert _finish(sink, 1) == 22
    assert [tuple(r) for r in _rows(sqlite_engine, 1)] == [
        ("stdout", 0, 0, b"hello world\n"),
        ("stderr", 12, 0, b"oops\n"),
        ("stdout", 17, 12, b"more\n"),
    ]


def test_output_past_the_cap_is_dropped_and_counted_once(sqlite_engine: sa.Engine) -> None:
    sink = OutputSink(sqlite_engine)
    sink.open(2, cap=10)
    sink.write(2, "stdout", b"0123456789abcdef")
    sink.write(2, "stderr", b"xyz")
    # Reporting may be retried after a failure: the marker must not repeat.
    assert _finish(sink, 2) == 10
    rows = _rows(sqlite_engine, 2)
    assert rows[0].data == b"0123456789"
    assert rows[-1].data == b"\n[jobbalancer: output truncated, 9 bytes dropped]\n"
    assert rows[-1].stream == "stdout"
    assert len(rows) == 2


def test_bytes_that_are_not_text_are_kept_as_they_are(sqlite_engine: sa.Engine) -> None:
    sink = OutputSink(sqlite_engine)
    sink.open(3, cap=1000)
    sink.write(3, "stdout", b"\xff\xfe\x00bad\x00")
    _finish(sink, 3)
    assert _rows(sqlite_engine, 3)[0].data == b"\xff\xfe\x00bad\x00"


def test_a_failed_write_keeps_the_output_for_the_next_try(sqlite_engine: sa.Engine) -> None:
    # Given a database that refuses the first batch
    sink = OutputSink(sqlite_engine)
    sink.open(4, cap=1000)
    sink.write(4, "stdout", b"first\n")
    with db.write(sqlite_engine) as conn:
        conn.exec_driver_sql("ALTER TABLE job_output RENAME TO job_output_away")
    try:
        sink.flush()
        raise AssertionError("the write should have failed")
    except sa.exc.OperationalError:
        pass
    finally:
        with db.write(sqlite_engine) as conn:
            conn.exec_driver_sql("ALTER TABLE job_output_away RENAME TO job_output")
    # When more arrives and the database is back
    sink.write(4, "stdout", b"second\n")
    _finish(sink, 4)
    # Then nothing is lost, duplicated or out of order
    rows = _rows(sqlite_engine, 4)
    assert b"".join(r.data for r in rows) == b"first\nsecond\n"
    assert [r.offset for r in rows] == [0]


def test_buffer_limit_drops_and_counts_while_the_database_is_away(
    sqlite_engine: sa.Engine,
) -> None:
    sink = OutputSink(sqlite_engine, max_buffer_bytes=65536)
    sink.open(5, cap=1 << 20)
    sink.write(5, "stdout", b"a" * 60000)
    sink.write(5, "stdout", b"b" * 10000)  # only 5536 of these fit in the buffer
    assert _finish(sink, 5) == 65536
    data = b"".join(r.data for r in _rows(sqlite_engine, 5))
    assert data.endswith(b"[jobbalancer: output truncated, 4464 bytes dropped]\n")


def test_report_runs_in_the_same_transaction_as_the_last_chunks(
    sqlite_engine: sa.Engine,
) -> None:
    sink = OutputSink(sqlite_engine)
    sink.open(6, cap=100)
    sink.write(6, "stdout", b"tail\n")

    def report(conn: sa.Connection, kept: int) -> int:
        raise RuntimeError("the result could not be recorded")

    try:
        sink.finish(6, report)
    except RuntimeError:
        pass
    # Nothing was written: output and result commit together or not at all…
    assert _rows(sqlite_engine, 6) == []
    # …and a retry writes both.
    assert sink.finish(6, lambda conn, kept: kept) == 5
    assert [r.data for r in _rows(sqlite_engine, 6)] == [b"tail\n"]


def test_a_discarded_job_frees_its_buffer_and_holds_up_no_later_write(
    sqlite_engine: sa.Engine,
) -> None:
    sink = OutputSink(sqlite_engine)
    sink.open(4, cap=1000)
    sink.open(5, cap=1000)
    sink.write(4, "stdout", b"never written")
    sink.write(5, "stdout", b"kept")

    sink.discard(4)  # its end was recorded without its output
    sink.write(4, "stdout", b"late")  # a job that is gone takes nothing more
    sink.flush()

    assert _rows(sqlite_engine, 4) == []
    assert [r.data for r in _rows(sqlite_engine, 5)] == [b"kept"]
    assert sink._buffered == 0


def test_a_refused_finish_drops_the_jobs_last_output(sqlite_engine: sa.Engine) -> None:
    # The report said the job is no longer ours (declared lost): its log stays as it was.
    sink = OutputSink(sqlite_engine)
    sink.open(7, cap=1000)
    sink.write(7, "stdout", b"first\n")
    sink.flush()
    sink.write(7, "stdout", b"after the verdict\n")
    assert sink.finish(7, lambda conn, kept: False) is False
    assert [r.data for r in _rows(sqlite_engine, 7)] == [b"first\n"]
    sink.write(7, "stdout", b"later still\n")  # the job is forgotten: nothing more is taken
    sink.flush()
    assert [r.data for r in _rows(sqlite_engine, 7)] == [b"first\n"]

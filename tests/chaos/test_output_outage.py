"""The output sink when the database fails in the middle of a job's report.

Seen in the database-restart test on MariaDB: a report failed, the background flusher then
wrote the job's last chunks, and the retried report recorded ``output_bytes = 0`` for a
job whose output was all there.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from jobbalancer import db
from jobbalancer.db import schema
from jobbalancer.worker.output import OutputSink

pytestmark = pytest.mark.chaos


class Outage(Exception):
    pass


def test_a_retried_report_still_counts_output_the_flusher_wrote_meanwhile(
    sqlite_engine: sa.Engine,
) -> None:
    sink = OutputSink(sqlite_engine)
    sink.open(7, cap=10)
    sink.write(7, "stdout", b"0123456789 and past the cap")

    def failing(conn: sa.Connection, kept: int) -> int:
        raise Outage  # the database went away while the result was being written

    with pytest.raises(Outage):
        sink.finish(7, failing)
    sink.flush()  # the background flusher gets through first, once the database is back
    kept = sink.finish(7, lambda conn, kept: kept)  # the worker's retry
    assert kept == 10
    with db.read(sqlite_engine) as conn:
        o = schema.job_output
        data = b"".join(
            conn.execute(sa.select(o.c.data).where(o.c.job_id == 7).order_by(o.c.seq)).scalars()
        )
    assert data == b"0123456789\n[jobbalancer: output truncated, 17 bytes dropped]\n"


def test_finished_jobs_are_forgotten_once_reported(sqlite_engine: sa.Engine) -> None:
    sink = OutputSink(sqlite_engine)
    for job_id in range(3):
        sink.open(job_id, cap=100)
        sink.write(job_id, "stdout", b"x")
        assert sink.finish(job_id, lambda conn, kept: kept) == 1
    sink.flush()
    assert sink._jobs == {}  # nothing kept per finished job: no leak over a worker's life

"""The output sink: batches the bytes jobs write into ``job_output`` rows.

Runner threads hand bytes in as they read them; a flusher thread writes everything
pending, for all jobs, in one transaction about every ``flush_interval`` seconds or as
soon as ``flush_bytes`` are waiting, so a chatty job costs few writes. Chunks are
insert-only. Each job has a byte cap; past it the rest is dropped and counted, and a
marker line says how much. While the database is away, output stays buffered up to
``max_buffer_bytes`` (then dropped and counted the same way) and is written once it is
back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa

from jobbalancer import db
from jobbalancer.db import schema
from jobbalancer.worker.masking import Masker

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_CHUNK = 1024 * 1024  # one row never holds more than this
# Stamped with the database clock, like every other time in the database.
_INSERT = sa.insert(schema.job_output).values(at=db.utcnow())


@dataclass
class _JobOutput:
    cap: int
    seq: int = 0
    offset: int = 0  # bytes sealed into chunks so far, both streams
    stream_offsets: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    accepted: int = 0  # bytes taken (within the cap)
    dropped: int = 0  # bytes past the cap or past the buffer
    dropped_stream: str = "stdout"
    pending: list[tuple[str, bytearray]] = field(default_factory=list)
    closed: bool = False
    # Secret values the job uses, masked per stream before anything is kept (see mask()).
    maskers: dict[str, Masker] | None = None


@dataclass
class Closing:
    """The last output of jobs whose end is being recorded (see :meth:`OutputSink.closing`)."""

    kept: dict[int, int]  # bytes of output kept, by job: what their records say
    rows: list[dict[str, Any]]
    written: bool = False

    def write(self, conn: sa.Connection, *, skip: Collection[int] = ()) -> None:
        """Insert the rows, in the transaction that records the jobs' ends, after their
        ends were recorded: ``skip`` are the jobs whose end was refused (no longer this
        worker's), whose output is dropped rather than appended to a lost job's log."""
        rows = [r for r in self.rows if r["job_id"] not in skip] if skip else self.rows
        if rows:
            conn.execute(_INSERT, rows)
        for job_id in skip:
            size = sum(r["size"] for r in self.rows if r["job_id"] == job_id)
            if size:
                log.warning("job %d: no longer this worker's; dropped %s of its output",
                            job_id, _kb(size))  # fmt: skip
        self.written = True


def _kb(size: int) -> str:
    return f"{size} bytes" if size < 1024 else f"{size / 1024:.1f} kB"


class OutputSink:
    """Collects job output and writes it in batches; thread-safe."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        flush_interval: float = 0.2,
        flush_bytes: int = 65536,
        max_buffer_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.engine = engine
        self.flush_interval = flush_interval
        self.flush_bytes = flush_bytes
        self.max_buffer_bytes = max_buffer_bytes
        self._jobs: dict[int, _JobOutput] = {}
        self._lock = threading.Lock()  # guards _jobs and their pending buffers
        self._drained = threading.Condition(self._lock)  # _buffered went down
        # Past this much pending, a job's writes wait for the flusher (see write()).
        self.high_water = min(max_buffer_bytes // 2, max(16 * flush_bytes, 8 * 1024 * 1024))
        self._flush_lock = threading.Lock()  # one flush at a time keeps rows in seq order
        self._buffered = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="output-sink", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the flusher after one last flush attempt."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._try_flush()
        self._try_flush()

    def _try_flush(self) -> bool:
        try:
            self.flush()
        except Exception as exc:
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning("cannot write job output (%s); keeping it buffered", exc)
            return False
        if self._failing_since is not None:
            log.warning(
                "job output written again after %.1f s", time.monotonic() - self._failing_since
            )
            self._failing_since = None
        return True

    # -- per job ------------------------------------------------------------------------

    def open(self, job_id: int, cap: int) -> None:
        """Start collecting for ``job_id``, keeping at most ``cap`` bytes of its output."""
        with self._lock:
            self._jobs[job_id] = _JobOutput(cap=cap)

    def mask(self, job_id: int, values: Iterable[str]) -> None:
        """Replace these (secret) values with ``****`` in the job's output from now on,
        before it is counted, capped or kept; also a value split across two writes."""
        found = [v for v in values if v]
        with self._lock:
            out = self._jobs.get(job_id)
            if out is not None and found:
                out.maskers = {name: Masker(found) for name in ("stdout", "stderr")}

    def write(self, job_id: int, stream: str, data: bytes) -> None:
        """Take bytes a job wrote on ``stream`` ("stdout" or "stderr")."""
        if not data:
            return
        with self._lock:
            out = self._jobs.get(job_id)
            if out is None or out.closed:
                return
            if out.maskers is not None:
                data = out.maskers[stream].feed(data)
            self._keep(out, stream, data)
            wake = self._buffered >= self.flush_bytes
        if wake:
            self._wake.set()
        self._throttle()

    def _throttle(self) -> None:
        """Hold back a job that writes faster than the database takes its output: its
        reader waits here, so the job blocks on a full pipe instead of its output piling
        up in memory and then being dropped. Only while writes succeed (a database that
        is away is what the buffer is for), and for at most 0.1 s per call, so the runner
        still notices kills and timeouts."""
        with self._drained:
            self._drained.wait_for(
                lambda: self._buffered < self.high_water or self._failing_since is not None,
                timeout=0.1,
            )

    def _keep(self, out: _JobOutput, stream: str, data: bytes) -> None:
        """Append what fits under the cap and the buffer; count the rest as dropped."""
        if not data:
            return
        keep = self._room(out, len(data))
        if keep < len(data):
            if out.dropped == 0:
                out.dropped_stream = stream
            out.dropped += len(data) - keep
        if keep:
            self._append(out, stream, data[:keep])

    def _room(self, out: _JobOutput, size: int) -> int:
        by_cap = max(0, out.cap - out.accepted)
        by_buffer = max(0, self.max_buffer_bytes - self._buffered)
        return min(size, by_cap, by_buffer)

    def _append(self, out: _JobOutput, stream: str, data: bytes) -> None:
        out.accepted += len(data)
        self._buffered += len(data)
        if out.pending and out.pending[-1][0] == stream and len(out.pending[-1][1]) < MAX_CHUNK:
            out.pending[-1][1].extend(data)
        else:
            out.pending.append((stream, bytearray(data)))

    def discard(self, job_id: int) -> None:
        """Forget a job and the output it has not written (its end was recorded without
        it), so it holds up no later write and no buffer space."""
        with self._lock:
            out = self._jobs.pop(job_id, None)
            if out is not None:
                self._buffered -= sum(len(data) for _, data in out.pending)
                self._drained.notify_all()

    def finish(self, job_id: int, report: Callable[[sa.Connection, int], T]) -> T:
        """Write the rest of ``job_id``'s output and ``report`` its end, in one transaction
        (``report(conn, kept)`` gets the bytes kept): :meth:`closing` for one job."""
        with self.closing([job_id]) as out, db.write(self.engine) as conn:
            result = report(conn, out.kept[job_id])
            out.write(conn, skip=() if result is not False else (job_id,))
            return result

    @contextlib.contextmanager
    def closing(self, job_ids: Sequence[int]) -> Iterator[Closing]:
        """The rest of these jobs' output, for the transaction that records their end.

        Use it outside that transaction, so the transaction commits first::

            with sink.closing(ids) as out, db.write(engine) as conn:
                ...  # record the ends, with out.kept[job_id] bytes of output each
                out.write(conn, skip=refused)  # the output of the jobs still ours

        The jobs take no more output; a truncation marker is added once, however often
        this is retried after a failure (the database may be away). The flusher waits
        meanwhile, so rows stay in order. If the block raises (or never writes), the rows
        go back to be written with the next try; once it returns, they count as written
        and the jobs are forgotten.
        """
        kept = self._close(job_ids)
        with self._flush_lock:
            rows, sealed = self._seal(only=set(job_ids))
            out = Closing(kept, rows)
            try:
                yield out
            except Exception:
                self._unseal(sealed)
                raise
            if not out.written:  # nothing went into the database: nothing is lost
                self._unseal(sealed)
                return
            self._written(rows)
        with self._lock:
            # Forgotten only now: a retried report must still find what was kept, even if
            # the flusher wrote the job's last chunks between the tries.
            for job_id in job_ids:
                left = self._jobs.get(job_id)
                if left is not None and not left.pending:
                    del self._jobs[job_id]

    def _close(self, job_ids: Sequence[int]) -> dict[int, int]:
        """Take no more output for these jobs (adding the truncation marker once); the
        bytes kept by job."""
        kept: dict[int, int] = {}
        with self._lock:
            for job_id in job_ids:
                out = self._jobs.setdefault(job_id, _JobOutput(cap=0))
                if not out.closed:
                    out.closed = True
                    for stream, masker in (out.maskers or {}).items():
                        self._keep(out, stream, masker.flush())  # held back: no value after all
                    if out.dropped:
                        marker = f"\n[jobbalancer: output truncated, {out.dropped} bytes dropped]\n"
                        out.pending.append((out.dropped_stream, bytearray(marker.encode())))
                        self._buffered += len(marker)
                kept[job_id] = out.accepted
        return kept

    # -- writing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every pending chunk of every job in one transaction."""
        with self._flush_lock:
            rows, sealed = self._seal()
            if not rows:
                return
            try:
                with db.write(self.engine) as conn:
                    conn.execute(_INSERT, rows)
            except Exception:
                self._unseal(sealed)
                raise
            self._written(rows)

    def _written(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._buffered -= sum(r["size"] for r in rows)
            self._drained.notify_all()

    def _seal(
        self, only: set[int] | None = None
    ) -> tuple[list[dict[str, Any]], list[tuple[int, list[tuple[str, bytearray]]]]]:
        """Take pending chunks (of one job, or all) as rows, numbering them in order."""
        rows: list[dict[str, Any]] = []
        sealed = []
        with self._lock:
            for job_id, out in self._jobs.items():
                if not out.pending or (only is not None and job_id not in only):
                    continue
                chunks, out.pending = out.pending, []
                sealed.append((job_id, chunks))
                for stream, data in chunks:
                    rows.append(self._row(job_id, out, stream, bytes(data)))
        return rows, sealed

    def _row(self, job_id: int, out: _JobOutput, stream: str, data: bytes) -> dict[str, Any]:
        out.seq += 1
        row = {
            "job_id": job_id,
            "seq": out.seq,
            "stream": stream,
            "offset": out.offset,
            "stream_offset": out.stream_offsets[stream],
            "size": len(data),
            "data": data,
        }
        out.offset += len(data)
        out.stream_offsets[stream] += len(data)
        return row

    def _unseal(self, sealed: list[tuple[int, list[tuple[str, bytearray]]]]) -> None:
        """Put chunks back after a failed write, rewinding the counters they advanced."""
        with self._lock:
            for job_id, chunks in sealed:
                out = self._jobs.get(job_id)
                if out is None:  # discarded meanwhile: its output goes with it
                    self._buffered -= sum(len(data) for _, data in chunks)
                    self._drained.notify_all()
                    continue
                for stream, data in chunks:
                    out.seq -= 1
                    out.offset -= len(data)
                    out.stream_offsets[stream] -= len(data)
                out.pending = chunks + out.pending

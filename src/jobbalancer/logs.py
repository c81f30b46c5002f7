"""Reading a job's output from ``job_output`` chunks.

There are three views of a job's output: ``stdout``, ``stderr``, and ``all`` (both, in the
order written). Each chunk carries its byte offset in the whole output (``offset``) and in
its own stream (``stream_offset``), so any view can be read from any byte offset without
summing earlier chunks. Output is raw bytes; decoding is the reader's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import sqlalchemy as sa

from jobbalancer.db import schema

O = schema.job_output  # noqa: E741 - the table's one-letter alias, like J and W elsewhere
View = Literal["stdout", "stderr", "all"]
VIEWS: tuple[str, ...] = get_args(View)
# Chunks fetched per query: bounded memory whatever the job wrote.
BATCH = 500
DEFAULT_LIMIT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    """Output as written: ``pos`` is the byte offset of ``data`` in the view it was read from."""

    seq: int
    stream: str
    pos: int
    data: bytes

    @property
    def end(self) -> int:
        """The view offset just after this chunk: where to read on from."""
        return self.pos + len(self.data)


def chunks(
    conn: sa.Connection,
    job_id: int,
    *,
    view: View = "all",
    offset: int = 0,
    after_seq: int = -1,
    limit: int = BATCH,
) -> list[Chunk]:
    """Up to ``limit`` chunks of a view, oldest first, from byte ``offset`` of the view and
    after chunk ``after_seq``; the first is cut to start exactly at ``offset``."""
    pos = O.c.offset if view == "all" else O.c.stream_offset
    query = (
        sa.select(O.c.seq, O.c.stream, pos.label("pos"), O.c.data)
        .where(O.c.job_id == job_id, O.c.seq > after_seq, pos + O.c.size > offset)
        .order_by(O.c.seq)
        .limit(limit)
    )
    if view != "all":
        query = query.where(O.c.stream == view)
    found = []
    for row in conn.execute(query):
        data, start = bytes(row.data), int(row.pos)
        if start < offset:
            data, start = data[offset - start :], offset
        found.append(Chunk(seq=row.seq, stream=row.stream, pos=start, data=data))
    return found


def read(
    conn: sa.Connection,
    job_id: int,
    stream: View = "all",
    offset: int = 0,
    limit_bytes: int = DEFAULT_LIMIT_BYTES,
) -> tuple[bytes, int]:
    """Up to ``limit_bytes`` of a view from byte ``offset``, and the offset to read next."""
    parts: list[bytes] = []
    size, after_seq = 0, -1
    while size < limit_bytes:
        batch = chunks(conn, job_id, view=stream, offset=offset, after_seq=after_seq)
        for chunk in batch:
            parts.append(chunk.data[: limit_bytes - size])
            size += len(parts[-1])
            if size >= limit_bytes:
                break
        if len(batch) < BATCH:
            break
        after_seq = batch[-1].seq
    return b"".join(parts), offset + size


def complete_utf8(data: bytes) -> bytes:
    """``data`` without a UTF-8 sequence cut off at its end (the rest may not be written yet),
    so a reader that continues from the returned length never splits a character."""
    # A sequence is at most 4 bytes: look back at most 3 for the start of the last one.
    for back in range(1, min(4, len(data) + 1)):
        byte = data[-back]
        if byte < 0x80:  # ASCII: nothing is cut
            return data
        if byte >= 0xC0:  # a lead byte: is its sequence complete?
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if back >= needed else data[:-back]
    return data

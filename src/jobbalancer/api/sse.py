"""A job's output as server-sent events, while it is written.

The database is the only channel from workers, so the stream polls it (every 0.2 s, in a
worker thread so the event loop never blocks): ``output`` events as chunks appear, then
one ``end`` event with the final job, then the stream closes. Each ``output`` event's
``id`` is the byte offset after it, so a reconnecting EventSource resumes with
``Last-Event-ID``.
"""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import AsyncIterator

import anyio
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from jobbalancer import db, errors, jobs, logs
from jobbalancer.api import models

POLL_SECONDS = 0.2
KEEPALIVE_SECONDS = 15.0


def format_event(name: str, data: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {data}\n\n"


def _poll(
    engine: sa.Engine, job_id: int, view: logs.View, offset: int, after_seq: int
) -> tuple[jobs.Job, list[logs.Chunk]]:
    with db.read(engine) as conn:
        # The job first: if it is over now, every chunk it wrote is already committed, so
        # the chunks read next are all there is.
        job = jobs.get(conn, job_id)
        batch = logs.chunks(conn, job_id, view=view, offset=offset, after_seq=after_seq)
    return job, batch


class _Decoder:
    """UTF-8 per stream, carrying a character split across chunks over to the next."""

    def __init__(self) -> None:
        self._streams: dict[str, codecs.IncrementalDecoder] = {}

    def decode(self, stream: str, data: bytes) -> str:
        decoder = self._streams.get(stream)
        if decoder is None:
            decoder = self._streams[stream] = codecs.getincrementaldecoder("utf-8")("replace")
        return decoder.decode(data)

    def flush(self) -> dict[str, str]:
        rest = {s: d.decode(b"", final=True) for s, d in self._streams.items()}
        return {s: text for s, text in rest.items() if text}


def _output(stream: str, text: str, event_id: int | None = None) -> str:
    return format_event("output", json.dumps({"stream": stream, "data": text}), event_id)


async def job_events(
    request: Request, engine: sa.Engine, job_id: int, view: logs.View, offset: int
) -> AsyncIterator[str]:
    """The event stream of one job, from byte ``offset`` of ``view``."""
    decoder = _Decoder()
    after_seq, last_sent = -1, time.monotonic()
    while not await request.is_disconnected():
        try:
            job, batch = await run_in_threadpool(_poll, engine, job_id, view, offset, after_seq)
        except errors.NotFound as exc:  # deleted while we watched
            yield format_event("error", json.dumps(exc.to_dict()))
            return
        except errors.DatabaseUnavailable:
            job, batch = None, []  # keep the stream open; keep-alives go on meanwhile
        for chunk in batch:
            after_seq, offset = chunk.seq, chunk.end
            text = decoder.decode(chunk.stream, chunk.data)
            if text:
                yield _output(chunk.stream, text, offset)
                last_sent = time.monotonic()
        if len(batch) == logs.BATCH:
            continue  # more is waiting: no pause
        if job is not None and job.finished:
            for stream, text in decoder.flush().items():
                yield _output(stream, text)
            yield format_event("end", models.Job.from_job(job).model_dump_json())
            return
        if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await anyio.sleep(POLL_SECONDS)

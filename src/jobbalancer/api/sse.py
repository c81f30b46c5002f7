"""A job's output as server-sent events, while it is written.

The database is the only channel from workers, so the stream polls it (every 0.2 s, in a
worker thread so the event loop never blocks): ``output`` events as chunks appear, then
one ``end`` event with the final job, then the stream closes. Each ``output`` event's
``id`` is the byte offset after it, so a reconnecting EventSource resumes with
``Last-Event-ID``.

A stream lives long, so who may read it is asked again every few seconds: a revoked key,
an ended session, a disabled or deleted user or a deleted job end it with an ``error``
event. Each user may hold a few streams open at a time per server process (the
``max_streams_per_user`` setting): each holds a thread's polls, and hundreds of one user's
slowed every request.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from jobbalancer import auth, db, errors, jobs, logs
from jobbalancer.api import models

POLL_SECONDS = 0.2
KEEPALIVE_SECONDS = 15.0
RECHECK_SECONDS = 5.0  # app.state.sse_recheck_seconds overrides it (tests)


class TooManyStreams(errors.JobBalancerError):
    """Too many open log streams: close some first."""

    status = 429
    code = "too_many_streams"


class StreamSlots:
    """Open streams per user in this server process."""

    def __init__(self) -> None:
        self._open: dict[int, int] = {}
        self._lock = threading.Lock()

    def acquire(self, user_id: int, cap: int) -> Callable[[], None]:
        """Count one more stream of ``user_id``; the function that releases it (once)."""
        with self._lock:
            if self._open.get(user_id, 0) >= cap:
                raise TooManyStreams(
                    f"you have {cap} log streams open on this server, the most allowed; "
                    "close one first"
                )
            self._open[user_id] = self._open.get(user_id, 0) + 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                left = self._open.get(user_id, 1) - 1
                if left > 0:
                    self._open[user_id] = left
                else:
                    self._open.pop(user_id, None)

        return release

    def count(self, user_id: int) -> int:
        with self._lock:
            return self._open.get(user_id, 0)


def stream_slots(state: Any) -> StreamSlots:
    """The app's stream counter (``app.state``), made on first use."""
    slots: StreamSlots | None = getattr(state, "stream_slots", None)
    if slots is None:
        slots = state.stream_slots = StreamSlots()
    return slots


@dataclasses.dataclass(frozen=True)
class Watch:
    """One stream: what it shows, and how to ask again whether its caller still may.

    ``recheck`` returns the caller as they are now, or raises Unauthorized (key revoked,
    session ended, user disabled or deleted) or NotFound (job deleted or no longer
    visible to them)."""

    engine: sa.Engine
    job_id: int
    view: logs.View
    viewer: auth.User
    recheck: Callable[[], auth.User]
    recheck_seconds: float = RECHECK_SECONDS


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


async def _recheck(watch: Watch) -> auth.User | None:
    """The caller as they are now; None when the database cannot say (keep going)."""
    try:
        return await run_in_threadpool(watch.recheck)
    except errors.DatabaseUnavailable:
        return None


async def job_events(
    request: Request, watch: Watch, offset: int, release: Callable[[], None]
) -> AsyncIterator[str]:
    """The event stream of one job, from byte ``offset`` of its view; ``release`` frees
    the caller's stream slot when it ends, however it ends."""
    try:
        async for event in _events(request, watch, offset):
            yield event
    finally:
        release()


async def _events(request: Request, watch: Watch, offset: int) -> AsyncIterator[str]:
    decoder, viewer = _Decoder(), watch.viewer
    after_seq, last_sent = -1, time.monotonic()
    checked = time.monotonic()
    while not await request.is_disconnected():
        try:
            if time.monotonic() - checked >= watch.recheck_seconds:
                viewer = await _recheck(watch) or viewer
                checked = time.monotonic()
            job, batch = await run_in_threadpool(
                _poll, watch.engine, watch.job_id, watch.view, offset, after_seq
            )
        except (errors.NotFound, errors.Unauthorized) as exc:  # deleted, or access ended
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
            yield format_event("end", models.Job.from_job(job, viewer).model_dump_json())
            return
        if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await anyio.sleep(POLL_SECONDS)

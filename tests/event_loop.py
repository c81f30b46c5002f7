"""A check that no SQL statement runs on the event loop's thread: an ``async`` route or
dependency that reads the database itself stalls every request of the server meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # a thread of the pool (or no loop at all)
        return False
    return True


@contextmanager
def sql_on_event_loop(engine: sa.Engine) -> Iterator[list[str]]:
    """The statements ``engine`` ran on an event loop's thread within the block."""
    found: list[str] = []

    def seen(*args: Any) -> None:
        if _on_event_loop():
            found.append(args[2])

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        yield found
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)

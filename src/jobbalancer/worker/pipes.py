"""A job's stdout and stderr, read without blocking and handed on as they arrive."""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
from collections.abc import Callable
from typing import IO, Final

CHUNK_SIZE: Final = 64 * 1024  # the most read from a pipe at once

OutputCallback = Callable[[str, bytes], None]


class Pipes:
    """The job's stdout and stderr, read without blocking and handed to on_output."""

    def __init__(self, proc: subprocess.Popen[bytes], on_output: OutputCallback) -> None:
        self._on_output = on_output
        self._selector = selectors.DefaultSelector()
        self._files: dict[int, IO[bytes]] = {}
        for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            if pipe is None:
                raise RuntimeError("the job's output pipes are missing")
            os.set_blocking(pipe.fileno(), False)
            self._selector.register(pipe.fileno(), selectors.EVENT_READ, stream)
            self._files[pipe.fileno()] = pipe

    @property
    def open(self) -> bool:
        return bool(self._files)

    def add_wakeup(self, fd: int) -> None:
        """Also wake pump() when fd becomes readable (nothing is read from it)."""
        self._selector.register(fd, selectors.EVENT_READ, None)

    def remove_wakeup(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def pump(self, timeout: float) -> None:
        """Wait up to timeout for output and deliver what arrived."""
        if not self._selector.get_map():
            time.sleep(timeout)  # both pipes closed: nothing to wait on but the clock
            return
        for key, _ in self._selector.select(timeout):
            if key.data is not None:
                self._read(key.fd, key.data)

    def drain(self, seconds: float, step: float) -> None:
        """Read what is left, until both pipes end or seconds pass.

        Once the tree is gone a pipe can still be held open by a process nobody could
        attribute to the job; waiting for its end would hang the worker. Waits at most
        ``step`` at a time.
        """
        deadline = time.monotonic() + seconds
        while self.open:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.pump(min(left, step))

    def close(self) -> None:
        for fd in list(self._files):
            self._close(fd)
        self._selector.close()

    def _read(self, fd: int, stream: str) -> None:
        try:
            data = os.read(fd, CHUNK_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # an unreadable pipe is as good as a closed one
        if data:
            self._on_output(stream, data)
        else:
            self._close(fd)

    def _close(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)
        self._files.pop(fd).close()

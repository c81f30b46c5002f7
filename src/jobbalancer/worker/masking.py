"""Masking secret values in a job's output before it is stored.

A job's output arrives in pieces of any size, so a value may be split across two (or
more) of them. A :class:`Masker` (one per stream) replaces every whole occurrence of a
value with ``****`` and holds back the end of what it was given while that end could be
the start of a value, until the next piece shows whether it is one (or the stream ends:
:meth:`Masker.flush`). Only a possible start is held back, so a line that merely ends
without one is passed on at once.

A value of several lines (a PEM key, a JSON credential) is also masked line by line, as a
job may print a part of it (``head -n 3 key.pem``): each of its lines of at least
:data:`MIN_LINE` characters is a value of its own (a shorter one would mask common text).
"""

from __future__ import annotations

from collections.abc import Iterable

MASK = b"****"
MIN_LINE = 8  # bytes: the shortest line of a value of several lines masked on its own


class Masker:
    """Masks ``values`` in one stream of bytes fed in pieces."""

    def __init__(self, values: Iterable[str | bytes]) -> None:
        found = {v.encode() if isinstance(v, str) else bytes(v) for v in values}
        found |= {
            line.strip(b"\r")
            for v in found
            if b"\n" in v
            for line in v.split(b"\n")
            if len(line.strip(b"\r")) >= MIN_LINE
        }
        # Longest first: a value that holds another is masked whole.
        self._values = sorted((v for v in found if v), key=len, reverse=True)
        self._longest = len(self._values[0]) if self._values else 0
        self._firsts = sorted({v[:1] for v in self._values})
        self._held = b""

    @property
    def held(self) -> int:
        """Bytes held back now (at most the longest value's length minus 1)."""
        return len(self._held)

    def feed(self, data: bytes) -> bytes:
        """What of the stream so far can be passed on: masked, minus a held-back end."""
        if not self._values:
            return data
        text = self._mask(self._held + data)
        keep = self._possible_start(text)
        self._held = text[len(text) - keep :] if keep else b""
        return text[: len(text) - keep]

    def flush(self) -> bytes:
        """The held-back end, at the end of the stream (it was no value's start after all)."""
        rest, self._held = self._held, b""
        return rest

    def _mask(self, text: bytes) -> bytes:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def _possible_start(self, text: bytes) -> int:
        """The length of the longest end of ``text`` that some value starts with."""
        end = len(text)
        start = end - min(end, self._longest - 1)
        # Only where a value's first byte is can one start: found with find(), in C.
        candidates: list[int] = []
        for first in self._firsts:
            at = text.find(first, start)
            while at != -1:
                candidates.append(at)
                at = text.find(first, at + 1)
        for at in sorted(candidates):  # the earliest start is the longest end
            tail = text[at:]
            if any(len(v) > len(tail) and v.startswith(tail) for v in self._values):
                return end - at
        return 0

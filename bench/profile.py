"""Summarise py-spy's collapsed stacks (``py-spy record --format raw``, as
``python -m bench --profile DIR`` writes them): where a process spends its samples.

    python -m bench.profile DIR/sqlite-server.txt [--top 25] [--under FUNCTION]

Prints, as % of the file's samples: each thread's share; self time by library (the
package of the innermost frame: ``sqlalchemy``, ``jobbalancer.jobs``, stdlib ``json``...);
the functions most often on the stack (inclusive); and the innermost functions (self).
``--under NAME`` keeps only the stacks through a function whose name contains NAME.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# "name (path/to/file.py:123)"; py-spy writes no line number with --function.
FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def _package(file: str) -> str:
    """``sqlalchemy/engine/base.py`` → sqlalchemy; ``jobbalancer/api/app.py`` →
    jobbalancer.api.app; a stdlib file (``json/decoder.py``, ``threading.py``) → its module."""
    parts = file.removesuffix(".py").replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    if parts[0] == "jobbalancer":
        return ".".join(parts)
    return parts[0].removeprefix("_") or file


def _frames(stack: str) -> tuple[str, list[str]]:
    """The thread (first frame with --threads) and the function frames, outermost first."""
    frames = stack.split(";")
    if frames and frames[0].startswith(("thread ", "process ")):
        while frames and frames[0].startswith(("thread ", "process ")):
            thread = frames.pop(0)
        return thread, frames
    return "-", frames


def _label(frame: str) -> tuple[str, str]:
    """(function label "file:function", package)."""
    m = FRAME.match(frame)
    if m is None:
        return frame, frame
    return f"{m['file']}:{m['name']}", _package(m["file"])


def read(path: Path, under: str | None) -> list[tuple[str, list[str], int]]:
    rows = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, frames = _frames(stack)
        if under and not any(under in _label(f)[0] for f in frames):
            continue
        rows.append((thread, frames, int(count)))
    return rows


def _show(title: str, counts: Counter[str], total: int, top: int) -> None:
    print(f"\n{title}")
    for name, n in counts.most_common(top):
        print(f"  {n / total:6.1%}  {name}")


def summarise(path: Path, top: int, under: str | None) -> None:
    rows = read(path, under)
    total = sum(n for _, _, n in rows) or 1
    threads: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for thread, frames, n in rows:
        threads[thread] += n
        labels = [_label(f) for f in frames]
        if labels:
            leaves[labels[-1][0]] += n
            libraries[labels[-1][1]] += n
        for name in {name for name, _ in labels}:
            inclusive[name] += n
    print(f"== {path}: {total} samples" + (f" through {under!r}" if under else ""))
    _show("threads", threads, total, top)
    _show("self time by library (innermost frame's package)", libraries, total, top)
    _show("on the stack (inclusive)", inclusive, total, top)
    _show("innermost function (self)", leaves, total, top)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--under", default=None, help="only stacks through this function")
    args = parser.parse_args()
    for path in args.files:
        summarise(path, args.top, args.under)


if __name__ == "__main__":
    main()

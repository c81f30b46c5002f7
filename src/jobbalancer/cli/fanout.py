"""`jobbalancer parallel` on paper: inputs, replacement strings, halting, the joblog.

Nothing here talks to a server, so every rule of the fan-out is a plain function (tested
in tests/unit/test_fanout.py); :mod:`~jobbalancer.cli.parallel` runs them.

The conventions are GNU parallel's: inputs after ``:::`` (or lines of the files after
``::::``, or of stdin), the replacement strings ``{}``, ``{.}``, ``{/}``, ``{//}``,
``{/.}`` and ``{#}``, the input appended when the command has none, ``--halt`` and the
joblog's columns. One difference, for safety: in a command, every substituted value is
shell-quoted for where it stands (outside quotes, in ``'…'``, in ``"…"``), so a file named
``a b; rm -rf ~`` or ``$(reboot)`` stays one harmless argument.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO

# {} {.} {/} {//} {/.} {#}; longest alternatives first. With one input source GNU
# parallel's {1} {1.} {1/} {1//} {1/.} are the same as {} {.} {/} {//} {/.}.
REPLACEMENT = re.compile(r"\{(?:1(?=[}./]))?(//|/\.|/|\.|#)?\}")
# GNU parallel's other replacement strings, which this does not do: refused rather than
# left as text. ({2} and up are left alone: they look like counts in a regex.)
UNSUPPORTED = re.compile(r"\{(?:%|\+/|\+\.|\.\.|\+\.\.)\}|\{=.*?=\}")
MAX_EXIT = 101  # GNU parallel: the exit code counts failures up to this
JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"


class UsageError(ValueError):
    """The command line cannot be read; the message says what to write instead."""


# -- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where the inputs come from: after ``:::`` (``values``), the files after ``::::``
    (``files``; ``-`` is stdin), or stdin when neither is given."""

    values: tuple[str, ...] | None = None
    files: tuple[str, ...] | None = None


def split_command(words: Sequence[str]) -> tuple[list[str], Source]:
    """The words after ``--`` → (the command's words, where its inputs come from)."""
    for i, word in enumerate(words):
        if word in (":::", "::::"):
            rest = list(words[i + 1 :])
            if ":::" in rest or "::::" in rest:
                raise UsageError("only one input source is supported: give one ::: or :::: list")
            if word == ":::":
                return list(words[:i]), Source(values=tuple(rest))
            if not rest:
                raise UsageError(":::: needs at least one file of inputs (- for stdin)")
            return list(words[:i]), Source(files=tuple(rest))
    return list(words), Source()


def read_lines(stream: TextIO, *, skip_empty: bool = False) -> list[str]:
    """One input per line (the line's end removed; a last line without one counts)."""
    lines = [line.removesuffix("\n").removesuffix("\r") for line in stream]
    return [line for line in lines if line] if skip_empty else lines


# -- replacement strings ------------------------------------------------------------------


def replace(token: str, value: str, seq: int) -> str:
    """What ``{token}`` stands for, for the input ``value`` of job number ``seq``."""
    if token == "#":  # noqa: S105 (a replacement string, not a password)
        return str(seq)
    return _BY_TOKEN[token](value)


def _basename(value: str) -> str:
    return value.rsplit("/", 1)[-1]  # s:.*/::


def _strip_extension(value: str) -> str:
    return re.sub(r"\.[^/.]+$", "", value)  # s:\.[^/.]+$::


def _dirname(value: str) -> str:
    """Perl's File::Basename dirname, as GNU parallel uses: ``a`` → ``.``, ``/a`` → ``/``,
    ``a/b/`` → ``a``."""
    path = value.rstrip("/") or value[:1]
    if path == "/":
        return "/"
    if "/" not in path:
        return "."
    return path.rsplit("/", 1)[0].rstrip("/") or "/"


_BY_TOKEN: dict[str, Callable[[str], str]] = {
    "": lambda value: value,
    ".": lambda value: _strip_extension(value),
    "/": lambda value: _basename(value),
    "//": lambda value: _dirname(value),
    "/.": lambda value: _strip_extension(_basename(value)),
}


def has_replacement(words: Iterable[str]) -> bool:
    return any(REPLACEMENT.search(word) for word in words)


def substitute(text: str, value: str, seq: int) -> str:
    """``text`` with every replacement string filled in, as it is (no quoting)."""
    return REPLACEMENT.sub(lambda m: replace(m.group(1) or "", value, seq), text)


def command_for(words: Sequence[str], value: str, seq: int) -> str:
    """The shell command of one job.

    One word is a shell command line (pipes and redirections work): each replacement
    string becomes its value, quoted for where it stands (see :func:`fill_shell_line`).
    Several words are a program and its arguments, as `jobbalancer submit` takes them:
    each word, filled in, becomes exactly one argument. Without any replacement string
    the input is appended as one more argument (GNU parallel's rule).
    """
    if len(words) == 1:
        template = words[0]
        if not REPLACEMENT.search(template):
            return f"{template} {shlex.quote(value)}"
        return fill_shell_line(template, value, seq)
    filled = [substitute(word, value, seq) for word in words]
    if not has_replacement(words):
        filled.append(value)
    return shlex.join(filled)


def check_command(words: Sequence[str], params: Sequence[str] = ()) -> None:
    """A UsageError for GNU parallel's replacement strings this does not do ({%},
    {= … =}, …) and for a shell line whose values cannot be quoted safely."""
    for word in [*words, *params]:
        found = UNSUPPORTED.search(word)
        if found is not None:
            raise UsageError(
                f"{found.group()} is not supported: use {{}} {{.}} {{/}} {{//}} {{/.}} or "
                "{#} (or {1} … {1/.}: there is one input source)"
            )
    if len(words) == 1:
        fill_shell_line(words[0], "", 0)


# Where a replacement string stands in a shell line, which decides how its value is
# quoted: "plain" (outside quotes, also inside $(…)), "single" ('…'), "double" ("…"),
# "backtick" (`…`, refused), "heredoc" (after <<, where quotes are plain characters).
_Context = Literal["plain", "single", "double", "backtick", "heredoc"]
_WORD_START = " \t\n;&|()"


def fill_shell_line(template: str, value: str, seq: int) -> str:
    """``template`` with every replacement string filled in, each value quoted so that
    the shell reads it back exactly, as data, where it stands: ``{}``, ``'{}'``,
    ``"{}"`` and ``"$(cmd {})"`` all give the input itself, and an input
    ``$(rm -rf ~)`` is never run. Users write ``"{}"`` out of habit, and a value quoted
    for the outside of quotes would be code inside them.

    The shell line is read as far as quoting goes (quotes, backslashes, ``$(…)``,
    comments); after a here-document (``<<``) every value is backslash-quoted, which no
    context turns into code. Inside backticks nothing is safe: a UsageError."""
    out: list[str] = []
    stack: list[list[Any]] = [["plain", 0]]  # [context, open parentheses of a $( … )]
    i, n = 0, len(template)
    while i < n:
        context: _Context = stack[-1][0]
        if any(frame[0] == "backtick" for frame in stack):
            context = "backtick"
        match = REPLACEMENT.match(template, i)
        if match is not None:
            out.append(_quote_for(context, replace(match.group(1) or "", value, seq)))
            i = match.end()
            continue
        char = template[i]
        if char == "\\":
            out.append(template[i : i + 2])
            i += 2
            continue
        if template.startswith("$(", i):
            stack.append(["plain", 1])
            out.append("$(")
            i += 2
            continue
        top = stack[-1]
        if char == "`":
            if top[0] == "backtick":
                stack.pop()
            else:
                stack.append(["backtick", 0])
        elif top[0] == "double":
            if char == '"':
                stack.pop()
        elif char == '"':
            stack.append(["double", 0])
        elif char == "'":
            end = template.find("'", i + 1)
            end = n if end < 0 else end
            inner: _Context = "backtick" if context == "backtick" else "single"
            out.append(
                "'" + _fill(template[i + 1 : end], inner, value, seq) + template[end : end + 1]
            )
            i = end + 1
            continue
        elif char == "#" and (i == 0 or template[i - 1] in _WORD_START):
            end = template.find("\n", i)
            end = n if end < 0 else end
            out.append(template[i:end])  # a comment: nothing in it runs
            i = end
            continue
        elif template.startswith("<<", i):
            rest: _Context = "backtick" if context == "backtick" else "heredoc"
            out.append(_fill(template[i:], rest, value, seq))
            break
        elif char == "(" and len(stack) > 1:
            top[1] += 1
        elif char == ")" and top[1] > 0:
            top[1] -= 1
            if top[1] == 0:
                stack.pop()
        out.append(char)
        i += 1
    return "".join(out)


def _fill(text: str, context: _Context, value: str, seq: int) -> str:
    return REPLACEMENT.sub(
        lambda m: _quote_for(context, replace(m.group(1) or "", value, seq)), text
    )


def _quote_for(context: _Context, value: str) -> str:
    if context == "plain":
        return shlex.quote(value)
    if context == "single":  # close the quotes, the value as a word of its own, reopen
        return "'" + shlex.quote(value) + "'"
    if context == "double":  # inside "…" only these four are special
        return re.sub(r'([\\$`"])', r"\\\1", value)
    if context == "heredoc":
        return _backslash_quote(value)
    raise UsageError(
        "a replacement string inside backticks cannot be quoted safely: write $(…) instead of `…`"
    )


def _backslash_quote(value: str) -> str:
    """GNU parallel's quoting: a backslash before every character but letters, digits and
    a few harmless ones; a line break as '<newline>'."""
    quoted = re.sub(r"([^A-Za-z0-9_./,:@%+=-])", r"\\\1", value)
    return quoted.replace("\\\n", "'\n'")


def params_for(params: Sequence[str], value: str, seq: int) -> list[str]:
    """A script's params for one job: values go in as they are (argv entries, no shell);
    without any replacement string the input is one more param."""
    filled = [substitute(p, value, seq) for p in params]
    return filled if has_replacement(params) else [*filled, value]


# -- halting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Halt:
    """``--halt when,fail=N`` (or ``N%``): after that many failures, ``soon`` kills the
    jobs that have not started and lets the running ones end; ``now`` kills them all."""

    when: Literal["soon", "now"]
    failures: int = 0  # this many failed jobs …
    percent: float | None = None  # … or this share of all jobs, when given as N%

    def reached(self, failed: int, total: int) -> bool:
        if failed <= 0:
            return False
        if self.percent is not None:
            return failed * 100 >= self.percent * total
        return failed >= self.failures


def parse_halt(text: str | None) -> Halt | None:
    """``never``, ``soon,fail=1``, ``now,fail=3``, ``soon,fail=10%``; GNU parallel's
    short forms ``0`` (never), ``1`` (soon,fail=1) and ``2`` (now,fail=1) too."""
    if text is None or text.strip() in ("", "never", "0"):
        return None
    short = {"1": Halt("soon", 1), "2": Halt("now", 1)}
    text = text.strip()
    if text in short:
        return short[text]
    match = re.fullmatch(r"(soon|now),fail=(\d+(?:\.\d+)?)(%?)", text)
    if match is None:
        raise UsageError(
            f"--halt {text!r}: write it as soon,fail=N, now,fail=N or soon,fail=N% (or never)"
        )
    when, number, percent = match.groups()
    value = float(number)
    if percent:
        if not 0 < value <= 100:
            raise UsageError(f"--halt {text!r}: the share must be above 0% and at most 100%")
        return Halt(when, percent=value)  # type: ignore[arg-type]
    if value < 1 or value != int(value):
        raise UsageError(f"--halt {text!r}: fail=N needs a whole number of at least 1")
    return Halt(when, failures=int(value))  # type: ignore[arg-type]


def exit_code(
    failures: int, *, halted_by: Halt | None = None, first_code: int | None = None
) -> int:
    """0 when every job succeeded, else the number of failures up to 101; after a halt on
    the first failure (``fail=1``), the exit code of the job that failed, when it has one
    (both GNU parallel's rules)."""
    first = halted_by is not None and halted_by.percent is None and halted_by.failures == 1
    if first and first_code is not None and 0 < first_code < 256:
        return first_code
    return min(max(failures, 0), MAX_EXIT)


# -- the joblog ---------------------------------------------------------------------------


def joblog_line(seq: int, job: Mapping[str, Any], command: str) -> str:
    """One line of GNU parallel's joblog (tab-separated, as its header names the columns)
    for a job that ended: Host is the worker, Starttime seconds since the epoch, Receive
    the bytes of output, Exitval -1 for a job without an exit code (killed, timed out,
    lost, never started)."""
    started = _epoch(job.get("started_at"))
    finished = _epoch(job.get("finished_at"))
    runtime = finished - started if started and finished else 0.0
    worker = job.get("worker")
    host = str(worker.get("name") or ":") if isinstance(worker, Mapping) else ":"
    code = job.get("exit_code")
    fields = [
        str(seq),
        host,
        f"{started or _epoch(job.get('created_at')):.3f}",
        f"{runtime:10.3f}",
        "0",
        str(int(job.get("output_bytes") or 0)),
        str(-1 if code is None else int(code)),
        str(int(job.get("signal") or 0)),
        command.replace("\n", " "),
    ]
    return "\t".join(fields)


def _epoch(when: Any) -> float:
    if not isinstance(when, str) or not when:
        return 0.0
    try:
        moment = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    stamp = moment.timestamp()
    return stamp if math.isfinite(stamp) else 0.0


def tag_lines(text: str, tag: str) -> str:
    """``--tag``: every line of ``text`` prefixed by the input and a tab."""
    if not text:
        return text
    lines = text.splitlines(keepends=True)
    return "".join(f"{tag}\t{line}" for line in lines)

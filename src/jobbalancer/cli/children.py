"""`up`'s children: start the server and the workers, forward stop signals, notice deaths.

Stopping goes in order: the workers first (they drain: running jobs finish), then the
server. Each further stop signal insists (kill the jobs, then kill everything).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

from rich.markup import escape

from jobbalancer.cli import exits, formatting

if TYPE_CHECKING:
    from jobbalancer.cli.up import UpPlan

_HEALTH_WAIT = 60.0  # seconds `up` waits for its server to answer /healthz
_STOP_GRACE = 15.0  # seconds `up` gives a child to stop before insisting
_SIGNAL_DEBOUNCE = 1.0  # seconds within which a repeated stop signal counts once


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    is_worker: bool

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def describe_exit(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"


class _ChildFailed(Exception):
    def __init__(self, child: _Child, when: str) -> None:
        super().__init__(f"the {child.name} {child.describe_exit()} {when}")


@dataclass
class Children:
    """Runs `up`'s children, forwards Ctrl-C/SIGTERM to them, and notices deaths."""

    plan: UpPlan
    children: list[_Child] = field(default_factory=list)
    signals: int = 0  # how many stop signals arrived
    last_signal: float = -_SIGNAL_DEBOUNCE

    def run(self, announce: Callable[[], None]) -> int:
        """Start them, ``announce`` once all are up, and watch until stopped; the exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run(announce)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self, announce: Callable[[], None]) -> int:
        try:
            server = self._spawn("server", self.plan.server_argv(), is_worker=False)
            self._wait_healthy(server)
            for name in self.plan.worker_names():
                self._spawn(f"worker {name}", self.plan.worker_argv(name), is_worker=True)
        except _ChildFailed as exc:
            return self._abort(f"{exc}; see its messages above")
        if self.signals:
            self._stop(insist_after=None)
            return exits.RET_OK
        announce()
        return self._watch()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # One keypress or `kill` can arrive twice (a wrapper that signals its whole process
        # group, a service manager); only a later one means "insist".
        now = time.monotonic()
        if now - self.last_signal >= _SIGNAL_DEBOUNCE:
            self.signals += 1
            self.last_signal = now

    def _spawn(self, name: str, args: Sequence[str], *, is_worker: bool) -> _Child:
        argv = [sys.executable, "-m", "jobbalancer", *args]
        # Own process group: Ctrl-C reaches only `up`, which forwards it once, in order.
        process = subprocess.Popen(  # noqa: S603
            argv,
            stdin=subprocess.DEVNULL,
            env=self.plan.child_env(),
            process_group=0,
            preexec_fn=_die_with_parent,
        )
        child = _Child(name, process, is_worker)
        self.children.append(child)
        return child

    def _wait_healthy(self, server: _Child) -> None:
        deadline = time.monotonic() + _HEALTH_WAIT
        url = f"{self.plan.url}/healthz"
        while time.monotonic() < deadline and not self.signals:
            if not server.running:
                raise _ChildFailed(server, "while starting")
            if _answers(url):
                return
            time.sleep(0.1)
        if not self.signals:
            server.signal(signal.SIGTERM)
            server.process.wait()
            raise _ChildFailed(server, f"after {url} did not answer for {_HEALTH_WAIT:g} s")

    def _watch(self) -> int:
        """Until a stop signal (then stop in order) or a child's unexpected death."""
        while not self.signals:
            for child in self.children:
                if not child.running:
                    return self._abort(f"the {child.name} {child.describe_exit()} unexpectedly")
            time.sleep(0.2)
        formatting.err().print(
            "[yellow]stopping:[/] workers finish their running jobs first. "
            "Press Ctrl-C again to kill the jobs and stop now."
        )
        self._stop(insist_after=None)
        return exits.RET_OK

    def _abort(self, message: str) -> int:
        """A child died: say which, stop the rest, exit non-zero."""
        others = " Stopping the others." if any(c.running for c in self.children) else ""
        formatting.err().print(f"[bold red]error:[/] {escape(message)}.{others}")
        self._stop(insist_after=_STOP_GRACE)
        return exits.RET_CHILD

    def _stop(self, *, insist_after: float | None) -> None:
        """Workers first (they drain), then the server. Each further stop signal insists
        (kill the jobs, then kill everything); so does ``insist_after`` seconds passing."""
        level, seen = 1, self.signals
        self._escalate(level)
        next_insist = None if insist_after is None else time.monotonic() + insist_after
        server_told = False
        while any(c.running for c in self.children):
            overdue = next_insist is not None and time.monotonic() >= next_insist
            if self.signals > seen or overdue:
                level, seen = level + 1, self.signals
                self._escalate(level)
                if insist_after is not None:
                    next_insist = time.monotonic() + insist_after
            if not server_told and not any(c.running for c in self.children if c.is_worker):
                self._signal_all(signal.SIGTERM, workers=False)
                server_told = True
            time.sleep(0.1)

    def _escalate(self, level: int) -> None:
        if level == 1:
            self._signal_all(signal.SIGTERM, workers=True)
        elif level == 2:
            formatting.err().print("[yellow]stopping now:[/] killing running jobs.")
            self._signal_all(signal.SIGTERM, workers=True)
            self._signal_all(signal.SIGTERM, workers=False)
        else:
            formatting.err().print("[yellow]still not stopped: killing every process.[/]")
            self._signal_all(signal.SIGKILL, workers=True)
            self._signal_all(signal.SIGKILL, workers=False)

    def _signal_all(self, sig: int, *, workers: bool) -> None:
        for child in self.children:
            if child.is_worker == workers:
                child.signal(sig)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if `up` itself dies (Linux), no orphans."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _answers(url: str) -> bool:
    import httpx  # only `up` waits for its server: not imported by the server itself

    try:
        # Our own server on this machine, maybe with a self-signed certificate.
        response = httpx.get(url, timeout=1.0, verify=False)  # noqa: S501
    except httpx.HTTPError:
        return False
    return response.status_code == 200

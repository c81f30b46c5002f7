"""Starting later and retrying later without a database: the retry policy's waits
(backoff, cap, jitter bounds) and the ends it retries; the CLI's --at, --in and retry
options; how `show` and the job list say when a delayed job starts; the web form's
"start in or at"."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jobbalancer import cli
from jobbalancer.cli import formatting
from jobbalancer.client import Client, job_spec
from jobbalancer.jobs import MAX_DELAY, RetryPolicy, State
from jobbalancer.service import inputs

REMOTE = ["--url", "http://127.0.0.1:9", "--api-key", "jb_x"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("JOBBALANCER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


# -- the policy ---------------------------------------------------------------------------


def test_no_delay_means_at_once() -> None:
    assert RetryPolicy().wait(1) == 0.0
    assert RetryPolicy(backoff=3.0, jitter=0.5).wait(4) == 0.0


def test_backoff_multiplies_each_wait() -> None:
    policy = RetryPolicy(delay=30.0, backoff=2.0)
    assert [policy.wait(n) for n in (1, 2, 3, 4)] == [30.0, 60.0, 120.0, 240.0]
    assert RetryPolicy(delay=5.0).wait(7) == 5.0  # backoff 1: always the same


def test_the_cap_bounds_every_wait() -> None:
    policy = RetryPolicy(delay=30.0, backoff=2.0, max_delay=100.0)
    assert [policy.wait(n) for n in (1, 2, 3, 10)] == [30.0, 60.0, 100.0, 100.0]
    # Any attempt, any backoff: never past a year, never an overflow.
    assert RetryPolicy(delay=1.0, backoff=100.0).wait(101) == MAX_DELAY


@pytest.mark.parametrize("attempt", [1, 2, 5])
def test_jitter_stays_within_its_fraction(attempt: int) -> None:
    policy = RetryPolicy(delay=10.0, backoff=2.0, jitter=0.25)
    base = 10.0 * 2 ** (attempt - 1)
    rng = random.Random(attempt)
    waits = [policy.wait(attempt, rng.random) for _ in range(2000)]
    assert min(waits) >= base * 0.75 and max(waits) <= base * 1.25
    assert max(waits) - min(waits) > base * 0.4  # it does spread them
    assert policy.wait(attempt, lambda: 0.0) == pytest.approx(base * 0.75)
    assert policy.wait(attempt, lambda: 1.0) == pytest.approx(base * 1.25)
    assert policy.wait(attempt, lambda: 0.5) == pytest.approx(base)


def test_jitter_never_passes_the_cap() -> None:
    policy = RetryPolicy(delay=100.0, jitter=1.0, max_delay=120.0)
    assert policy.wait(1, lambda: 1.0) == 120.0
    assert policy.wait(1, lambda: 0.0) == 0.0


@pytest.mark.parametrize(
    ("on", "state", "code", "retried"),
    [
        ((), State.FAILED, 1, True),
        ((), State.FAILED, None, True),  # could not start
        ((), State.LOST, None, True),
        ((), State.TIMEOUT, None, False),
        ((), State.KILLED, None, False),
        ((), State.DONE, 0, False),
        (("timeout",), State.TIMEOUT, None, True),
        (("timeout",), State.FAILED, 1, False),
        ((75,), State.FAILED, 75, True),
        ((75,), State.FAILED, 1, False),
        ((75,), State.FAILED, None, False),
        ((75,), State.LOST, None, False),
        (("failed", 75), State.FAILED, 3, True),
        (("lost", 75), State.LOST, None, True),
        (("lost", 75), State.KILLED, None, False),
    ],
)
def test_retry_on_matches_ends(
    on: tuple[str | int, ...], state: State, code: int | None, retried: bool
) -> None:
    assert RetryPolicy(on=on).retries_end(state, code) is retried


def test_policy_from_columns_with_defaults() -> None:
    empty = dict.fromkeys(
        ("retry_delay", "retry_backoff", "retry_max_delay", "retry_jitter", "retry_on")
    )
    assert RetryPolicy.of(empty) == RetryPolicy()
    row: dict[str, Any] = {
        "retry_delay": 3.0, "retry_backoff": 2.0, "retry_max_delay": 9.0, "retry_jitter": 0.5,
        "retry_on": ["timeout", 75],
    }  # fmt: skip
    assert RetryPolicy.of(row) == RetryPolicy(3.0, 2.0, 9.0, 0.5, ("timeout", 75))


# -- durations and the web form -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("2h", 7200.0), ("1d", 86400.0),
     ("1.5m", 90.0), (" 3 M ", 180.0), (".5s", 0.5)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert inputs.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10 minutes", "-5s", "1w", "2026-12-24T18:00Z"])
def test_not_durations(text: str) -> None:
    assert inputs.parse_duration(text) is None


# -- the CLI ------------------------------------------------------------------------------


def _sent(monkeypatch: pytest.MonkeyPatch, *options: str) -> tuple[Any, dict[str, Any]]:
    sent: dict[str, Any] = {}

    def fake_submit(self: Client, command: str | None = None, **kwargs: Any) -> dict[str, Any]:
        sent.update(job_spec(command, **kwargs))
        return {"id": 44, "state": "delayed"}

    monkeypatch.setattr(Client, "submit", fake_submit)
    result = CliRunner().invoke(cli.app, ["submit", *REMOTE, *options, "--", "echo", "hi"])
    return result, sent


def test_submit_in_and_retry_options(monkeypatch: pytest.MonkeyPatch) -> None:
    result, sent = _sent(
        monkeypatch, "--in", "10m", "--retries", "3", "--retry-delay", "30s",
        "--retry-backoff", "2", "--retry-max-delay", "5m", "--retry-jitter", "0.1",
        "--retry-on", "failed,timeout,75",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "44"
    assert sent["delay"] == 600.0 and "not_before" not in sent
    assert sent["retry_delay"] == 30.0 and sent["retry_backoff"] == 2.0
    assert sent["retry_max_delay"] == 300.0 and sent["retry_jitter"] == 0.1
    assert sent["retry_on"] == ["failed", "timeout", 75]


def test_submit_at(monkeypatch: pytest.MonkeyPatch) -> None:
    result, sent = _sent(monkeypatch, "--at", "2026-12-24T18:00+01:00")
    assert result.exit_code == 0, result.output
    assert sent["not_before"] == "2026-12-24T18:00:00+01:00" and "delay" not in sent
    result, sent = _sent(monkeypatch, "--at", "2026-12-24T17:00Z")
    assert result.exit_code == 0 and sent["not_before"] == "2026-12-24T17:00:00+00:00"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--in", "10 minutes"], "--in '10 minutes': give a number with s, m, h or d"),
        (["--in", "-5m"], "--in '-5m'"),
        (["--at", "tomorrow"], "--at 'tomorrow': give a time like"),
        (["--at", "2026-12-24T18:00"], "add the time zone offset"),
        (["--at", "2026-12-24T18:00Z", "--in", "5m"], "give --at or --in, not both"),
        (["--retry-delay", "soon"], "--retry-delay 'soon'"),
        (["--retry-on", "failed,killed"], "'killed' is not failed, timeout, lost or an exit"),
    ],
)
def test_bad_options_are_clear_usage_errors(
    monkeypatch: pytest.MonkeyPatch, options: list[str], words: str
) -> None:
    result, sent = _sent(monkeypatch, *options)
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split()), result.output
    assert sent == {}  # nothing submitted


def test_parallel_takes_the_same_options(monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["parallel", *REMOTE, "--dry-run", "--in", "1h", "--retry-on", "75", "--", "echo"]
    result = CliRunner().invoke(cli.app, [*args, "{}", ":::", "a"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(
        cli.app, [*args[:5], "--dry-run", "--in", "x", "--", "echo", ":::", "a"]
    )
    assert bad.exit_code == 2 and "--in 'x'" in bad.output


def test_schedules_add_takes_in_and_the_retry_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """A schedule's job starts --in after each fire time and retries by the policy."""
    sent: dict[str, Any] = {}

    def fake_create(self: Client, name: str, cron: str, job: Any, **kw: Any) -> dict[str, Any]:
        sent.update(job)
        return {"id": 3, "name": name, "next_runs": []}

    monkeypatch.setattr(Client, "create_schedule", fake_create)
    args = ["schedules", "add", *REMOTE, "nightly", "--cron", "@daily", "--in", "90s"]
    retry = ["--retries", "2", "--retry-delay", "1m", "--retry-backoff", "2",
             "--retry-on", "timeout,75"]  # fmt: skip
    result = CliRunner().invoke(cli.app, [*args, *retry, "--", "echo", "hi"])
    assert result.exit_code == 0, result.output
    assert sent["delay"] == 90.0 and sent["retries"] == 2
    assert (sent["retry_delay"], sent["retry_backoff"]) == (60.0, 2.0)
    assert sent["retry_on"] == ["timeout", 75]
    sent.clear()
    bad = CliRunner().invoke(cli.app, [*args[:-1], "soon", "--", "echo", "hi"])
    assert bad.exit_code == 2 and "--in 'soon'" in bad.output and sent == {}


# -- what is shown ------------------------------------------------------------------------

_AT = "2026-12-24T17:00:00.000Z"


def _local(text: str, fmt: str) -> str:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone().strftime(fmt)


def test_show_says_when_it_starts() -> None:
    job = {"id": 7, "state": "delayed", "not_before": _AT, "retry_of": None, "attempt": 1}
    rows = dict(formatting.show_rows(job))
    assert rows["starts"] == f"starts at {_local(_AT, '%Y-%m-%d %H:%M:%S')}"
    retry = {**job, "retry_of": 6, "attempt": 2, "retries": 3}
    assert formatting.starts(retry).startswith("attempt 2 of 4, next try at ")
    assert formatting.starts({**job, "state": "waiting"}) == ""


def test_the_job_list_says_when_it_starts() -> None:
    job = {
        "id": 7, "state": "delayed", "not_before": _AT, "command": "echo hi",
        "created_at": _AT, "retry_of": None, "attempt": 1,
    }  # fmt: skip
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(formatting.job_table([job], 160, now=datetime(2026, 12, 1, tzinfo=UTC)))
    assert f"starts at {_local(_AT, '%m-%d %H:%M')}" in console.export_text()

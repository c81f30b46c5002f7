"""How `jobbalancer parallel` follows a run (jobbalancer.cli.parallel.Run), against a fake
client that plays the server: requests per poll, retries, --halt, output and joblog."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest

from jobbalancer import client
from jobbalancer.cli import fanout, parallel


class FakeServer:
    """The few calls Run makes, on jobs kept in a dict; counts its requests."""

    def __init__(self) -> None:
        self.by_id: dict[int, dict[str, Any]] = {}  # the jobs, by id
        self.asked: list[list[int]] = []  # ids asked for, per jobs_by_id call
        self.killed: list[int] = []
        self.output: dict[int, dict[str, str]] = {}

    def submit_batch(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        made = [self._new(spec, attempt=1) for spec in specs]
        return [dict(job) for job in made]

    def _new(self, spec: dict[str, Any], attempt: int, retry_of: int | None = None) -> Any:
        job_id = len(self.by_id) + 1
        job = {"id": job_id, "state": "waiting", "attempt": attempt, "retry_of": retry_of,
               "retries": spec.get("retries", 0), "spec": spec, "output_bytes": 0}  # fmt: skip
        self.by_id[job_id] = job
        return job

    def jobs_by_id(self, ids: list[int]) -> list[dict[str, Any]]:
        self.asked.append(list(ids))
        return [dict(self.by_id[i]) for i in ids if i in self.by_id]

    def retries_of(self, ids: list[int]) -> list[dict[str, Any]]:
        return [dict(j) for j in self.by_id.values() if j["retry_of"] in ids]

    def jobs(self, *, label: str, page_size: int) -> list[dict[str, Any]]:
        key, _, value = label.partition("=")
        mine = [j for j in self.by_id.values() if j["spec"]["labels"].get(key) == value]
        return [dict(j) for j in sorted(mine, key=lambda j: -j["id"])]

    def kill(self, job_id: int) -> dict[str, Any]:
        self.killed.append(job_id)
        job = self.by_id[job_id]
        if job["state"] in ("waiting", "assigned"):
            job["state"] = "killed"
        return dict(job)

    def log(self, job_id: int, stream: str, offset: int) -> tuple[str, int, str]:
        data = self.output.get(job_id, {}).get(stream, "").encode()[offset:]
        return data.decode(), offset + len(data), self.by_id[job_id]["state"]

    # the test's side: what the workers would do
    def end(self, job_id: int, state: str, code: int | None = None, out: str = "") -> None:
        job = self.by_id[job_id]
        job.update(state=state, exit_code=code, output_bytes=len(out.encode()))
        self.output[job_id] = {"stdout": out}
        if state in ("failed", "lost") and job["attempt"] <= job["retries"]:
            self._new(job["spec"], job["attempt"] + 1, retry_of=job_id)


def _run(
    server: FakeServer, n: int, *, halt: str | None = None, retries: int = 0, **kwargs: Any
) -> parallel.Run:
    items = [
        parallel._item(seq, f"in {seq}", ["echo"], None, [], {"retries": retries})
        for seq in range(1, n + 1)
    ]
    options: dict[str, Any] = {"quiet": False, "tag": False, "joblog": None} | kwargs
    run = parallel.Run(server, items, "r1", fanout.parse_halt(halt), **options)  # type: ignore[arg-type]
    run.display = parallel.Display(False, n)
    run._submit_some()
    return run


def _step(run: parallel.Run) -> None:
    run._poll()
    run._report()


def test_a_poll_asks_for_at_most_two_windows_of_ids() -> None:
    server = FakeServer()
    run = _run(server, 2300)
    assert len(server.by_id) == 2300 and run.next_to_submit == 2300
    for _ in range(4):
        _step(run)
    assert all(len(ids) <= 2 * parallel.WINDOW for ids in server.asked)
    # the oldest window every time, the rest in rotation: every job is looked at
    assert all(ids[: parallel.WINDOW] == list(range(1, 501)) for ids in server.asked)
    assert set().union(*map(set, server.asked)) == set(range(1, 2301))
    for job_id in range(1, 2301):
        server.end(job_id, "done")
    for _ in range(5):
        _step(run)
    assert not run.open and run.ended == 2300 and run.failed == []


def test_retries_are_followed_to_the_last_attempt(capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeServer()
    run = _run(server, 2, retries=1)
    server.end(1, "failed", 3)  # a retry is queued: job 3
    server.end(2, "done", 0, out="two\n")
    _step(run)
    assert run.ended == 1 and run.items[0].job_id == 3 and not run.items[0].ended
    server.end(3, "done", 0, out="one again\n")
    _step(run)
    assert run.ended == 2 and run.failed == []
    assert capsys.readouterr().out == "two\none again\n"


def test_a_failure_that_was_not_retried_ends_the_input() -> None:
    # A worker that cannot record how a job ended records it failed without a retry,
    # however many retries are left; and a retry may be deleted before it is seen.
    server = FakeServer()
    run = _run(server, 2, retries=2)
    server.by_id[1].update(state="failed", exit_code=None, error="could not record")
    server.end(2, "failed", 5)  # retried as job 3 …
    del server.by_id[3]  # … which is deleted at once
    _step(run)
    assert not run.open and run.ended == 2
    assert [(i.job_id, i.state) for i in run.items] == [(1, "failed"), (2, "failed")]
    assert len(run.failed) == 2


def test_halt_soon_kills_what_has_not_started_now_kills_all() -> None:
    server, log = FakeServer(), io.StringIO()
    run = _run(server, 5, halt="soon,fail=1", joblog=log)
    server.by_id[2].update(state="running", started_at="2026-12-04T10:00:00Z")
    server.end(1, "failed", 1)
    _step(run)
    assert run.halted and sorted(server.killed) == [3, 4, 5]
    assert [i.state for i in run.items] == ["failed", "running", "killed", "killed", "killed"]
    assert len(run.failed) == 1  # what --halt killed is not counted as failed
    server.end(2, "done", 0)
    _step(run)
    assert not run.open
    # as in GNU parallel's, the joblog has the jobs that ran, not those that never started
    assert [line.split("\t")[0] for line in log.getvalue().splitlines()] == ["1", "2"]

    server = FakeServer()
    run = _run(server, 3, halt="now,fail=1")
    server.by_id[2]["state"] = "running"
    server.end(1, "timeout")
    _step(run)
    assert sorted(server.killed) == [2, 3]


def test_halt_stops_submitting() -> None:
    server = FakeServer()
    items = [parallel._item(s, str(s), ["true"], None, [], {}) for s in range(1, 1201)]
    run = parallel.Run(server, items, "r", fanout.parse_halt("1"), quiet=True, tag=False,  # type: ignore[arg-type]
                       joblog=None)  # fmt: skip
    run.display = parallel.Display(False, 1200)
    server.submit_batch = _one_batch_then(server.submit_batch, run)  # type: ignore[method-assign]
    run._submit_some()
    assert len(server.by_id) == parallel.BATCH
    server.end(1, "failed", 2)
    _step(run)
    run._submit_some()
    assert len(server.by_id) == parallel.BATCH
    assert sum(i.state == "unsubmitted" for i in run.items) == 1200 - parallel.BATCH


def _one_batch_then(submit: Any, run: parallel.Run) -> Any:
    """submit_batch that pauses submitting after one batch (as the rate limit would)."""

    def once(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if run.next_to_submit:
            raise client.ApiError(429, "rate_limited", "slow down")
        return list(submit(specs))

    return once


def test_tagged_output_and_joblog() -> None:
    server, log = FakeServer(), io.StringIO()
    run = _run(server, 2, tag=True, joblog=log)
    server.end(2, "failed", 4, out="x\ny\n")
    server.end(1, "done", 0)
    out = io.StringIO()
    run.display.write = lambda text, stderr: out.write(text)  # type: ignore[method-assign]
    _step(run)
    assert out.getvalue() == "in 2\tx\nin 2\ty\n"
    rows = [line.split("\t") for line in log.getvalue().splitlines()]
    assert [(r[0], r[6], r[8]) for r in rows] == [("1", "0", "echo 'in 1'"),
                                                  ("2", "4", "echo 'in 2'")]  # fmt: skip
    assert fanout.exit_code(len(run.failed)) == 1


def test_ctrl_c_during_a_submission_kills_what_it_made() -> None:
    # Given a run whose second batch is made by the server, but Ctrl-C cuts off the answer
    server = FakeServer()
    items = [parallel._item(s, str(s), ["true"], None, [], {"labels": {"parallel": "r"}})
             for s in range(1, parallel.BATCH + 3)]  # fmt: skip
    run = parallel.Run(server, items, "r", None, quiet=True, tag=False, joblog=None)  # type: ignore[arg-type]
    submit = server.submit_batch

    def cut_off(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        made = submit(specs)
        if len(server.by_id) > parallel.BATCH:
            server.end(1, "failed", 1)  # a retry (job 503) newer than the batch
            raise KeyboardInterrupt
        return made

    server.submit_batch = cut_off  # type: ignore[method-assign]
    # When it is interrupted, with --kill-on-exit
    code = run.go(parallel.Display(False, len(items)), kill_on_exit=True)
    # Then the jobs of the cut-off batch are known by their input, and killed too
    assert code == 130
    assert [(i.seq, i.job_id) for i in items[-2:]] == [(501, 501), (502, 502)]
    assert sorted(server.killed) == list(range(1, 503))  # not the retry, 503


def test_a_failed_submission_is_sent_again_only_when_nothing_can_run_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a server that refuses to connect once, answers 503 without making the batch
    # once, and makes a batch but answers 503 once (its database lost after the commit)
    server = FakeServer()
    submit = server.submit_batch
    refused = client.ConnectionFailed("http://x", "refused")
    refused.__cause__ = httpx.ConnectError("refused")
    unavailable = client.ApiError(503, "database_unavailable", "no database")
    troubles: list[tuple[client.ClientError, bool]] = [
        (refused, False), (unavailable, False), (unavailable, True)
    ]  # fmt: skip

    def flaky(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        exc, make = troubles.pop(0) if troubles else (None, True)
        made = submit(specs) if make else []
        for job in made:  # they run at once
            server.end(job["id"], "done")
        if exc is not None:
            raise exc
        return made

    server.submit_batch = flaky  # type: ignore[method-assign]
    monkeypatch.setattr(parallel, "time", _Clock())
    items = [parallel._item(s, str(s), ["true"], None, [], {"labels": {"parallel": "r"}})
             for s in range(1, 4)]  # fmt: skip
    run = parallel.Run(server, items, "r", None, quiet=True, tag=False, joblog=None)  # type: ignore[arg-type]
    run.display = parallel.Display(False, 3)
    # When it runs, it sends the batch again, looks first after a 503, adopts what was made
    run._loop()
    # Then every input has exactly one job, and all ended
    assert not troubles and len(server.by_id) == 3 and run.ended == 3
    assert sorted(i.job_id for i in items) == [1, 2, 3]

    # A timeout may yet make the jobs: the run ends, and says so
    timeout = client.ConnectionFailed("http://x", "timed out")
    timeout.__cause__ = httpx.ReadTimeout("timed out")
    server.submit_batch = lambda specs: (_ for _ in ()).throw(timeout)  # type: ignore[method-assign]
    run = _run(FakeServer(), 0)
    run.items = [parallel._item(1, "1", ["true"], None, [], {})]
    run.c = server  # type: ignore[assignment]
    with pytest.raises(client.ConnectionFailed):
        run._loop()


class _Clock:
    """The time module as the run sees it: sleeping moves the clock, and takes no time."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_job_deleted_meanwhile_ends_as_deleted() -> None:
    server = FakeServer()
    run = _run(server, 2)
    del server.by_id[2]
    server.end(1, "done")
    _step(run)
    assert [i.state for i in run.items] == ["done", "deleted"] and len(run.failed) == 1


def test_polls_outlast_a_server_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer()
    run = _run(server, 3)
    answer = server.jobs_by_id
    failures = [client.ConnectionFailed("http://x", "connection refused"),
                client.ApiError(503, "database_unavailable", "no database")]  # fmt: skip

    def flaky(ids: list[int]) -> list[dict[str, Any]]:
        if failures:
            raise failures.pop()
        for job_id in ids:
            server.end(job_id, "done")
        return answer(ids)

    server.jobs_by_id = flaky  # type: ignore[method-assign]
    monkeypatch.setattr(parallel.time, "sleep", lambda seconds: None)
    run._loop()
    assert run.ended == 3 and not failures

    def refused(ids: list[int]) -> list[dict[str, Any]]:
        raise client.ApiError(403, "forbidden", "no")  # not something that passes

    server.jobs_by_id = refused  # type: ignore[method-assign]
    run = _run(server, 1)
    with pytest.raises(client.ApiError):
        run._loop()


def test_notify_reaches_every_job_of_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """--notify STATES:TARGET (submit's option) goes into every job of the fan-out; a
    malformed one is a usage error before anything is submitted."""
    from typer.testing import CliRunner

    from jobbalancer import cli
    from jobbalancer.cli import base, exits

    made: list[dict[str, Any]] = []

    class Captured:
        def __init__(self, c: object, items: list[parallel.Item], *args: object, **kw: object):
            made.extend(item.spec for item in items)

        def go(self, *args: object, **kw: object) -> int:
            return 0

    monkeypatch.setattr(parallel, "Run", Captured)
    monkeypatch.setattr(base.Remote, "client", lambda self: FakeClientContext())
    args = ["parallel", "--url", "http://127.0.0.1:9", "--api-key", "k"]
    result = CliRunner().invoke(
        cli.app, [*args, "-N", "failed,timeout:ops-hook", "--notify", "done:chat",
                  "--", "echo", "{}", ":::", "a", "b"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rules = [
        {"on": ["failed", "timeout"], "target": "ops-hook"},
        {"on": ["done"], "target": "chat"},
    ]
    assert [spec["notify"] for spec in made] == [rules, rules]
    assert [spec["command"] for spec in made] == ["echo a", "echo b"]

    made.clear()
    bad = CliRunner().invoke(cli.app, [*args, "--notify", "ops-hook", "--", "echo", ":::", "a"])
    assert bad.exit_code == exits.RET_USAGE and "STATES:TARGET" in bad.output
    assert made == []


class FakeClientContext:
    def __enter__(self) -> object:
        return object()

    def __exit__(self, *exc: object) -> None:
        return None

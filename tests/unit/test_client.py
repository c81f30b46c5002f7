"""The Python client: against the real app served in a thread, and against canned answers
(httpx.MockTransport) for what a healthy server never sends."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from jobbalancer import auth, db, jobs
from jobbalancer import registry as workers
from jobbalancer.app import create_app
from jobbalancer.client import (
    ApiError,
    Client,
    ConnectionFailed,
    ServerEvent,
    WaitTimeout,
    parse_sse,
)
from jobbalancer.server import bind
from jobbalancer.settings import Settings
from jobbalancer.worker.output import OutputSink

# -- a real server, in a thread -------------------------------------------------------------


@dataclass
class Live:
    url: str
    key: str
    engine: sa.Engine

    def client(self, key: str | None = None, **kwargs: Any) -> Client:
        return Client(self.url, self.key if key is None else key, **kwargs)

    def run_job(self, job_id: int, output: list[tuple[str, bytes]], exit_code: int = 0) -> None:
        """Play a worker: take the job, write its output, report its end."""
        with db.write(self.engine) as conn:
            worker_id, _ = workers.register(
                conn,
                name=f"w{job_id}",
                host="test",
                worker_class="default",
                max_jobs=4,
                pid=1,
                version="test",
                stats=workers.Stats(),
            )
            jobs.assign(conn, job_id, worker_id)
            token = jobs.get(conn, job_id).token
            assert token is not None
            assert jobs.claim(conn, job_id, worker_id, token)
        sink = OutputSink(self.engine)
        sink.open(job_id, cap=1 << 20)
        for stream, data in output:
            sink.write(job_id, stream, data)
            sink.flush()
        state = jobs.State.DONE if exit_code == 0 else jobs.State.FAILED

        def report(conn: sa.Connection, kept: int) -> bool:
            return jobs.finish(conn, job_id, token, state, exit_code=exit_code, output_bytes=kept)

        assert sink.finish(job_id, report)


@pytest.fixture
def live(sqlite_engine: sa.Engine) -> Iterator[Live]:
    url = sqlite_engine.url.render_as_string(hide_password=False)
    app = create_app(
        Settings.model_validate({"database": {"url": url}}), sqlite_engine, supervise=False
    )
    assert app.state.first_admin is not None
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    yield Live(f"http://127.0.0.1:{port}", app.state.first_admin[2], sqlite_engine)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


# -- submitting and reading ---------------------------------------------------------------


def test_submit_a_command_and_read_it_back(live: Live) -> None:
    with live.client() as c:
        job = c.submit(
            command="echo hi",
            watchdog=5,
            priority=3,
            retries=1,
            env={"A": "1"},
            labels={"team": "x"},
        )
        again = c.job(job["id"])

    assert job["state"] == "waiting"
    assert again["command"] == "echo hi"
    assert (again["watchdog"], again["priority"], again["retries"]) == (5, 3, 1)
    assert again["env"] == {"A": "1"} and again["labels"] == {"team": "x"}
    assert again["user"] == "admin"


def test_submit_a_stored_script_with_params(live: Live) -> None:
    with live.client() as c:
        c.request(
            "POST",
            "/api/v1/scripts",
            json={"name": "greet", "interpreter": "bash", "content": 'echo "hello $1"'},
        )
        job = c.submit(script="greet", params=["a b"])

    assert job["script"]["name"] == "greet"
    assert job["params"] == ["a b"]


def test_submit_batch_keeps_the_order(live: Live) -> None:
    with live.client() as c:
        created = c.submit_batch([{"command": f"echo {i}"} for i in range(3)])

    assert [j["command"] for j in created] == ["echo 0", "echo 1", "echo 2"]


def test_submit_needs_exactly_one_of_command_and_script(live: Live) -> None:
    with live.client() as c, pytest.raises(ValueError, match="exactly one"):
        c.submit()


def test_jobs_iterates_pages_through_the_cursor(live: Live) -> None:
    with live.client() as c:
        ids = [c.submit(command=f"echo {i}")["id"] for i in range(5)]
        every = [j["id"] for j in c.jobs(page_size=2)]
        first_three = [j["id"] for j in c.jobs(limit=3, page_size=2)]
        matching = [j["id"] for j in c.jobs(q="echo 4", state=["waiting", "running"])]

    assert every == ids[::-1]
    assert first_three == ids[::-1][:3]
    assert matching == [ids[4]]


def test_log_follow_and_wait_on_a_finished_job(live: Live) -> None:
    with live.client() as c:
        job_id = c.submit(command="x")["id"]
        live.run_job(job_id, [("stdout", b"one\n"), ("stderr", b"oops\n"), ("stdout", b"two\n")])

        text, offset, state = c.log(job_id)
        err_text, _, _ = c.log(job_id, "stderr")
        tail, _, _ = c.log(job_id, "all", offset=4)
        events = list(c.follow(job_id))
        final = c.wait(job_id)

    assert (text, offset, state) == ("one\noops\ntwo\n", 13, "done")
    assert err_text == "oops\n" and tail == "oops\ntwo\n"
    outputs = [(p["stream"], p["data"]) for kind, p in events if kind == "output"]
    assert "".join(d for _, d in outputs) == "one\noops\ntwo\n"
    assert {s for s, _ in outputs} == {"stdout", "stderr"}
    assert events[-1][0] == "end" and events[-1][1]["state"] == "done"
    assert final["state"] == "done" and final["exit_code"] == 0


def test_follow_streams_output_while_the_job_runs(live: Live) -> None:
    with live.client() as c:
        job_id = c.submit(command="x")["id"]
        seen: list[tuple[str, Any]] = []
        player = threading.Timer(0.5, live.run_job, (job_id, [("stdout", b"late\n")], 3))
        player.start()
        for kind, payload in c.follow(job_id):
            seen.append((kind, payload.get("data") if kind == "output" else payload["state"]))
        player.join()

    assert seen == [("output", "late\n"), ("end", "failed")]


def test_wait_with_a_timeout(live: Live) -> None:
    with live.client() as c:
        job_id = c.submit(command="x")["id"]
        with pytest.raises(WaitTimeout, match=f"job {job_id} did not finish"):
            c.wait(job_id, timeout=0.3)
        live.run_job(job_id, [])
        assert c.wait(job_id, timeout=5)["state"] == "done"


def test_kill_restart_delete(live: Live) -> None:
    with live.client() as c:
        job_id = c.submit(command="sleep 100")["id"]
        killed = c.kill(job_id)
        new = c.restart(job_id)
        c.delete(job_id)
        with pytest.raises(ApiError) as gone:
            c.job(job_id)

    assert killed["state"] == "killed"
    assert new["restarted_from"] == job_id and new["id"] != job_id
    assert gone.value.status == 404 and gone.value.code == "not_found"


def test_workers_and_health(live: Live) -> None:
    with live.client() as c:
        assert c.workers() == []
        job_id = c.submit(command="x")["id"]
        live.run_job(job_id, [])
        assert [w["name"] for w in c.workers()] == [f"w{job_id}"]
    with live.client(key="") as anonymous:
        assert anonymous.health() == {"status": "ok", "database": "ok"}


# -- errors -------------------------------------------------------------------------------


def test_invalid_input_names_the_field(live: Live) -> None:
    with live.client() as c, pytest.raises(ApiError) as caught:
        c.submit(command="x", watchdog=-1)

    assert caught.value.status == 422
    assert caught.value.field is not None and "watchdog" in caught.value.field
    assert caught.value.message


def test_bad_key_is_401_and_wrong_role_403(live: Live) -> None:
    with db.write(live.engine) as conn:
        viewer = auth.create_user(conn, "vic", auth.Role.VIEWER)
        _, viewer_key = auth.create_api_key(conn, viewer.id)

    with live.client(key="jb_wrong") as c, pytest.raises(ApiError) as unknown:
        c.jobs(limit=1).__next__()
    with live.client(key=viewer_key) as c, pytest.raises(ApiError) as forbidden:
        c.submit(command="x")

    assert unknown.value.status == 401 and unknown.value.code == "unauthorized"
    assert forbidden.value.status == 403 and forbidden.value.code == "forbidden"


def test_need_realtime_without_a_free_worker_is_occupied(live: Live) -> None:
    with live.client() as c, pytest.raises(ApiError) as caught:
        c.submit(command="x", need_realtime=True)

    assert caught.value.status == 409 and caught.value.code == "occupied"
    assert caught.value.job is not None and caught.value.job["state"] == "occupied"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_failure_names_the_url() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with Client(url, "jb_x") as c, pytest.raises(ConnectionFailed) as caught:
        c.job(1)
    with Client(url, "jb_x") as c, pytest.raises(ConnectionFailed):
        next(c.follow(1))

    assert url in str(caught.value) and caught.value.url == url


# -- canned answers -----------------------------------------------------------------------


def mock(handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client("http://jb.test", "jb_k", transport=httpx.MockTransport(handler))


def test_an_error_that_is_not_json() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    with mock(handler) as c, pytest.raises(ApiError) as caught:
        c.job(1)

    assert (caught.value.status, caught.value.code) == (502, "http_502")
    assert "Bad Gateway" in caught.value.message


def test_an_api_error_body_is_kept_whole() -> None:
    body = {"error": "invalid", "message": "params: not a list", "field": "params"}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer jb_k"
        return httpx.Response(422, json=body)

    with mock(handler) as c, pytest.raises(ApiError) as caught:
        c.submit(script="s", params=["x"])

    error = caught.value
    assert (error.status, error.code, error.message, error.field) == (
        422,
        "invalid",
        "params: not a list",
        "params",
    )
    assert error.body == body and error.job is None


def test_parse_sse() -> None:
    lines = [
        ": keep-alive",
        "",
        "id: 4",
        "event: output",
        'data: {"stream": "stdout", "data": "abc\\n"}',
        "",
        "event: note\r",
        "data: line one",
        "data: line two",
        "",
        "data: 7",
        "",
        "event: end",
        'data: {"id": 1, "state": "done"}',
    ]

    assert list(parse_sse(lines)) == [
        ServerEvent("output", {"stream": "stdout", "data": "abc\n"}, 4),
        ServerEvent("note", {"data": "line one\nline two"}, None),
        ServerEvent("message", {"data": 7}, None),
        ServerEvent("end", {"id": 1, "state": "done"}, None),
    ]


def _sse(*events: tuple[str, dict[str, Any], int | None]) -> bytes:
    text = ""
    for name, data, event_id in events:
        head = f"id: {event_id}\n" if event_id is not None else ""
        text += f"{head}event: {name}\ndata: {json.dumps(data)}\n\n"
    return text.encode()


def test_follow_resumes_after_a_cut_at_the_last_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda _: None)
    asked: list[str | None] = []
    answers = [
        _sse(("output", {"stream": "stdout", "data": "12345"}, 5)),  # then cut: no end
        _sse(
            ("output", {"stream": "stderr", "data": "678"}, 8),
            ("end", {"id": 9, "state": "done"}, None),
        ),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("offset"))
        return httpx.Response(
            200, content=answers[len(asked) - 1], headers={"Content-Type": "text/event-stream"}
        )

    with mock(handler) as c:
        events = list(c.follow(9))

    assert asked == ["0", "5"]
    assert [(k, p.get("data", p.get("state"))) for k, p in events] == [
        ("output", "12345"),
        ("output", "678"),
        ("end", "done"),
    ]


def test_follow_gives_up_when_the_stream_never_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda _: None)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b": keep-alive\n\n")

    with mock(handler) as c, pytest.raises(ConnectionFailed, match="kept closing"):
        list(c.follow(1))


def test_follow_reports_a_job_deleted_while_watched() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        gone = {"error": "not_found", "message": "job 1 does not exist"}
        return httpx.Response(200, content=_sse(("error", gone, None)))

    with mock(handler) as c, pytest.raises(ApiError) as caught:
        list(c.follow(1))

    assert caught.value.status == 404 and "does not exist" in caught.value.message


def test_health_answers_when_the_database_is_down() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"status": "unavailable", "database": "unavailable"})

    with mock(handler) as c:
        assert c.health()["database"] == "unavailable"

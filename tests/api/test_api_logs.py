"""Job output: by stream, from offsets, as text; and live as server-sent events."""

from __future__ import annotations

import json
import threading
import time

from apihelpers import Api, submit

from jobbalancer import logs


def _events(text: str) -> list[tuple[str, str]]:
    found = []
    for block in text.split("\n\n"):
        lines = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if "event" in lines:
            found.append((lines["event"], lines["data"]))
    return found


def test_log_by_stream_and_offset(api: Api) -> None:
    api.worker("node-1")
    job = submit(api.admin, command="noisy")
    api.start(job["id"])
    api.write_output(
        job["id"], ("stdout", b"out-1\n"), ("stderr", b"err-1\n"), ("stdout", b"out-2\n")
    )
    url = f"/api/v1/jobs/{job['id']}/log"

    r = api.admin.get(url)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.text == "out-1\nerr-1\nout-2\n"
    assert r.headers["x-log-offset"] == "18" and r.headers["x-job-state"] == "running"
    assert api.admin.get(url, params={"stream": "stdout"}).text == "out-1\nout-2\n"
    assert api.admin.get(url, params={"stream": "stderr"}).text == "err-1\n"
    r = api.admin.get(url, params={"stream": "stdout", "offset": 3})
    assert r.text == "-1\nout-2\n" and r.headers["x-log-offset"] == "12"
    r = api.admin.get(url, params={"offset": 9})  # inside the stderr chunk
    assert r.text == "-1\nout-2\n"
    r = api.admin.get(url, params={"offset": 18})  # caught up
    assert r.text == "" and r.headers["x-log-offset"] == "18"
    r = api.admin.get(url, params={"offset": 2, "limit": 5})
    assert r.text == "t-1\ne" and r.headers["x-log-offset"] == "7"

    # A character split between chunks is held back until it is whole.
    api.write_output(job["id"], ("stdout", "é".encode()[:1]))
    r = api.admin.get(url, params={"offset": 18})
    assert r.text == "" and r.headers["x-log-offset"] == "18"
    api.write_output(job["id"], ("stdout", "é".encode()[1:] + b"\xff\n"))
    api.finish(job["id"])
    r = api.admin.get(url, params={"offset": 18})
    assert r.text == "é\ufffd\n" and r.headers["x-job-state"] == "done"

    for bad in ({"stream": "both"}, {"offset": -1}, {"offset": "x"}):
        r = api.admin.get(url, params=bad)
        assert r.status_code == 422 and r.json()["field"] == next(iter(bad))


def test_log_reads_past_many_chunks(api: Api) -> None:
    job = submit(api.admin, command="chatty")
    parts = [
        ("stdout" if i % 3 else "stderr", f"{i:04d}\n".encode()) for i in range(logs.BATCH + 100)
    ]
    api.write_output(job["id"], *parts)
    text = api.admin.get(f"/api/v1/jobs/{job['id']}/log").text
    assert text == "".join(p.decode() for _, p in parts)
    assert logs.BATCH < len(parts)  # several batches were read


def test_stream_of_a_finished_job_ends_with_end(api: Api) -> None:
    api.worker("node-1")
    job = submit(api.admin, command="echo")
    api.start(job["id"])
    api.write_output(job["id"], ("stdout", b"hello\n"), ("stderr", b"oops\n"))
    api.finish(job["id"])
    r = api.admin.get(f"/api/v1/jobs/{job['id']}/log/stream")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert [e for e, _ in events] == ["output", "output", "end"]
    assert json.loads(events[0][1]) == {"stream": "stdout", "data": "hello\n"}
    assert json.loads(events[1][1]) == {"stream": "stderr", "data": "oops\n"}
    assert json.loads(events[2][1])["state"] == "done"
    # From an offset, and of one stream.
    r = api.admin.get(f"/api/v1/jobs/{job['id']}/log/stream?offset=3&stream=stdout")
    assert [json.loads(d) for e, d in _events(r.text) if e == "output"] == [
        {"stream": "stdout", "data": "lo\n"}
    ]


def test_stream_follows_a_running_job_until_it_ends(api: Api) -> None:
    api.worker("node-1")
    job = submit(api.admin, command="slow")
    api.start(job["id"])
    api.write_output(job["id"], ("stdout", b"first\n"))

    def worker_side() -> None:
        time.sleep(0.5)
        api.write_output(job["id"], ("stdout", b"second\n"))
        time.sleep(0.3)
        api.finish(job["id"], exit_code=0)

    thread = threading.Thread(target=worker_side)
    thread.start()
    started = time.monotonic()
    r = api.admin.get(f"/api/v1/jobs/{job['id']}/log/stream")
    thread.join()
    assert time.monotonic() - started >= 0.7
    events = _events(r.text)
    assert [json.loads(d)["data"] for e, d in events if e == "output"] == ["first\n", "second\n"]
    assert events[-1][0] == "end" and json.loads(events[-1][1])["state"] == "done"

"""The pages over HTTP: jobs list, submit form, job page and its actions, settings, and
what each role may see and do. (Real browsers and workers: tests/browser.)"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from jobbalancer import auth, balancer, db, jobs, settings
from jobbalancer import registry as workers
from jobbalancer.db import schema
from jobbalancer.web.routes import jobs as web_jobs
from tests.web.conftest import PASSWORD, Web


def _submit(web: Web, command: str = "sleep 60", **spec: object) -> int:
    r = web.browser().post(
        "/api/v1/jobs",
        json={"command": command, **spec},
        headers={"Authorization": f"Bearer {web.admin_key}"},
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _state(web: Web, job_id: int) -> str | None:
    with db.read(web.engine) as conn:
        return conn.execute(sa.select(jobs.J.c.state).where(jobs.J.c.id == job_id)).scalar()


def _row_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-id="(\d+)"', html)]


def test_the_jobs_page_lists_filters_and_pages(web: Web) -> None:
    client, _ = web.login()
    ids = [_submit(web, f"echo job-{i}") for i in range(55)]
    page = client.get("/jobs")
    assert page.status_code == 200
    assert _row_ids(page.text) == ids[::-1][:50]  # newest first, 50 a page
    assert 'class="badge st-waiting"' in page.text and "echo job-54" in page.text
    older = re.search(r'href="(/jobs\?cursor=[^"]+)">Older', page.text)
    assert older, "no link to the next page"
    assert _row_ids(client.get(older.group(1).replace("&amp;", "&")).text) == ids[::-1][50:]

    found = client.get("/jobs/table", params={"q": "JOB-7", "state": "waiting"})
    assert _row_ids(found.text) == [ids[7]]
    assert found.headers["HX-Replace-Url"] == "/jobs?state=waiting&q=JOB-7"
    assert _row_ids(client.get("/jobs/table", params={"state": "done"}).text) == []
    bad = client.get("/jobs/table", params={"state": "sleeping"})
    assert bad.status_code == 200 and "unknown state &#39;sleeping&#39;" in bad.text


def test_submitting_from_the_form(web: Web) -> None:
    client, csrf = web.login()
    form = {"csrf_token": csrf, "kind": "command", "command": "echo $1", "params": "a b\r\nc",
            "worker_class": "default", "watchdog": "30", "priority": "5",
            "retries": "1"}  # fmt: skip
    r = client.post("/jobs", data=form)
    assert r.status_code == 303
    job_id = int(r.headers["location"].rsplit("/", 1)[1])
    with db.read(web.engine) as conn:
        job = jobs.get(conn, job_id)
    assert (job.command, job.params, job.watchdog, job.priority, job.retries) == (
        "echo $1", ("a b", "c"), 30.0, 5, 1,
    )  # fmt: skip
    page = client.get(r.headers["location"])
    assert f"Job {job_id} submitted." in page.text and "a b" in page.text


def test_the_form_shows_the_apis_validation_errors(web: Web) -> None:
    client, csrf = web.login()
    base = {"csrf_token": csrf, "kind": "command", "worker_class": "default"}
    cases = [
        ({"command": "  "}, "command: must not be empty"),
        (
            {"command": "true", "retries": "500"},
            "retries: input should be less than or equal to 100",
        ),
        ({"command": "true", "worker_class": "gpu"}, "worker class"),
        ({"kind": "script", "script": ""}, "choose a script"),
        ({"kind": "script", "script": "nope"}, "nope"),
    ]
    for fields, message in cases:
        r = client.post("/jobs", data={**base, **fields})
        assert r.status_code in (404, 422), (fields, r.status_code)
        assert message in r.text.replace("&#39;", "'"), (fields, r.text[:2000])
        assert '<details class="card submit-card" id="submit" open>' in r.text  # stays open
    with db.read(web.engine) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs.J)).scalar() == 0


def test_job_page_kill_restart_delete(web: Web) -> None:
    client, csrf = web.login()
    job_id = _submit(web, "echo hi", labels={"team": "a"})
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    for text in (f"Job {job_id}", "echo hi", "team=a", ">Kill<", ">Restart<", ">Delete<"):
        assert text in page.text, text

    assert client.post(f"/jobs/{job_id}/kill").status_code == 403  # no CSRF token
    r = client.post(f"/jobs/{job_id}/kill", data={"csrf_token": csrf})
    assert r.status_code == 303 and _state(web, job_id) == "killed"
    again = client.post(f"/jobs/{job_id}/kill", data={"csrf_token": csrf})
    assert again.status_code == 409 and "already killed" in again.text

    r = client.post(f"/jobs/{job_id}/restart", data={"csrf_token": csrf})
    new_id = int(r.headers["location"].rsplit("/", 1)[1])
    assert new_id != job_id and _state(web, new_id) == "waiting"
    new_page = client.get(f"/jobs/{new_id}").text
    assert f'Restarted from <a href="/jobs/{job_id}">job {job_id}</a>' in new_page
    assert f'<a href="/jobs/{new_id}">job {new_id}</a>' in client.get(f"/jobs/{job_id}").text

    r = client.post(f"/jobs/{job_id}/delete", data={"csrf_token": csrf})
    assert r.status_code == 303 and _state(web, job_id) is None
    assert client.get(f"/jobs/{job_id}").status_code == 404


def test_the_log_download(web: Web) -> None:
    client, _ = web.login()
    job_id = _submit(web, "true")
    r = client.get(f"/jobs/{job_id}/log.txt")
    assert r.status_code == 200 and r.text == ""
    assert r.headers["content-disposition"] == f'attachment; filename="job-{job_id}.log"'


def test_killing_and_deleting_a_selection(web: Web) -> None:
    client, csrf = web.login()
    ids = [_submit(web) for _ in range(3)]
    r = client.post(
        "/jobs/bulk",
        data={"csrf_token": csrf, "action": "kill", "ids": [str(i) for i in ids[:2]],
              "back": "/jobs?state=waiting"},
    )  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/jobs?state=waiting"
    assert [_state(web, i) for i in ids] == ["killed", "killed", "waiting"]
    assert "Kill requested for 2 jobs." in client.get("/jobs").text

    r = client.post(
        "/jobs/bulk",
        data={"csrf_token": csrf, "action": "delete", "ids": [str(ids[0]), str(ids[1]), "999999"]},
    )
    assert [_state(web, i) for i in ids] == [None, None, "waiting"]
    flash = client.get("/jobs").text
    assert "Deleted 2 jobs." in flash and "#999999: job 999999 does not exist" in flash


def test_settings_apply_and_refuse_bad_values(web: Web) -> None:
    client, csrf = web.login()
    page = client.get("/settings")
    assert page.status_code == 200 and 'value="round_robin" checked' in page.text
    good = {"csrf_token": csrf, "algorithm": "least_loaded", "worker_timeout": "20",
            "kill_grace": "2", "max_log_bytes": "2048", "retention_days": "7"}  # fmt: skip
    assert client.post("/settings", data=good).status_code == 303
    with db.read(web.engine) as conn:
        now = settings.load_tunables(conn)
    assert (now.algorithm, now.worker_timeout, now.retention_days) == ("least_loaded", 20, 7)
    assert now.metrics_public is False

    bad = client.post("/settings", data={**good, "worker_timeout": "1"})
    assert bad.status_code == 422
    assert "worker_timeout" in bad.text and "greater than or equal to 2" in bad.text
    wrong = client.post("/settings", data={**good, "algorithm": "fastest"})
    assert wrong.status_code == 422 and "algorithm" in wrong.text
    with db.read(web.engine) as conn:
        assert settings.load_tunables(conn).worker_timeout == 20


def test_a_viewer_sees_no_buttons_and_is_refused_anyway(web: Web) -> None:
    job_id = _submit(web)
    web.user("vic", "viewer")
    client, csrf = web.login("vic", PASSWORD)
    listing = client.get("/jobs").text
    assert str(job_id) in listing
    for absent in ("Submit a job", "js-select", "Kill selected", 'method="post" action="/jobs"'):
        assert absent not in listing, absent
    page = client.get(f"/jobs/{job_id}").text
    for absent in (">Kill<", ">Restart<", ">Delete<"):
        assert absent not in page, absent
    assert "Submit a job" not in client.get("/").text

    for path, data in [
        ("/jobs", {"kind": "command", "command": "true"}),
        (f"/jobs/{job_id}/kill", {}),
        (f"/jobs/{job_id}/restart", {}),
        (f"/jobs/{job_id}/delete", {}),
        ("/jobs/bulk", {"action": "kill", "ids": str(job_id)}),
        ("/settings", {"algorithm": "random"}),
    ]:
        r = client.post(path, data={"csrf_token": csrf, **data})
        assert r.status_code == 403, (path, r.status_code)
        assert "viewer" in r.text or "Not allowed" in r.text
    assert client.get("/settings").status_code == 403
    assert _state(web, job_id) == "waiting"


def test_a_submitter_sees_and_manages_only_their_own_jobs(web: Web) -> None:
    theirs = _submit(web)
    web.user("sam", "submitter")
    client, csrf = web.login("sam", PASSWORD)
    r = client.post("/jobs", data={"csrf_token": csrf, "kind": "command", "command": "sleep 9"})
    mine = int(r.headers["location"].rsplit("/", 1)[1])
    assert _row_ids(client.get("/jobs").text) == [mine]
    assert client.get(f"/jobs/{theirs}").status_code == 404
    r = client.post(
        "/jobs/bulk", data={"csrf_token": csrf, "action": "kill", "ids": [str(theirs), str(mine)]}
    )
    assert [_state(web, theirs), _state(web, mine)] == ["waiting", "killed"]
    assert "Settings" not in client.get("/").text.split("</nav>")[0]
    assert auth.Role.SUBMITTER.value in client.get("/").text


def test_the_dashboard_counts(web: Web) -> None:
    client, _ = web.login()
    for _ in range(3):
        _submit(web)
    page = client.get("/")
    assert page.status_code == 200
    assert re.search(r"Waiting</div><div class=\"tile-value\">3<", page.text)
    assert "No worker has registered yet" in page.text
    live = client.get("/dashboard/live", headers={"HX-Request": "true"})
    assert live.status_code == 200 and "<html" not in live.text and "<svg" in live.text


def test_submitting_a_stored_script_with_params(web: Web) -> None:
    admin = {"Authorization": f"Bearer {web.admin_key}"}
    r = web.browser().post(
        "/api/v1/scripts",
        json={"name": "greet", "interpreter": "bash", "content": 'echo "hi $1"'},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    client, csrf = web.login()
    assert '<option value="greet">greet (bash)</option>' in client.get("/jobs").text
    r = client.post(
        "/jobs",
        data={"csrf_token": csrf, "kind": "script", "script": "greet", "command": "ignored",
              "params": "a; rm -rf /\n$HOME"},
    )  # fmt: skip
    assert r.status_code == 303, r.text
    job_id = int(r.headers["location"].rsplit("/", 1)[1])
    with db.read(web.engine) as conn:
        job = jobs.get(conn, job_id)
    assert (job.command, job.script_name, job.params) == (None, "greet", ("a; rm -rf /", "$HOME"))
    page = client.get(f"/jobs/{job_id}").text
    assert "greet" in page and "echo &#34;hi $1&#34;" in page  # the body, as copied


def test_the_run_card_refreshes_until_the_job_is_over(web: Web) -> None:
    client, csrf = web.login()
    job_id = _submit(web)
    page = client.get(f"/jobs/{job_id}").text
    assert f'hx-get="/jobs/{job_id}/run" hx-trigger="every 2s"' in page
    card = client.get(f"/jobs/{job_id}/run", headers={"HX-Request": "true"})
    assert card.status_code == 200 and "<html" not in card.text and "st-waiting" in card.text
    client.post(f"/jobs/{job_id}/kill", data={"csrf_token": csrf})
    over = client.get(f"/jobs/{job_id}/run", headers={"HX-Request": "true"})
    assert over.status_code == 286 and "st-killed" in over.text  # htmx stops polling
    assert "hx-trigger" not in client.get(f"/jobs/{job_id}").text.split('id="job-run"')[1][:80]


def test_a_scripts_only_user_gets_no_command_field(web: Web) -> None:
    with db.write(web.engine) as conn:
        auth.create_user(conn, "sol", "submitter", PASSWORD, commands_allowed=False,
                         worker_classes=["default"])  # fmt: skip
    client, csrf = web.login("sol", PASSWORD)
    page = client.get("/jobs").text
    assert 'name="command"' not in page and 'value="script" checked' in page
    r = client.post("/jobs", data={"csrf_token": csrf, "kind": "command", "command": "id"})
    assert r.status_code == 403
    assert "you may run stored scripts only" in r.text


def _output(web: Web, job_id: int, parts: list[tuple[str, bytes]]) -> None:
    """Output as a worker writes it: chunks with their offsets (played in the database)."""
    offset, per_stream = 0, {"stdout": 0, "stderr": 0}
    rows = []
    for seq, (stream, data) in enumerate(parts):
        rows.append({"job_id": job_id, "seq": seq, "stream": stream, "offset": offset,
                     "stream_offset": per_stream[stream], "size": len(data), "data": data,
                     "at": datetime.now(UTC)})  # fmt: skip
        offset += len(data)
        per_stream[stream] += len(data)
    with db.write(web.engine) as conn:
        conn.execute(sa.insert(schema.job_output), rows)


def test_the_log_tells_the_streams_apart_and_stops_at_a_page(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = web.login()
    job_id = _submit(web)
    _output(web, job_id, [("stdout", b"out <1>\n"), ("stderr", b"err \xff\n"),
                          ("stdout", "caf\u00e9\n".encode())])  # fmt: skip
    page = client.get(f"/jobs/{job_id}").text
    assert (
        '<span class="stdout">out &lt;1&gt;\n</span><span class="stderr">err \ufffd\n</span>'
        '<span class="stdout">caf\u00e9\n</span>'
    ) in page
    # Still running: the page streams the rest from where it stopped
    assert f'data-stream-url="/api/v1/jobs/{job_id}/log/stream" data-offset="20"' in page

    monkeypatch.setattr(web_jobs, "LOG_PAGE_BYTES", 10)
    cut = client.get(f"/jobs/{job_id}").text
    assert "out &lt;1&gt;" in cut and "caf" not in cut and "the download has everything" in cut
    assert "data-stream-url" not in cut
    assert client.get(f"/jobs/{job_id}/log.txt").content == b"out <1>\nerr \xff\ncaf\xc3\xa9\n"


def test_htmx_sends_the_token_in_a_header(web: Web) -> None:
    client, csrf = web.login()
    job_id = _submit(web)
    r = client.post(f"/jobs/{job_id}/kill", headers={"HX-Request": "true", "X-CSRF-Token": csrf})
    assert r.status_code == 303 and _state(web, job_id) == "killed"
    wrong = client.post(
        f"/jobs/{job_id}/delete", headers={"HX-Request": "true", "X-CSRF-Token": "x"}
    )
    assert wrong.status_code == 403 and "flash-error" in wrong.text and "<html" not in wrong.text


def test_garbage_posts_are_never_a_5xx(web: Web) -> None:
    client, csrf = web.login(raise_errors=False)
    job_id = _submit(web)
    paths = ["/jobs", "/jobs/bulk", f"/jobs/{job_id}/kill", f"/jobs/{job_id}/restart",
             f"/jobs/{job_id}/delete", "/settings", "/login", "/logout"]  # fmt: skip
    bodies: list[tuple[dict[str, str], bytes]] = [
        ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\nnonsense"),
        ({"Content-Type": "multipart/form-data"}, b"no boundary"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"%%%&&&==\xff\xfe"),
        ({"Content-Type": "application/json"}, b'{"csrf_token": 1}'),
        ({"Content-Type": "application/x-www-form-urlencoded"},
         f"csrf_token={csrf}&action=kill&ids=-1&ids=99999999999999999999&ids=x&watchdog=1e999"
         "&ids=%C2%B2&priority=abc&retries=-5&kind=script&script=\x00&params=\x00".encode()),
    ]  # fmt: skip
    for path in paths:
        for headers, body in bodies:
            r = client.post(path, content=body, headers=headers)
            assert r.status_code < 500, (path, body[:40], r.status_code, r.text[:300])
    for path in ["/jobs/0", "/jobs/99999999999999", "/jobs/abc", "/jobs?state=%00",
                 "/jobs?cursor=zzz", "/jobs/table?cursor=%ff", f"/jobs/{job_id}/log.txt?x=1",
                 "/jobs?q=" + "x" * 5000]:  # fmt: skip
        r = client.get(path)
        assert r.status_code < 500, (path, r.status_code, r.text[:300])


def test_the_job_page_shows_env_values_to_the_owner_and_admins_only(web: Web) -> None:
    job_id = _submit(web, env={"TOKEN": "s3cret"})
    admin, _ = web.login()
    assert "TOKEN=s3cret" in admin.get(f"/jobs/{job_id}").text
    for role in ("viewer", "operator"):
        web.user(f"u-{role}", role)
        client, _ = web.login(f"u-{role}", PASSWORD)
        page = client.get(f"/jobs/{job_id}").text
        assert "TOKEN=****" in page and "s3cret" not in page


def test_the_settings_page_sets_the_per_user_limits(web: Web) -> None:
    client, csrf = web.login()
    page = client.get("/settings").text
    assert 'name="max_waiting_per_user" value="10000"' in page
    form = {"csrf_token": csrf, "algorithm": "round_robin", "worker_timeout": "15",
            "kill_grace": "5", "max_log_bytes": "10485760", "retention_days": "30",
            "max_waiting_per_user": "50", "submit_rate": "2.5", "submit_burst": "10",
            "max_submitter_priority": "7", "max_streams_per_user": "3"}  # fmt: skip
    assert client.post("/settings", data=form).status_code == 303
    with db.read(web.engine) as conn:
        now = settings.load_tunables(conn)
    assert (now.max_waiting_per_user, now.submit_rate, now.submit_burst) == (50, 2.5, 10)
    assert (now.max_submitter_priority, now.max_streams_per_user) == (7, 3)
    bad = client.post("/settings", data={**form, "max_streams_per_user": "0"})
    assert bad.status_code == 422 and "max_streams_per_user" in bad.text
    assert 'name="submit_burst" value="10"' in bad.text  # the rest as sent


def test_a_log_stream_of_a_web_session_ends_with_the_session(web: Web) -> None:
    web.app.state.sse_recheck_seconds = 0.05
    job_id = _submit(web, "sleep 60")
    with db.write(web.engine) as conn:  # a worker took it and runs it
        worker_id, _ = workers.register(
            conn, name="n1", host="h", worker_class="default", max_jobs=1, pid=1,
            version="t", stats=workers.Stats(load=0, cpu_count=1, memory_total=1,
            memory_available=1),
        )  # fmt: skip
        balancer.assign_waiting(conn)
        token = jobs.get(conn, job_id).token
        assert token is not None and jobs.claim(conn, job_id, worker_id, token)

    def finish() -> None:  # a guard: a stream that never ends fails instead of hanging
        with db.write(web.engine) as conn:
            jobs.finish(conn, job_id, token, jobs.State.DONE, exit_code=0)

    client, _ = web.login()
    guard = threading.Timer(20, finish)
    guard.start()
    events = []
    try:
        with client.stream("GET", f"/api/v1/jobs/{job_id}/log/stream") as r:
            assert r.status_code == 200
            with db.write(web.engine) as conn:  # signed out elsewhere, or expired
                auth.end_session(conn, client.cookies[auth.SESSION_COOKIE])
            events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    finally:
        guard.cancel()
    assert events == ["error"]


def test_a_scripts_only_user_cannot_restart_a_job_of_a_deleted_script_on_the_page(
    web: Web,
) -> None:
    with db.write(web.engine) as conn:
        auth.create_user(conn, "sam", "submitter", PASSWORD, commands_allowed=False)
    api = web.browser()
    admin = {"Authorization": f"Bearer {web.admin_key}"}
    script = api.post(
        "/api/v1/scripts", json={"name": "s", "interpreter": "bash", "content": "true"},
        headers=admin,
    ).json()  # fmt: skip
    client, csrf = web.login("sam", PASSWORD, raise_errors=False)
    made = client.post(f"/scripts/{script['id']}/run", data={"csrf_token": csrf, "params": ""})
    assert made.status_code == 303, made.text
    job_id = int(made.headers["location"].rsplit("/", 1)[1])
    assert api.delete(f"/api/v1/scripts/{script['id']}", headers=admin).status_code == 204
    r = client.post(f"/jobs/{job_id}/restart", data={"csrf_token": csrf})
    assert r.status_code == 409 and "was deleted" in r.text


def test_the_submit_form_says_when_the_rate_is_exceeded(web: Web) -> None:
    with db.write(web.engine) as conn:
        settings.save_tunables(conn, {"submit_burst": 1, "submit_rate": 0.001})
    web.user("sue", "submitter")
    client, csrf = web.login("sue", PASSWORD)
    form = {"csrf_token": csrf, "kind": "command", "command": "true", "worker_class": "default"}
    assert client.post("/jobs", data=form).status_code == 303
    again = client.post("/jobs", data=form)
    assert again.status_code == 429 and "submissions a second" in again.text

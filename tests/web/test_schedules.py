"""The Schedules pages over HTTP: the list (next run, last result, buttons per role), the
create and edit form (the API's validation, each error next to its field, nothing
half-saved), the cron preview fragment, a schedule's page with its history (paged), the
actions (pause, resume, run now, delete), a job's link to its schedule, and the
dashboard's next runs. (A real browser, server and worker: tests/browser.)"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from jobbalancer import db, jobs, schedules, scripts
from jobbalancer.db import schema
from jobbalancer.service import firing
from jobbalancer.web.routes.schedules import LIST_PAGE
from tests.web.conftest import PASSWORD, Web


def _form(csrf: str, **fields: str) -> dict[str, str]:
    base = {"csrf_token": csrf, "name": "nightly", "description": "the backup",
            "cron": "30 2 * * *", "timezone": "UTC", "overlap": "skip", "catch_up": "latest",
            "catch_up_max": "10", "start_at": "", "end_at": "", "enabled": "on",
            "kind": "command", "command": "echo $1", "params": "", "worker_class": "default",
            "watchdog": "", "priority": "", "retries": ""}  # fmt: skip
    return {**base, **fields}


def _api(web: Web, method: str, path: str, **kw: Any) -> Any:
    r = web.browser().request(
        method, path, headers={"Authorization": f"Bearer {web.admin_key}"}, **kw
    )
    assert r.status_code < 300, r.text
    return r.json() if r.content else None


def _make(web: Web, name: str = "hourly", cron: str = "0 * * * *", **body: Any) -> int:
    job = body.pop("job", {"command": "echo hi"})
    made = _api(web, "POST", "/api/v1/schedules", json={"name": name, "cron": cron, "job": job,
                                                          **body})  # fmt: skip
    return int(made["id"])


def _count(web: Web) -> int:
    with db.read(web.engine) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(schema.schedules)).scalar())


def _get(web: Web, ref: str | int) -> schedules.Schedule:
    with db.read(web.engine) as conn:
        return schedules.find(conn, ref)


def test_creating_from_the_form_then_the_list_and_the_page(web: Web) -> None:
    client, csrf = web.login()
    form = client.get("/schedules/new")
    assert form.status_code == 200
    parts = ('name="cron"', 'hx-get="/schedules/preview"', '<datalist id="zones">',
             '<option value="Europe/Berlin">', 'name="start_at"', 'name="overlap"')  # fmt: skip
    for part in parts:
        assert part in form.text, part
    r = client.post("/schedules", data=_form(
        csrf, name="nightly", cron="30 2 * * *", timezone="Europe/Berlin", overlap="queue",
        catch_up="all", catch_up_max="3", start_at="2030-07-01T00:00", params="a b\r\nc",
        watchdog="30", priority="5", retries="2",
    ))  # fmt: skip
    assert r.status_code == 303, r.text
    s = _get(web, "nightly")
    assert r.headers["location"] == f"/schedules/{s.id}"
    assert (s.cron, s.timezone, s.overlap, s.catch_up, s.catch_up_max, s.enabled) == (
        "30 2 * * *", "Europe/Berlin", "queue", "all", 3, True,
    )  # fmt: skip
    # The start, typed in the schedule's zone (CEST in July): 22:00 UTC the day before.
    assert s.start_at is not None
    assert s.start_at.astimezone(UTC) == datetime(2030, 6, 30, 22, 0, tzinfo=UTC)
    assert dict(s.job) == {"command": "echo $1", "params": ["a b", "c"], "worker_class":
                           "default", "watchdog": 30.0, "priority": 5, "retries": 2}  # fmt: skip
    assert s.next_fire_at is not None and s.next_fire_at.astimezone(UTC) == datetime(
        2030, 7, 1, 0, 30, tzinfo=UTC
    )

    page = client.get(r.headers["location"]).text
    assert "Schedule nightly created." in page
    assert "2030-07-01 02:30:00 CEST (+02:00)" in page  # its next runs, in its zone
    assert "2030-07-01 00:30:00 UTC" in page
    assert "Nothing has fired yet." in page
    assert ">Run now<" in page and ">Pause<" in page and f"/schedules/{s.id}/edit" in page

    listing = client.get("/schedules").text
    row = listing.split('data-name="nightly"')[1].split("</tr>")[0]
    assert f'<a href="/schedules/{s.id}">nightly</a>' in row and "<code>30 2 * * *</code>" in row
    assert "Europe/Berlin" in row and "never ran" in row and "st-enabled" in row
    assert 'datetime="2030-07-01T00:30:00.000Z"' in row  # the next run, UTC on hover
    assert 'title="2030-07-01 00:30:00 UTC"' in row


def test_the_preview_fragment(web: Web) -> None:
    client, _ = web.login()

    def preview(**params: str) -> str:
        r = client.get("/schedules/preview", params=params, headers={"HX-Request": "true"})
        assert r.status_code == 200 and "<html" not in r.text
        return r.text

    every_2s = preview(cron="*/2 * * * * *", timezone="UTC")
    times = re.findall(r"(\d\d:\d\d:\d\d) UTC \(\+00:00\)", every_2s)
    assert len(times) == 5 and "seconds" in every_2s
    seconds = [int(t[-2:]) for t in times]
    assert all(s % 2 == 0 for s in seconds)

    berlin = preview(cron="30 2 * * *", timezone="Europe/Berlin")
    assert len(re.findall("<li>", berlin)) == 5 and re.search(
        r"02:30:00 CES?T \(\+0[12]:00\)", berlin
    )

    assert "cron: " in preview(cron="61 * * * *") and "field-error" in preview(cron="61 * * * *")
    assert "needs 5 fields" in preview(cron="* * *")
    assert "unknown time zone &#39;Mars/Olympus&#39;" in preview(
        cron="@daily", timezone="Mars/Olympus"
    )
    assert "end_at: must be after start_at" in preview(
        cron="@daily", start_at="2030-01-02T00:00", end_at="2030-01-01T00:00"
    )
    assert "is not a date and time" in preview(cron="@daily", start_at="soon")
    assert "Type an expression" in preview(cron="  ")
    ended = preview(cron="@daily", end_at="2001-01-01T00:00")
    assert "No run ahead" in ended
    # Nobody signed in: the login form.
    assert web.browser().get("/schedules/preview", params={"cron": "@daily"}).status_code == 303


def test_bad_input_is_shown_next_to_its_field_and_nothing_is_saved(web: Web) -> None:
    client, csrf = web.login()
    cases = [
        ({"cron": "61 * * * *"}, "cron", "cron: "),
        ({"cron": "@fortnightly"}, "cron", "unknown alias"),
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
        ({"catch_up_max": "0"}, "catch_up_max", "catch_up_max: "),
        ({"start_at": "2030-01-02T00:00", "end_at": "2030-01-01T00:00"}, "end_at",
         "end_at: must be after start_at"),
        ({"start_at": "tomorrow"}, "start_at", "is not a date and time"),
        ({"name": ""}, "name", "name: "),
        ({"overlap": "sometimes"}, "overlap", "overlap: "),
        ({"command": "  "}, "command", "job.command: "),
        ({"kind": "script"}, "script", "job.script: choose a script"),
        ({"worker_class": "gpu"}, "worker_class", "gpu"),
        ({"watchdog": "-1"}, "watchdog", "job.watchdog: "),
        ({"retries": "many"}, "retries", "job.retries: "),
    ]  # fmt: skip
    for fields, field, message in cases:
        r = client.post("/schedules", data=_form(csrf, **fields))
        assert r.status_code == 422, (fields, r.status_code)
        error = re.search(rf'<span class="field-error" id="err-{field}">([^<]*)</span>', r.text)
        assert error and message in error.group(1).replace("&#39;", "'"), (fields, error)
        assert 'role="alert"' in r.text
        assert f'value="{fields.get("name", "nightly")}"' in r.text  # what was typed stays
    # Several errors at once: each next to its field.
    r = client.post("/schedules", data=_form(csrf, cron="x", catch_up_max="0", watchdog="-1"))
    assert r.status_code == 422
    assert all(f'id="err-{f}"' in r.text for f in ("cron", "catch_up_max", "watchdog"))
    assert _count(web) == 0

    _make(web, "nightly")
    r = client.post("/schedules", data=_form(csrf, name="nightly"))
    assert r.status_code == 409 and 'id="err-name"' in r.text and "exists already" in r.text
    assert _count(web) == 1


def test_editing_keeps_what_the_form_does_not_show(web: Web) -> None:
    schedule_id = _make(
        web, "reports", "*/15 * * * *", timezone="Europe/Berlin",
        job={"command": "report", "env": {"TOKEN": "s3cret"}, "labels": {"team": "ops"}},
        start_at="2030-01-01T00:00:00+01:00",
    )  # fmt: skip
    client, csrf = web.login()
    edit = client.get(f"/schedules/{schedule_id}/edit").text
    assert 'value="*/15 * * * *"' in edit and 'value="2030-01-01T00:00"' in edit
    assert "kept as they are" in edit and "env, labels" in edit and "s3cret" not in edit

    bad = client.post(f"/schedules/{schedule_id}", data=_form(
        csrf, name="reports", cron="*/15 * * *", timezone="Europe/Berlin"))  # fmt: skip
    assert bad.status_code == 422 and 'id="err-cron"' in bad.text
    assert _get(web, schedule_id).cron == "*/15 * * * *"  # nothing half-saved

    r = client.post(f"/schedules/{schedule_id}", data=_form(
        csrf, name="reports-2", cron="0 6 * * 1-5", timezone="Europe/Berlin",
        command="report --daily", start_at="", enabled="", overlap="allow"))  # fmt: skip
    assert r.status_code == 303, r.text
    s = _get(web, schedule_id)
    assert (s.name, s.cron, s.overlap, s.enabled, s.start_at) == (
        "reports-2", "0 6 * * 1-5", "allow", False, None,
    )  # fmt: skip
    assert s.job["command"] == "report --daily"
    assert s.job["env"] == {"TOKEN": "s3cret"} and s.job["labels"] == {"team": "ops"}
    assert "Schedule reports-2 saved." in client.get(r.headers["location"]).text


def test_actions_history_the_jobs_link_and_the_dashboard(web: Web) -> None:
    schedule_id = _make(web, "hourly", "0 * * * *")
    client, csrf = web.login()
    back = {"csrf_token": csrf, "back": "/schedules"}

    r = client.post(f"/schedules/{schedule_id}/pause", data=back)
    assert r.status_code == 303 and r.headers["location"] == "/schedules"
    listing = client.get("/schedules").text
    assert "Schedule hourly paused." in listing and "st-paused" in listing and ">Resume<" in listing
    assert "Paused: nothing fires" in client.get(f"/schedules/{schedule_id}").text
    r = client.post(f"/schedules/{schedule_id}/resume", data={"csrf_token": csrf})
    assert r.headers["location"] == f"/schedules/{schedule_id}"
    assert "Schedule hourly resumed: fires next at" in client.get(r.headers["location"]).text

    # The leader fires the next occurrence: the history (and its fragment) shows it.
    s = _get(web, schedule_id)
    assert s.next_fire_at is not None
    due = s.next_fire_at
    firing.Firer(web.engine, clock=lambda: due + timedelta(milliseconds=1500)).tick()
    fragment = client.get(f"/schedules/{schedule_id}/history", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    [fired] = re.findall(r'<a href="/jobs/(\d+)">job \d+</a>', fragment.text)
    assert ">fired<" in fragment.text and ">1.5s<" in fragment.text  # and its lateness
    listing = client.get("/schedules").text
    assert f'<a href="/jobs/{fired}" class="job-link"' in listing and "st-waiting" in listing

    r = client.post(f"/schedules/{schedule_id}/run", data={"csrf_token": csrf})
    page = client.get(r.headers["location"]).text
    job_id = int(re.search(r"Job (\d+) submitted \(run now\)", page).group(1))  # type: ignore[union-attr]
    assert f'<a href="/jobs/{job_id}">job {job_id}</a>' in page and ">run now<" in page
    assert f'<a href="/jobs/{fired}">job {fired}</a>' in page
    job_page = client.get(f"/jobs/{job_id}").text
    assert f'<a href="/schedules/{schedule_id}" id="job-schedule">hourly</a>' in job_page

    # The overlap policy (skip): the next occurrence finds its jobs waiting, and says so.
    later = due + timedelta(hours=1)
    firing.Firer(web.engine, clock=lambda: later).tick()
    listing = client.get("/schedules").text
    row = listing.split('data-name="hourly"')[1].split("</tr>")[0]
    assert ">skipped<" in row and f"previous run {fired} still waiting" in row

    dashboard = client.get("/").text
    upcoming = dashboard.split('id="upcoming-runs"')[1]
    assert f'<a href="/schedules/{schedule_id}">hourly</a>' in upcoming

    r = client.post(f"/schedules/{schedule_id}/delete", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/schedules"
    assert "Schedule hourly deleted" in client.get("/schedules").text
    assert client.get(f"/schedules/{schedule_id}").status_code == 404
    job_page = client.get(f"/jobs/{fired}").text
    assert f"Fired by schedule {schedule_id} <span" in job_page and "(deleted)" in job_page


def test_run_now_refused_says_why(web: Web) -> None:
    sam_user = web.user("sam", "submitter")
    sam, sam_csrf = web.login("sam", PASSWORD)
    r = sam.post("/schedules", data=_form(sam_csrf, name="sams"))
    assert r.status_code == 303
    schedule_id = _get(web, "sams").id
    admin, admin_csrf = web.login()
    _api(web, "PATCH", f"/api/v1/users/{sam_user.id}", json={"disabled": True})
    # The admin runs it: as its owner, who may not submit any more.
    r = admin.post(f"/schedules/{schedule_id}/run", data={"csrf_token": admin_csrf})
    assert r.status_code == 303
    page = admin.get(r.headers["location"]).text
    assert "Not run: " in page and "disabled" in page


def test_the_history_pages(web: Web) -> None:
    schedule_id = _make(web, "minutely", "* * * * *")
    start = datetime(2030, 1, 1, tzinfo=UTC)
    with db.write(web.engine) as conn:
        for i in range(55):
            at = start + timedelta(minutes=i)
            schedules.record(
                conn, schedule_id, at, at, reason="test", code=schedules.Reason.OVERLAP
            )
    client, _ = web.login()
    page = client.get(f"/schedules/{schedule_id}").text
    assert len(re.findall(r'<tr data-id="\d+" class="occ-skipped">', page)) == 50
    assert f'hx-get="/schedules/{schedule_id}/history"' in page  # the first page refreshes
    older = re.search(r'href="(/schedules/\d+\?before=\d+)#history">Older', page)
    assert older
    rest = client.get(older.group(1)).text
    assert len(re.findall(r'<tr data-id="\d+" class="occ-skipped">', rest)) == 5
    assert (
        ">Newest<" in rest
        and ">Older<" not in rest
        and "hx-get" not in rest.split('id="history"')[1]
    )
    assert client.get(f"/schedules/{schedule_id}?before=0").status_code == 422


def _nav(client: TestClient) -> str:
    return client.get("/").text.split("</nav>")[0]


def test_what_each_role_sees_and_may_do(web: Web) -> None:
    admins = _make(web, "admins", "0 * * * *")
    for role in ("viewer", "submitter", "operator"):
        web.user(f"{role}-1", role)

    viewer, csrf = web.login("viewer-1", PASSWORD)
    assert 'href="/schedules"' in _nav(viewer)
    listing = viewer.get("/schedules").text
    assert 'data-name="admins"' in listing
    for absent in ("New schedule", ">Run now<", ">Pause<", ">Delete<", "/edit"):
        assert absent not in listing, absent
    page = viewer.get(f"/schedules/{admins}").text
    assert ">Run now<" not in page and "echo hi" in page
    assert viewer.get("/schedules/new").status_code == 403
    assert viewer.get(f"/schedules/{admins}/edit").status_code == 403
    for path in ("/schedules", f"/schedules/{admins}", f"/schedules/{admins}/pause",
                 f"/schedules/{admins}/resume", f"/schedules/{admins}/run",
                 f"/schedules/{admins}/delete"):  # fmt: skip
        r = viewer.post(path, data=_form(csrf, name="v"))
        assert r.status_code == 403, (path, r.status_code)
    assert viewer.get("/schedules/preview", params={"cron": "@daily"}).status_code == 200

    sub, sub_csrf = web.login("submitter-1", PASSWORD)
    assert 'href="/schedules"' in _nav(sub)
    assert 'data-name="admins"' not in sub.get("/schedules").text  # others' are not there
    assert sub.get(f"/schedules/{admins}").status_code == 404
    assert sub.post(f"/schedules/{admins}/pause", data={"csrf_token": sub_csrf}).status_code == 404
    r = sub.post("/schedules", data=_form(sub_csrf, name="mine"))
    assert r.status_code == 303
    mine = sub.get("/schedules").text
    assert 'data-name="mine"' in mine and ">Run now<" in mine

    op, op_csrf = web.login("operator-1", PASSWORD)
    listing = op.get("/schedules").text
    assert 'data-name="admins"' in listing and 'data-name="mine"' in listing
    assert listing.count(">Pause<") == 2
    r = op.post(f"/schedules/{admins}/pause", data={"csrf_token": op_csrf})
    assert r.status_code == 303 and not _get(web, admins).enabled
    # An env value of another's schedule is not shown to an operator.
    job = {"command": "x", "env": {"K": "v4lue"}}
    _api(web, "PATCH", f"/api/v1/schedules/{admins}", json={"job": job})
    assert "v4lue" not in op.get(f"/schedules/{admins}").text
    admin, _ = web.login()
    assert "v4lue" in admin.get(f"/schedules/{admins}").text


def test_a_form_without_its_csrf_token_is_refused(web: Web) -> None:
    schedule_id = _make(web)
    client, csrf = web.login()
    data = _form(csrf, name="forged")
    del data["csrf_token"]
    assert client.post("/schedules", data=data).status_code == 403
    assert client.post(f"/schedules/{schedule_id}/delete", data={}).status_code == 403
    wrong = {"csrf_token": "x" * len(csrf)}
    assert client.post(f"/schedules/{schedule_id}/run", data=wrong).status_code == 403
    assert _count(web) == 1
    with db.read(web.engine) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs.J)).scalar() == 0


def test_the_form_sets_a_delay_and_a_retry_delay_and_keeps_params_by_name(web: Web) -> None:
    with db.write(web.engine) as conn:
        scripts.create(conn, "encode", "sh", 'echo "$@"\n', parameters=[
            {"name": "input", "type": "string", "required": True},
            {"name": "crf", "type": "int", "default": 23},
        ])  # fmt: skip
    client, csrf = web.login()
    new = client.get("/schedules/new").text
    assert 'name="delay"' in new and 'name="retry_delay"' in new
    bad = client.post("/schedules", data=_form(csrf, delay="soon", retry_delay="1 minute"))
    assert bad.status_code == 422 and 'id="err-delay"' in bad.text
    assert 'id="err-retry_delay"' in bad.text and _count(web) == 0
    r = client.post("/schedules", data=_form(csrf, delay="10m", retry_delay="30s", retries="2"))
    assert r.status_code == 303, r.text
    job = _get(web, "nightly").job
    assert (job["delay"], job["retry_delay"], job["retries"]) == (600, 30, 2)

    schedule_id = _make(web, "encoder", job={"script": "encode", "retry_backoff": 2,
                                             "params": {"input": "a.mp4", "crf": 20}})  # fmt: skip
    edit = client.get(f"/schedules/{schedule_id}/edit").text
    assert "input=a.mp4\ncrf=20</textarea>" in edit and 'name="params_named"' in edit
    assert "retry_backoff" in edit  # kept as it is
    fields = _form(csrf, name="encoder", cron="0 * * * *", kind="script", script="encode",
                   params="input=b.mp4\ncrf=21", params_named="1", retry_delay="2m")  # fmt: skip
    r = client.post(f"/schedules/{schedule_id}", data=fields)
    assert r.status_code == 303, r.text
    job = _get(web, schedule_id).job
    assert job["params"] == {"input": "b.mp4", "crf": "21"} and job["retry_backoff"] == 2
    assert job["retry_delay"] == 120 and "delay" not in job
    bad = client.post(f"/schedules/{schedule_id}", data={**fields, "params": "just-a-value"})
    assert bad.status_code == 422 and 'id="err-params"' in bad.text


def test_the_list_pages_by_name(web: Web) -> None:
    for i in range(LIST_PAGE + 2):
        _make(web, f"s{i:03d}")
    client, _ = web.login()
    first = client.get("/schedules").text
    assert len(re.findall(r'<tr data-name="s\d+"', first)) == LIST_PAGE
    more = re.search(r'href="(/schedules\?after=s\d+)" rel="next"', first)
    assert more and more.group(1).endswith(f"s{LIST_PAGE - 1:03d}")
    rest = client.get(more.group(1)).text
    names = re.findall(r'<tr data-name="(s\d+)"', rest)
    assert names == [f"s{LIST_PAGE:03d}", f"s{LIST_PAGE + 1:03d}"]
    assert 'rel="next"' not in rest and ">First page<" in rest

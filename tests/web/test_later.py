"""The web UI and jobs that start later: the Run form's "start in or at" and retry delay,
a delayed job's page and row ("starts at …"), a retry that waits ("attempt 2 of 4, next
try at …"), and the form's bad input."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from jobbalancer import db, jobs
from tests.web.conftest import Web


def _job(web: Web, job_id: int) -> jobs.Job:
    with db.read(web.engine) as conn:
        return jobs.get(conn, job_id)


def test_the_form_submits_a_job_that_starts_later(web: Web) -> None:
    client, csrf = web.login()
    form = {"csrf_token": csrf, "kind": "command", "command": "echo later", "start": "10m",
            "retries": "2", "retry_delay": "30s"}  # fmt: skip
    r = client.post("/jobs", data=form)
    assert r.status_code == 303, r.text
    job_id = int(r.headers["location"].rsplit("/", 1)[1])
    job = _job(web, job_id)
    assert job.state == jobs.State.DELAYED and job.not_before is not None
    assert job.retry_delay == 30.0 and job.retries == 2
    page = client.get(f"/jobs/{job_id}").text
    assert 'id="job-state">delayed' in page
    starts = re.search(r'<p class="hint" id="job-starts">(.*?)</p>', page, re.S)
    assert starts and starts.group(1).startswith("Starts at <time")
    assert 'id="retry-policy">wait 30' in page
    table = client.get("/jobs/table", params={"state": "delayed"}).text
    assert re.findall(r'<tr data-id="(\d+)"', table) == [str(job_id)]
    assert 'class="badge st-delayed"' in table and "starts at</span>" in table
    assert '<option value="delayed"' in client.get("/jobs").text


def test_the_form_takes_a_time_with_an_offset(web: Web) -> None:
    client, csrf = web.login()
    plus_one = timezone(timedelta(hours=1))
    at = (datetime.now(plus_one) + timedelta(days=30)).replace(microsecond=0)
    form = {"csrf_token": csrf, "kind": "command", "command": "echo at",
            "start": at.isoformat()}  # fmt: skip
    r = client.post("/jobs", data=form)
    assert r.status_code == 303, r.text
    job = _job(web, int(r.headers["location"].rsplit("/", 1)[1]))
    assert job.not_before == at and job.not_before.utcoffset() == timedelta(0)


def test_bad_start_and_retry_delay_on_the_form(web: Web) -> None:
    client, csrf = web.login()
    base = {"csrf_token": csrf, "kind": "command", "command": "true"}
    for fields, message in (
        ({"start": "tomorrow"}, "not_before:"),
        ({"start": "2026-12-24T18:00"}, "time zone offset"),
        ({"start": "400d"}, "delay:"),
        ({"start": "5m", "need_realtime": "on"}, "need_realtime"),
        ({"retry_delay": "soon"}, "retry delay: give a number"),
    ):
        r = client.post("/jobs", data={**base, **fields})
        assert r.status_code == 422, (fields, r.status_code)
        assert message in r.text.replace("&#39;", "'"), (fields, r.text[:2000])
    with db.read(web.engine) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs.J)).scalar() == 0


def test_a_retry_that_waits_says_which_attempt_and_when(web: Web) -> None:
    client, _ = web.login()
    spec = jobs.Spec(
        worker_class_id=1, command="false", retries=3, retry=jobs.RetryPolicy(delay=60.0)
    )
    with db.write(web.engine) as conn:
        (first,) = jobs.create(conn, [spec], None, None)
        worker = conn.execute(sa.select(sa.func.count()).select_from(db.schema.workers)).scalar()
        assert worker == 0
        conn.execute(
            sa.update(jobs.J).where(jobs.J.c.id == first).values(state="running", token="t")
        )
        assert jobs.finish(conn, first, "t", jobs.State.FAILED, exit_code=1)
        retry = conn.execute(sa.select(jobs.J.c.id).where(jobs.J.c.retry_of == first)).scalar()
    page = client.get(f"/jobs/{retry}").text
    starts = re.search(r'<p class="hint" id="job-starts">(.*?)</p>', page, re.S)
    assert starts and starts.group(1).startswith("Attempt 2 of 4, next try at <time")


def test_the_dashboard_counts_delayed_jobs(web: Web) -> None:
    client, _ = web.login()
    assert 'id="tile-delayed"' not in client.get("/").text
    spec = jobs.Spec(worker_class_id=1, command="true", delay=600.0)
    with db.write(web.engine) as conn:
        jobs.create(conn, [spec, spec], None, None)
    assert '<span id="tile-delayed">2 delayed</span>' in client.get("/").text

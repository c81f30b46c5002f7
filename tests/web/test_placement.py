"""Placement on the web pages: a waiting job's reason (job page, hover in the list,
counts on the dashboard), its requests, and each worker's capacity and use as bars with
its labels."""

from __future__ import annotations

import html

from jobbalancer import balancer, db, jobs
from jobbalancer import registry as workers
from tests.web.conftest import Web

GIB = 1 << 30


def _setup(web: Web) -> tuple[int, int, int]:
    """A render worker (4 cpus, 8 GiB, label ffmpeg=6) running a 3-cpu 6 GiB job, and a
    job that needs 4 GiB waiting: (worker id, running job id, waiting job id)."""
    with db.write(web.engine) as conn:
        worker_id, _ = workers.register(
            conn, name="render-2", host="render-2.example", worker_class="default",
            max_jobs=4, pid=4242, version="1", stats=workers.Stats(),
            capacity=workers.Capacity(cpus=4, memory=8 * GIB, gpus=0, labels={"ffmpeg": "6"}),
        )  # fmt: skip
        spec = jobs.Spec(worker_class_id=1, command="render", cpus=3, memory=6 * GIB)
        running, waiting = balancer.submit(
            conn, [spec, jobs.Spec(worker_class_id=1, command="big", memory=4 * GIB)], None, None
        )
    return worker_id, running, waiting


def test_a_waiting_job_says_why_on_its_page_in_the_list_and_on_the_dashboard(web: Web) -> None:
    _, running, waiting = _setup(web)
    client, _ = web.login()
    reason = "needs 4 GiB memory; the most free is 2 GiB on render-2"
    page = client.get(f"/jobs/{waiting}").text
    assert f'<dd id="pending-reason">{html.escape(reason)}</dd>' in page
    assert "4.0 GiB memory" in page  # its requests
    assert html.escape(reason) in client.get(f"/jobs/{waiting}/run").text  # refreshed part
    listing = client.get("/jobs?state=waiting").text
    assert f'title="{html.escape(reason)}"' in listing
    dashboard = client.get("/dashboard/live").text
    assert "job waits for memory in class default" in dashboard
    assert 'id="pending-reason"' not in client.get(f"/jobs/{running}").text


def test_a_job_page_says_why_it_waits_now_even_when_the_stored_reason_is_old(
    web: Web,
) -> None:
    import sqlalchemy as sa

    _, _, waiting = _setup(web)
    with db.write(web.engine) as conn:  # what a pass wrote long ago, before render-2 came
        conn.execute(sa.update(jobs.J).values(pending_reason="no online worker of class default"))
    client, _ = web.login()
    now = html.escape("needs 4 GiB memory; the most free is 2 GiB on render-2")
    assert f'<dd id="pending-reason">{now}</dd>' in client.get(f"/jobs/{waiting}").text
    assert now in client.get(f"/jobs/{waiting}/run").text


def test_the_workers_page_shows_capacity_and_use_as_bars_and_labels(web: Web) -> None:
    _setup(web)
    client, _ = web.login()
    page = client.get("/workers").text
    assert '<meter class="m-cpus" min="0" max="4.0" value="3.0">' in page
    assert f'<meter class="m-memory" min="0" max="{8 * GIB}" value="{6 * GIB}">' in page
    assert "6.0 GiB / 8.0 GiB" in page
    assert '<span class="tag">ffmpeg=6</span>' in page


def test_the_run_form_takes_requests_and_constraints(web: Web) -> None:
    client, csrf = web.login()
    base = {"csrf_token": csrf, "kind": "command", "command": "true", "worker_class": "default"}
    form = {**base, "cpus": "1.5", "memory": "512M", "gpus": "1",
            "constraints": "ffmpeg=6, os!=windows\r\nssd"}  # fmt: skip
    r = client.post("/jobs", data=form)
    assert r.status_code == 303, r.text
    job_id = int(r.headers["location"].rsplit("/", 1)[1])
    with db.read(web.engine) as conn:
        job = jobs.get(conn, job_id)
    assert (job.cpus, job.memory, job.gpus) == (1.5, 512 << 20, 1)
    assert job.constraints == {"ffmpeg": "6", "os": "!windows", "ssd": True}
    for fields, message in (
        ({"memory": "12X"}, "memory: "),
        ({"cpus": "-1"}, "cpus: "),
        ({"constraints": "bad label"}, "constraints: label name"),
    ):
        r = client.post("/jobs", data={**base, **fields})
        assert r.status_code == 422, (fields, r.status_code)
        assert message in html.unescape(r.text), (fields, r.text[:2000])

"""The workers pages over HTTP: the list with each worker's figures, editing class and max
jobs, disabling and enabling, removing an offline worker, and what a viewer sees."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from jobbalancer import classes, db
from jobbalancer import registry as workers
from jobbalancer.db import schema
from tests.web.conftest import Web

GIB = 1024**3


def _register(web: Web, name: str = "w1", **stats: float) -> int:
    with db.write(web.engine) as conn:
        worker_id, _ = workers.register(
            conn,
            name=name,
            host=f"{name}.example",
            worker_class="default",
            max_jobs=None,
            pid=4242,
            version="9.8.7",
            stats=workers.Stats(
                load=stats.get("load", 0.5),
                cpu_count=4,
                memory_total=8 * GIB,
                memory_available=6 * GIB,
            ),
        )
    return worker_id


def _worker(web: Web, worker_id: int) -> workers.Worker:
    with db.read(web.engine) as conn:
        return workers.get(conn, worker_id)


def test_the_list_shows_every_figure_and_refreshes(web: Web) -> None:
    client, _ = web.login()
    worker_id = _register(web, load=1.25)
    page = client.get("/workers")
    assert page.status_code == 200
    for text in ("w1.example", "pid 4242", 'class="badge st-online"', "default", "1.25",
                 "/ 4 CPU", "2.0 GiB / 8.0 GiB", "0 / 5", "(class)", "9.8.7",
                 "just now"):  # fmt: skip
        assert text in page.text, text
    assert 'hx-get="/workers/table" hx-trigger="every 3s"' in page.text
    table = client.get("/workers/table")
    assert table.status_code == 200 and f'<tr data-id="{worker_id}">' in table.text
    assert "<nav" not in table.text  # a partial, not a page
    page = client.get(f"/workers/{worker_id}")
    assert page.status_code == 200 and f'hx-get="/workers/{worker_id}/machine"' in page.text
    machine = client.get(f"/workers/{worker_id}/machine")
    assert machine.status_code == 200 and "<nav" not in machine.text
    assert "1.25" in machine.text and "0 running of 5 slots" in machine.text
    assert client.get("/workers/999999").status_code == 404


def test_edit_class_and_max_jobs(web: Web) -> None:
    client, csrf = web.login()
    worker_id = _register(web)
    with db.write(web.engine) as conn:
        classes.create(conn, "gpu", 2)
    r = client.post(
        f"/workers/{worker_id}/edit",
        data={"csrf_token": csrf, "worker_class": "gpu", "max_jobs": "7"},
    )
    assert r.status_code == 303 and r.headers["location"] == f"/workers/{worker_id}"
    w = _worker(web, worker_id)
    assert (w.worker_class, w.own_max_jobs, w.max_jobs) == ("gpu", 7, 7)
    assert "Worker w1 saved." in client.get(r.headers["location"]).text

    # An empty max jobs goes back to the class's
    client.post(f"/workers/{worker_id}/edit", data={"csrf_token": csrf, "worker_class": "gpu"})
    w = _worker(web, worker_id)
    assert (w.own_max_jobs, w.max_jobs) == (None, 2)

    # The API's validation, as a message on the page; nothing changes
    for fields, message in (
        ({"worker_class": "gpu", "max_jobs": "0"}, "max_jobs: input should be greater than"),
        ({"worker_class": "gpu", "max_jobs": "many"}, "max_jobs: input should be a valid"),
        ({"worker_class": "nope", "max_jobs": "3"}, "worker class 'nope' does not exist"),
    ):
        bad = client.post(f"/workers/{worker_id}/edit", data={"csrf_token": csrf, **fields})
        assert bad.status_code == 422, fields
        assert message in bad.text.replace("&#39;", "'"), (fields, bad.text[:3000])
        assert 'role="alert"' in bad.text
    assert _worker(web, worker_id).worker_class == "gpu"


def test_disable_enable_and_remove(web: Web) -> None:
    client, csrf = web.login()
    worker_id = _register(web)
    r = client.post(f"/workers/{worker_id}/disable", data={"csrf_token": csrf, "back": "list"})
    assert r.status_code == 303 and r.headers["location"] == "/workers"
    assert not _worker(web, worker_id).enabled
    listing = client.get("/workers").text
    assert "Worker w1 disabled" in listing and 'class="badge st-disabled"' in listing
    assert f'action="/workers/{worker_id}/enable"' in listing

    r = client.post(f"/workers/{worker_id}/enable", data={"csrf_token": csrf})
    assert r.headers["location"] == f"/workers/{worker_id}" and _worker(web, worker_id).enabled

    # A live worker cannot be removed: the page says why
    refused = client.post(f"/workers/{worker_id}/remove", data={"csrf_token": csrf})
    assert refused.status_code == 409
    assert "only offline workers can be removed" in refused.text
    assert f'action="/workers/{worker_id}/remove"' not in client.get("/workers").text

    W = schema.workers
    with db.write(web.engine) as conn:
        conn.execute(sa.update(W).where(W.c.id == worker_id).values(state="offline"))
    assert f'action="/workers/{worker_id}/remove"' in client.get("/workers").text
    r = client.post(f"/workers/{worker_id}/remove", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/workers"
    assert "Worker w1 removed." in client.get("/workers").text
    with db.read(web.engine) as conn:
        assert workers.list_all(conn) == []


@pytest.mark.parametrize("role", ["viewer", "submitter"])
def test_a_viewer_sees_no_buttons_and_is_refused(web: Web, role: str) -> None:
    worker_id = _register(web)
    web.user("vera", role)
    client, csrf = web.login("vera", "correct horse battery")
    for path in ("/workers", f"/workers/{worker_id}"):
        page = client.get(path).text.split("<main", 1)[1]  # past the nav's Logout
        assert not re.search(r"<button|<form method=\"post\" action=\"/workers", page), path
    for action in ("disable", "enable", "remove", "edit"):
        r = client.post(f"/workers/{worker_id}/{action}", data={"csrf_token": csrf})
        assert r.status_code == 403, action
        assert "does not allow" in r.text
    assert _worker(web, worker_id).enabled

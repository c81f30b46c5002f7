"""The worker classes page over HTTP: create, rename, change max jobs and the
description, delete, and deleting a class in use refused with the reason on the page."""

from __future__ import annotations

import pytest

from jobbalancer import classes, db
from jobbalancer import registry as workers
from tests.web.conftest import Web


def _class(web: Web, name: str) -> classes.WorkerClass | None:
    with db.read(web.engine) as conn:
        return next((c for c in classes.list_all(conn) if c.name == name), None)


def _flash(client: object, location: str) -> str:
    return client.get(location).text.replace("&#39;", "'")  # type: ignore[attr-defined]


def test_create_rename_set_max_jobs_delete(web: Web) -> None:
    client, csrf = web.login()
    r = client.post(
        "/classes",
        data={"csrf_token": csrf, "name": "gpu", "max_jobs": "3", "description": "CUDA boxes"},
    )
    assert r.status_code == 303 and r.headers["location"] == "/classes"
    gpu = _class(web, "gpu")
    assert gpu is not None and (gpu.max_jobs, gpu.description) == (3, "CUDA boxes")
    page = _flash(client, "/classes")
    assert "Worker class gpu created." in page and f'<tr data-id="{gpu.id}"' in page

    r = client.post(
        f"/classes/{gpu.id}/edit",
        data={"csrf_token": csrf, "name": "cuda", "max_jobs": "8", "description": ""},
    )
    assert r.status_code == 303
    assert "Worker class cuda (was gpu) saved." in _flash(client, "/classes")
    cuda = _class(web, "cuda")
    assert cuda is not None and (cuda.id, cuda.max_jobs, cuda.description) == (gpu.id, 8, "")

    r = client.post(f"/classes/{gpu.id}/delete", data={"csrf_token": csrf})
    assert r.status_code == 303 and _class(web, "cuda") is None
    assert "Worker class cuda deleted." in _flash(client, "/classes")


def test_errors_show_as_messages(web: Web) -> None:
    client, csrf = web.login()
    default = _class(web, "default")
    assert default is not None
    bad = client.post("/classes", data={"csrf_token": csrf, "name": "default", "max_jobs": "2"})
    assert bad.status_code == 409 and "worker class &#39;default&#39; already exists" in bad.text
    assert 'value="2"' in bad.text  # the form keeps what was typed
    bad = client.post("/classes", data={"csrf_token": csrf, "name": "x", "max_jobs": "0"})
    assert bad.status_code == 422 and "max_jobs: input should be greater than" in bad.text

    # Renaming default, or a bad max jobs: back to the list with the reason
    for fields, message in (
        ({"name": "main", "max_jobs": "5"}, "the class 'default' cannot be renamed"),
        ({"max_jobs": "100000"}, "max_jobs: input should be less than or equal to 10000"),
    ):
        r = client.post(f"/classes/{default.id}/edit", data={"csrf_token": csrf, **fields})
        assert r.status_code == 303, fields
        assert message in _flash(client, "/classes"), fields
    assert _class(web, "default") == default
    r = client.post(f"/classes/{default.id}/delete", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert "Not deleted: the class 'default' cannot be deleted." in _flash(client, "/classes")


def test_deleting_a_class_in_use_is_refused_with_the_reason(web: Web) -> None:
    client, csrf = web.login()
    with db.write(web.engine) as conn:
        gpu = classes.create(conn, "gpu", 2)
        workers.register(
            conn, name="g1", host="h", worker_class="gpu", max_jobs=None, pid=1,
            version="1", stats=workers.Stats(),
        )  # fmt: skip
    page = client.get("/classes").text
    assert f'action="/classes/{gpu.id}/delete"' in page
    r = client.post(f"/classes/{gpu.id}/delete", data={"csrf_token": csrf})
    assert r.status_code == 303
    shown = _flash(client, "/classes")
    assert "Not deleted: worker class 'gpu' has 1 worker(s)" in shown and 'role="alert"' in shown
    assert _class(web, "gpu") is not None


@pytest.mark.parametrize("role", ["viewer", "submitter"])
def test_a_viewer_sees_no_forms_and_is_refused(web: Web, role: str) -> None:
    web.user("vera", role)
    client, csrf = web.login("vera", "correct horse battery")
    page = client.get("/classes").text.split("<main", 1)[1]
    assert "<button" not in page and "<input" not in page and "default" in page
    default = _class(web, "default")
    assert default is not None
    assert client.post("/classes", data={"csrf_token": csrf, "name": "x"}).status_code == 403
    for action in ("edit", "delete"):
        r = client.post(f"/classes/{default.id}/{action}", data={"csrf_token": csrf})
        assert r.status_code == 403 and "does not allow" in r.text

"""The scripts pages over HTTP: the list, the editor (create, save, rename, delete, the
interpreter picker), running a script with parameters from the page, and roles."""

from __future__ import annotations

import re

from jobbalancer import auth, db, jobs, scripts
from tests.web.conftest import Web

BODY = "import sys\nprint(sys.argv[1:])\n"


def _script(web: Web, name: str) -> scripts.Script | None:
    with db.read(web.engine) as conn:
        return next((s for s in scripts.list_all(conn) if s.name == name), None)


def _form(csrf: str, **fields: str) -> dict[str, str]:
    base = {"csrf_token": csrf, "name": "greet", "interpreter_choice": "python3",
            "interpreter_path": "", "content": BODY, "description": "says hi"}  # fmt: skip
    return {**base, **fields}


def test_create_save_rename_delete(web: Web) -> None:
    client, csrf = web.login()
    editor = client.get("/scripts/new")
    assert editor.status_code == 200 and "/static/vendor/codemirror/codemirror.js" in editor.text
    assert 'class="js-code-editor' in editor.text

    r = client.post("/scripts", data=_form(csrf, content=BODY.replace("\n", "\r\n")))
    assert r.status_code == 303
    created = _script(web, "greet")
    assert created is not None and r.headers["location"] == f"/scripts/{created.id}"
    # CRLF from the browser's textarea is stored as LF
    assert (created.interpreter, created.content, created.description) == (
        "python3", BODY, "says hi",
    )  # fmt: skip
    page = client.get(r.headers["location"]).text
    assert "Script greet saved." in page and '<option value="python3" selected>' in page

    # Rename, a custom interpreter path
    r = client.post(
        f"/scripts/{created.id}",
        data=_form(csrf, name="hello", interpreter_choice="custom",
                   interpreter_path="/usr/bin/python3"),
    )  # fmt: skip
    assert r.status_code == 303
    assert "Script hello saved (renamed from greet)." in client.get(r.headers["location"]).text
    saved = _script(web, "hello")
    assert saved is not None and saved.id == created.id
    assert saved.interpreter == "/usr/bin/python3" and _script(web, "greet") is None
    page = client.get(f"/scripts/{created.id}").text
    assert '<option value="custom" selected>' in page and 'value="/usr/bin/python3"' in page

    # The script's own #! line
    r = client.post(
        f"/scripts/{created.id}",
        data=_form(csrf, name="hello", interpreter_choice="shebang", content="#!/bin/sh\necho\n"),
    )
    saved = _script(web, "hello")
    assert r.status_code == 303 and saved is not None and saved.interpreter is None

    listing = client.get("/scripts").text
    assert f'<a href="/scripts/{created.id}">hello</a>' in listing and "#! line" in listing

    r = client.post(f"/scripts/{created.id}/delete", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/scripts"
    assert "Script hello deleted" in client.get("/scripts").text
    assert client.get(f"/scripts/{created.id}").status_code == 404


def test_the_editor_shows_the_apis_errors_and_keeps_the_text(web: Web) -> None:
    client, csrf = web.login()
    client.post("/scripts", data=_form(csrf))
    for fields, message in (
        ({"name": "greet"}, "script 'greet' already exists"),
        ({"name": "other", "interpreter_choice": "shebang"}, "interpreter is required unless"),
        ({"name": "other", "interpreter_choice": "custom", "interpreter_path": "php -n"},
         "interpreter must be a program name"),
        ({"name": "other", "content": "  "}, "content must not be empty"),
        ({"name": ""}, "name: "),
    ):  # fmt: skip
        r = client.post("/scripts", data=_form(csrf, **fields))
        assert r.status_code in (409, 422), fields
        text = r.text.replace("&#39;", "'")
        assert message in text and 'role="alert"' in text, (fields, text[:3000])
        if fields.get("content") is None:
            assert "print(sys.argv[1:])" in text  # what was typed is not lost
    assert _script(web, "other") is None


def test_run_with_params_from_the_page(web: Web) -> None:
    client, csrf = web.login()
    client.post("/scripts", data=_form(csrf))
    script = _script(web, "greet")
    assert script is not None
    r = client.post(
        f"/scripts/{script.id}/run",
        data={"csrf_token": csrf, "params": "one two\r\n\r\nthree", "worker_class": "default",
              "watchdog": "60"},
    )  # fmt: skip
    assert r.status_code == 303
    match = re.fullmatch(r"/jobs/(\d+)", r.headers["location"])
    assert match
    with db.read(web.engine) as conn:
        job = jobs.get(conn, int(match.group(1)))
    assert (job.script_name, job.interpreter, job.params, job.watchdog) == (
        "greet", "python3", ("one two", "three"), 60.0,
    )  # fmt: skip
    assert f"Job {job.id} submitted: script greet." in client.get(r.headers["location"]).text

    bad = client.post(
        f"/scripts/{script.id}/run",
        data={"csrf_token": csrf, "params": "", "worker_class": "nope"},
    )
    assert bad.status_code == 422 and "worker class &#39;nope&#39; does not exist" in bad.text


def test_roles(web: Web) -> None:
    admin, csrf = web.login()
    admin.post("/scripts", data=_form(csrf))
    script = _script(web, "greet")
    assert script is not None

    web.user("vera", "viewer")
    viewer, vcsrf = web.login("vera", "correct horse battery")
    for path in ("/scripts", f"/scripts/{script.id}"):
        page = viewer.get(path).text.split("<main", 1)[1]
        assert "<button" not in page and "New script" not in page, path
    assert "print(sys.argv[1:])" in viewer.get(f"/scripts/{script.id}").text
    assert viewer.get("/scripts/new").status_code == 403
    for path in ("/scripts", f"/scripts/{script.id}", f"/scripts/{script.id}/delete",
                 f"/scripts/{script.id}/run"):  # fmt: skip
        assert viewer.post(path, data=_form(vcsrf)).status_code == 403, path

    # A scripts-only submitter runs scripts but does not edit them
    with db.write(web.engine) as conn:
        auth.create_user(conn, "sam", "submitter", "correct horse battery", commands_allowed=False)
    submitter, scsrf = web.login("sam", "correct horse battery")
    page = submitter.get(f"/scripts/{script.id}").text.split("<main", 1)[1]
    assert re.findall(r"<button[^>]*>([^<]+)</button>", page) == ["Run"]
    assert submitter.post(f"/scripts/{script.id}", data=_form(scsrf)).status_code == 403
    r = submitter.post(f"/scripts/{script.id}/run", data={"csrf_token": scsrf, "params": "x"})
    assert r.status_code == 303 and r.headers["location"].startswith("/jobs/")

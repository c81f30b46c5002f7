"""Typed parameters on the scripts pages: the declaration edited as JSON (errors shown),
listed on the script's page, and the Run form generated from it, errors by their field."""

from __future__ import annotations

import json
import re

from jobbalancer import db, jobs, scripts, vault
from tests.web.conftest import PASSWORD, Web

DECLARED = [
    {"name": "input", "type": "string", "required": True, "regex": "[a-z]+\\.mp4",
     "help": "the file to encode"},
    {"name": "crf", "type": "int", "min": 0, "max": 51, "default": 23},
    {"name": "speed", "type": "float", "min": 0.5, "max": 4},
    {"name": "preset", "type": "choice", "values": ["fast", "slow"], "default": "slow"},
    {"name": "deinterlace", "type": "bool", "default": True},
    {"name": "token", "type": "secret"},
]  # fmt: skip


def _form(csrf: str, **fields: str) -> dict[str, str]:
    base = {"csrf_token": csrf, "name": "encode", "interpreter_choice": "sh",
            "interpreter_path": "", "content": "echo \"$@\"\n", "description": "",
            "parameters": json.dumps(DECLARED)}  # fmt: skip
    return {**base, **fields}


def _script(web: Web) -> scripts.Script:
    with db.read(web.engine) as conn:
        return scripts.lookup(conn, "encode")


def test_the_declaration_is_edited_as_json_and_listed(web: Web) -> None:
    client, csrf = web.login()
    r = client.post("/scripts", data=_form(csrf))
    assert r.status_code == 303, r.text
    script = _script(web)
    assert [p.name for p in script.parameters] == [p["name"] for p in DECLARED]
    listing = client.get("/scripts").text
    assert '<code title="int">crf</code>' in listing
    assert '<code title="string: the file to encode">input</code>' in listing
    page = client.get(f"/scripts/{script.id}").text
    assert 'id="parameters"' in page and "the file to encode" in page and "0 to 51" in page
    assert "&#34;crf&#34;" in page or "&quot;crf&quot;" in page or '"crf"' in page  # the JSON

    # Bad JSON, or a declaration that breaks a rule: 422, the message shown, nothing saved.
    for text, words in (
        ('[{"name": "x",', "parameters: not valid JSON"),
        ('[{"name": "x", "type": "int", "max": 1, "default": 5}]', "parameters.0.default"),
        ('[{"name": "x", "regex": "(a"}]', "parameters.0.regex"),
    ):
        r = client.post(f"/scripts/{script.id}", data=_form(csrf, parameters=text))
        assert r.status_code == 422, text
        assert words in r.text, r.text
        shown = re.search(
            r'<span class="field-error" role="alert" data-field="parameters">([^<]+)', r.text
        )
        assert shown and words in shown.group(1), r.text
        assert text.replace('"', "&#34;")[:10] in r.text  # what was typed stays
    assert _script(web).parameters == script.parameters
    # Emptied: the script declares none, and runs with parameters one a line again.
    r = client.post(f"/scripts/{script.id}", data=_form(csrf, parameters=""))
    assert r.status_code == 303
    assert _script(web).parameters == ()
    assert 'name="params"' in client.get(f"/scripts/{script.id}").text


def test_the_run_form_is_generated_from_the_declaration(web: Web) -> None:
    client, csrf = web.login()
    client.post("/scripts", data=_form(csrf))
    script = _script(web)
    page = client.get(f"/scripts/{script.id}").text
    run = page[page.index('id="run"') :]
    assert 'name="params"' not in run
    text_input = r'<input type="text" name="param.input" value="" required pattern="[^"]+"'
    assert re.search(text_input, run)
    assert re.search(r'type="number" name="param.crf" value="23" step="1" min="0" max="51"', run)
    speed = r'type="number" name="param.speed" value="" step="any" min="0.5" max="4.0"'
    assert re.search(speed, run)
    assert re.search(r'<select name="param.preset">\s*<option value="fast">fast</option>'
                     r'<option value="slow" selected>slow</option>', run)  # fmt: skip
    assert re.search(r'type="checkbox" name="param.deinterlace" value="true" checked', run)
    # No secret the user may use yet: the secret's select says so.
    token = re.search(r'<select name="param.token">(.*?)</select>', run, re.S)
    assert token and "no secret you may use" in token.group(1), run
    assert "the file to encode" in run and 'class="required"' in run

    # Submitted: the values in declared order, an unticked box is false, defaults fill in.
    r = client.post(
        f"/scripts/{script.id}/run",
        data={"csrf_token": csrf, "param.input": "in.mp4", "param.crf": "30",
              "param.speed": "", "param.preset": "fast", "worker_class": "default"},
    )  # fmt: skip
    assert r.status_code == 303, r.text
    job_id = int(r.headers["location"].rsplit("/", 1)[1])
    with db.read(web.engine) as conn:
        assert jobs.get(conn, job_id).params == ("in.mp4", "30", "", "fast", "false", "")


def test_a_server_side_error_is_shown_next_to_its_field(web: Web) -> None:
    client, csrf = web.login()
    client.post("/scripts", data=_form(csrf))
    script = _script(web)
    r = client.post(
        f"/scripts/{script.id}/run",
        data={"csrf_token": csrf, "param.input": "in.mp4", "param.crf": "52",
              "param.deinterlace": "true", "worker_class": "default"},
    )  # fmt: skip
    assert r.status_code == 422
    error = re.search(r'name="param.crf" value="52"[^>]*aria-invalid="true">\s*'
                      r'(?:<span class="hint">[^<]*</span>\s*)?'
                      r'<span class="field-error" role="alert" data-param="crf">([^<]+)</span>',
                      r.text)  # fmt: skip
    assert error, r.text
    assert error.group(1) == "params.crf: must be ≤ 51"
    # What was typed stays, the box stays ticked.
    assert re.search(r'name="param.input" value="in.mp4"', r.text)
    assert re.search(r'name="param.deinterlace" value="true" checked', r.text)
    with db.read(web.engine) as conn:
        assert jobs.get_many(conn, [1]) == []


def test_a_secret_parameter_offers_the_secrets_the_user_may_use(web: Web) -> None:
    bob, carol = web.user("bob", "submitter"), web.user("carol", "submitter")
    key = vault.Key.parse(vault.new_key_text(), "test")
    with db.write(web.engine) as conn:
        vault.create(conn, key, "shared-db", "v1-value")  # anyone
        vault.create(conn, key, "bob-token", "v2-value", users=[bob.id])
        vault.create(conn, key, "carol-token", "v3-value", users=[carol.id])
    admin, csrf = web.login()
    admin.post("/scripts", data=_form(csrf))
    script = _script(web)

    client, csrf = web.login("bob", PASSWORD)
    page = client.get(f"/scripts/{script.id}").text
    run = page[page.index('id="run"') :]
    token = re.search(r'<select name="param.token">(.*?)</select>', run, re.S)
    assert token, run
    offered = re.findall(r'<option value="([^"]*)"', token.group(1))
    assert offered == ["", "bob-token", "shared-db"]  # not carol's; never a value
    assert "value" not in "".join(offered) and "v2-value" not in page

    r = client.post(
        f"/scripts/{script.id}/run",
        data={"csrf_token": csrf, "param.input": "in.mp4", "param.token": "bob-token",
              "worker_class": "default"},
    )  # fmt: skip
    assert r.status_code == 303, r.text
    job_id = int(r.headers["location"].rsplit("/", 1)[1])
    with db.read(web.engine) as conn:
        job = jobs.get(conn, job_id)
    assert job.params[5] == "bob-token" and job.secret_args == {5: "bob-token"}

    # One bob may not use (sent anyway): refused next to its field, by the parameter's name.
    r = client.post(
        f"/scripts/{script.id}/run",
        data={"csrf_token": csrf, "param.input": "in.mp4", "param.token": "carol-token",
              "worker_class": "default"},
    )  # fmt: skip
    assert r.status_code == 422
    error = re.search(r'class="field-error" role="alert" data-param="token">([^<]+)', r.text)
    assert error and "does not exist, or you may not use it" in error.group(1), r.text

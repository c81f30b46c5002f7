"""Typed script parameters over the API: declared with the script, checked at submit
(422 naming the parameter and the rule), passed as argv in declared order."""

from __future__ import annotations

from typing import Any

from apihelpers import Api

TRANSCODE: dict[str, Any] = {
    "name": "transcode",
    "interpreter": "sh",
    "content": 'echo "$1 at $2 ($3, $4)"\n',
    "parameters": [
        {"name": "input", "type": "string", "required": True, "regex": "[^/]+\\.mp4"},
        {"name": "crf", "type": "int", "min": 0, "max": 51, "default": 23},
        {"name": "preset", "type": "choice", "values": ["fast", "slow"], "default": "fast"},
        {"name": "deinterlace", "type": "bool", "help": "for old tapes"},
    ],
}


def _script(api: Api, body: dict[str, Any] = TRANSCODE) -> dict[str, Any]:
    r = api.admin.post("/api/v1/scripts", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_the_declaration_is_stored_shown_and_changed(api: Api) -> None:
    s = _script(api)
    assert [p["name"] for p in s["parameters"]] == ["input", "crf", "preset", "deinterlace"]
    assert s["parameters"][1] == {
        "name": "crf", "type": "int", "required": False, "default": 23, "min": 0, "max": 51
    }  # fmt: skip
    url = f"/api/v1/scripts/{s['id']}"
    assert api.admin.get(url).json()["parameters"] == s["parameters"]
    assert api.admin.get("/api/v1/scripts/transcode").json()["id"] == s["id"]  # by name
    # A change of something else keeps them; [] removes them.
    r = api.admin.patch(url, json={"description": "d"})
    assert r.json()["parameters"] == s["parameters"]
    r = api.admin.patch(url, json={"parameters": [{"name": "only", "type": "float"}]})
    assert r.status_code == 200
    assert r.json()["parameters"] == [{"name": "only", "type": "float", "required": False}]
    assert api.admin.patch(url, json={"parameters": []}).json()["parameters"] == []
    assert api.admin.patch(url, json={"parameters": None}).status_code == 422
    # A plain script shows none.
    plain = _script(api, {"name": "plain", "interpreter": "sh", "content": "echo"})
    assert plain["parameters"] == []


def test_a_bad_declaration_is_422_naming_the_key_and_nothing_is_saved(api: Api) -> None:
    for params, field in (
        ([{"name": "a"}, {"name": "a"}], "parameters.1.name"),
        ([{"name": "n", "type": "int", "max": 5, "default": 9}], "parameters.0.default"),
        ([{"name": "s", "regex": "(unclosed"}], "parameters.0.regex"),
        ([{"name": "c", "type": "choice"}], "parameters.0.values"),
        ([{"name": "c", "type": "colour"}], "parameters.0.type"),
        ([{"name": "c", "bogus": 1}], "parameters.0.bogus"),
    ):
        r = api.admin.post("/api/v1/scripts", json={**TRANSCODE, "parameters": params})
        assert r.status_code == 422, (params, r.text)
        assert r.json()["field"] == field, r.json()
    assert api.admin.get("/api/v1/scripts").json() == []
    s = _script(api)
    r = api.admin.patch(
        f"/api/v1/scripts/{s['id']}",
        json={"content": "echo changed", "parameters": [{"name": "x", "type": "int", "min": "a"}]},
    )
    assert r.status_code == 422
    assert api.admin.get(f"/api/v1/scripts/{s['id']}").json()["content"] == TRANSCODE["content"]


def test_params_by_name_reach_the_script_in_declared_order(api: Api) -> None:
    _script(api)
    r = api.admin.post(
        "/api/v1/jobs",
        json={"script": "transcode", "params": {"deinterlace": True, "input": "a.mp4"}},
    )
    assert r.status_code == 201, r.text
    assert r.json()["params"] == ["a.mp4", "23", "fast", "true"]
    r = api.admin.post(
        "/api/v1/jobs", json={"script": "transcode", "params": ["b.mp4", 30, "slow", "no"]}
    )
    assert r.status_code == 201, r.text
    assert r.json()["params"] == ["b.mp4", "30", "slow", "false"]


def test_a_bad_value_is_422_naming_the_parameter_and_the_rule(api: Api) -> None:
    _script(api)
    cases: list[tuple[Any, str, str]] = [
        ({"input": "a.mp4", "crf": 52}, "params.crf", "params.crf: must be ≤ 51"),
        ({"input": "a.mp4", "crf": "fast"}, "params.crf", "params.crf: must be an integer"),
        ({"crf": 20}, "params.input", "params.input: is required"),
        ({"input": "../a.mp4"}, "params.input", "params.input: must match"),
        ({"input": "a.mp4", "preset": "medium"}, "params.preset", "must be one of: fast, slow"),
        ({"input": "a.mp4", "speed": 2}, "params.speed", "unknown parameter"),
        (["a.mp4", "99"], "params.1", "params.1 (crf): must be ≤ 51"),
        (["a", "b", "c", "d", "e"], "params", "declares 4 parameters"),
        ({"input": {"nested": 1}}, "params.input", "must be a string, a number"),
    ]
    for params, field, message in cases:
        r = api.admin.post("/api/v1/jobs", json={"script": "transcode", "params": params})
        assert r.status_code == 422, (params, r.text)
        assert r.json()["field"] == field, r.json()
        assert message in r.json()["message"], r.json()
    # In a batch, the job's index comes first; nothing of the batch is made.
    r = api.admin.post(
        "/api/v1/jobs/batch",
        json={
            "jobs": [
                {"script": "transcode", "params": {"input": "a.mp4"}},
                {"script": "transcode", "params": {"input": "a.mp4", "crf": -1}},
            ]
        },
    )
    assert r.status_code == 422
    assert r.json()["field"] == "jobs.1.params.crf"
    assert r.json()["message"] == "jobs.1.params.crf: must be ≥ 0"
    assert api.admin.get("/api/v1/jobs").json()["items"] == []


def test_by_name_needs_a_declaration_and_plain_scripts_keep_their_params(api: Api) -> None:
    _script(api, {"name": "plain", "interpreter": "sh", "content": "echo"})
    r = api.admin.post("/api/v1/jobs", json={"script": "plain", "params": {"a": 1}})
    assert r.status_code == 422 and r.json()["field"] == "params"
    assert "declares no parameters" in r.json()["message"]
    r = api.admin.post("/api/v1/jobs", json={"command": "echo", "params": {"a": 1}})
    assert r.status_code == 422 and r.json()["field"] == "params"
    # As before: as many as given, as they are, nothing filled in.
    r = api.admin.post("/api/v1/jobs", json={"script": "plain", "params": ["x", 1, "", "y"]})
    assert r.status_code == 201 and r.json()["params"] == ["x", "1", "", "y"]


def test_a_secret_parameter_names_a_secret_the_submitter_may_use(api: Api) -> None:
    _script(
        api,
        {
            "name": "backup",
            "interpreter": "sh",
            "content": "echo",
            "parameters": [
                {"name": "host", "type": "string"},
                {"name": "password", "type": "secret", "required": True},
            ],
        },
    )
    # No such secret: refused, naming the parameter's place, nothing submitted.
    r = api.admin.post(
        "/api/v1/jobs", json={"script": "backup", "params": {"host": "h", "password": "db"}}
    )
    assert r.status_code == 422 and r.json()["field"] == "params.password", r.text
    assert r.json()["message"].startswith("params.password: secret 'db' does not exist")
    # By position: named by its place, as the other params errors are.
    r = api.admin.post("/api/v1/jobs", json={"script": "backup", "params": ["h", "db"]})
    assert r.status_code == 422 and r.json()["field"] == "params.1", r.text
    assert r.json()["message"].startswith("params.1 (password): secret 'db'")
    # In a batch: the job's index before it.
    batch = {"jobs": [{"script": "backup", "params": {"host": "h", "password": "db"}}]}
    r = api.admin.post("/api/v1/jobs/batch", json=batch)
    assert r.status_code == 422 and r.json()["field"] == "jobs.0.params.password", r.text
    assert api.admin.get("/api/v1/jobs").json()["items"] == []
    r = api.admin.post("/api/v1/secrets", json={"name": "db", "value": "s3cr3t-value"})
    assert r.status_code == 201, r.text
    r = api.admin.post(
        "/api/v1/jobs", json={"script": "backup", "params": {"host": "h", "password": "db"}}
    )
    assert r.status_code == 201, r.text
    job = r.json()
    # The record holds the secret's name where its value will be, and says which.
    assert job["params"] == ["h", "db"] and job["secret_args"] == {"1": "db"}
    assert "s3cr3t-value" not in r.text


def test_legacy_add_job_checks_a_declared_script(api: Api) -> None:
    s = _script(api)
    r = api.admin.post("/addJob", json={"scriptId": str(s["id"]), "params": ["a.mp4", "60"]})
    assert r.status_code == 422 and r.json()["result"] is False
    assert r.json()["field"] == "params.1"
    r = api.admin.post("/addJob", json={"scriptId": s["id"], "params": ["a.mp4"]})
    assert r.status_code == 200, r.text
    job = api.admin.get(f"/api/v1/jobs/{r.json()['jobId']}").json()
    assert job["params"] == ["a.mp4", "23", "fast", "false"]

"""A PATCH that sends null for a field that cannot be null is a 422 naming the field (left
out, a field stays; null would mean "erase", which these fields do not allow)."""

from __future__ import annotations

import pytest
from apihelpers import Api


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("worker", "worker_class"),
        ("worker", "enabled"),
        ("class", "name"),
        ("class", "max_jobs"),
        ("class", "description"),
        ("script", "name"),
        ("script", "content"),
        ("script", "description"),
        ("user", "name"),
        ("user", "role"),
        ("user", "commands_allowed"),
        ("user", "disabled"),
    ],
)
def test_null_is_refused_naming_the_field(api: Api, kind: str, field: str) -> None:
    admin = api.admin
    if kind == "worker":
        url = f"/api/v1/workers/{api.worker('node-1')}"
    elif kind == "class":
        created = admin.post("/api/v1/worker-classes", json={"name": "gpu"})
        url = f"/api/v1/worker-classes/{created.json()['id']}"
    elif kind == "script":
        created = admin.post("/api/v1/scripts", json={"name": "s", "content": "#!/bin/sh\n"})
        url = f"/api/v1/scripts/{created.json()['id']}"
    else:
        url = f"/api/v1/users/{api.user('someone')[0]}"
    before = admin.get(url).json()
    r = admin.patch(url, json={field: None})
    assert r.status_code == 422
    assert r.json()["field"] == field
    assert r.json()["message"] == f"{field}: must not be null"
    assert admin.get(url).json() == before

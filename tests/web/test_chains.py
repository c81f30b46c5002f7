"""A job's page shows its parents and children, and what a held job waits for; the job
list filters held and skipped jobs."""

from __future__ import annotations

import re

from tests.web.conftest import Web


def _batch(web: Web, jobs_: list[dict[str, object]]) -> list[int]:
    r = web.browser().post(
        "/api/v1/jobs/batch",
        json={"jobs": jobs_},
        headers={"Authorization": f"Bearer {web.admin_key}"},
    )
    assert r.status_code == 201, r.text
    return [int(j["id"]) for j in r.json()["jobs"]]


def test_the_job_page_shows_the_chain(web: Web) -> None:
    client, csrf = web.login()
    first, second, third = _batch(
        web,
        [
            {"command": "echo one"},
            {"command": "echo two", "after": [{"ref": 0}]},
            {"command": "echo three", "after": [{"ref": 1, "on": "any"}]},
        ],
    )
    page = client.get(f"/jobs/{second}").text
    assert f"Held: it waits for job {first} to succeed." in page
    parents = re.search(r'<ul class="links" id="job-parents">(.*?)</ul>', page, re.S)
    children = re.search(r'<ul class="links" id="job-children">(.*?)</ul>', page, re.S)
    assert parents and children
    assert f'<a href="/jobs/{first}">job {first}</a>' in parents.group(1)
    assert 'class="badge st-waiting"' in parents.group(1)
    assert f'<a href="/jobs/{third}">job {third}</a>' in children.group(1)
    assert 'class="badge st-held"' in children.group(1)
    assert "on any" in children.group(1)

    # Killing the first job skips the second (it wanted success); the third runs.
    r = client.post(f"/jobs/{first}/kill", data={"csrf_token": csrf})
    assert r.status_code == 303
    page = client.get(f"/jobs/{second}").text
    assert 'id="job-state">skipped' in page and f"job {first} ended killed" in page
    assert "Held:" not in page

    listing = client.get("/jobs")
    for state in ("held", "skipped"):
        assert f'<option value="{state}"' in listing.text, state
    skipped = client.get("/jobs/table", params={"state": "skipped"}).text
    assert re.findall(r'<tr data-id="(\d+)"', skipped) == [str(second)]
    assert 'class="badge st-skipped"' in skipped
    page = client.get(f"/jobs/{third}").text
    assert "Held:" not in page and 'id="job-parents"' in page

"""A three-job pipeline on the job page, in a real browser: what a held job waits for,
its parents and children with their states, and links between them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import Cluster

Shot = Callable[[Page, str], Path]


def test_a_pipeline_on_the_job_page(
    admin_page: Page, cluster: Cluster, screenshot: Shot, tmp_path: Path
) -> None:
    # Given a pipeline of three jobs whose first waits for the test to say go
    go = tmp_path / "go"
    wait_for_go = f"for i in $(seq 600); do [ -e {go} ] && break; sleep 0.05; done"
    r = cluster.api.post(
        "/api/v1/jobs/batch",
        json={
            "jobs": [
                {"command": f"{wait_for_go}; echo fetched"},
                {"command": "echo built", "after": [{"ref": 0}]},
                {"command": "echo cleaned", "after": [{"ref": 1, "on": "any"}]},
            ]
        },
    )
    assert r.status_code == 201, r.text
    fetch, build, clean = (j["id"] for j in r.json()["jobs"])
    page = admin_page

    # The middle job's page says what it waits for, and links both ways
    page.goto(f"/jobs/{build}")
    expect(page.locator("#job-state")).to_have_text("held")
    expect(page.locator("#waiting-for")).to_have_text(f"Held: it waits for job {fetch} to succeed.")
    parents, children = page.locator("#job-parents li"), page.locator("#job-children li")
    expect(parents).to_have_count(1)
    expect(parents.first).to_contain_text(f"job {fetch}")
    expect(parents.first.locator(".badge")).to_have_text("running")
    expect(children.first).to_contain_text(f"job {clean}")
    expect(children.first).to_contain_text("on any")
    expect(children.first.locator(".badge")).to_have_text("held")
    screenshot(page, "job-chain-held")

    # When the first job ends well, the others run in turn
    go.touch()
    assert cluster.wait_job(clean)["state"] == "done"

    # Then the first job's page lists its child, done, and the link leads there
    page.goto(f"/jobs/{fetch}")
    expect(page.locator("#job-children li .badge")).to_have_text("done")
    page.click(f"#job-children a[href='/jobs/{build}']")
    expect(page).to_have_url(f"{cluster.url}/jobs/{build}")
    expect(page.locator("#job-state")).to_have_text("done")
    expect(page.locator("#waiting-for")).to_have_count(0)
    expect(page.locator("#job-parents li")).to_contain_text("met")
    expect(page.locator("#log")).to_contain_text("built")
    screenshot(page, "job-chain-done")

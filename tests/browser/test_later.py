"""A job that starts later, in a real browser: submitted from the form with "start in",
its page says when it starts, the list shows it delayed, and a kill ends it."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import Cluster

Shot = Callable[[Page, str], Path]


def test_a_job_that_starts_later_on_its_page(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    page.on("dialog", lambda dialog: dialog.accept())

    # Given the submit form, the admin asks for a job to start in an hour
    page.goto("/jobs")
    page.click("summary:has-text('Submit a job')")
    page.fill("textarea[name=command]", "echo later")
    page.fill("input[name=start]", "1h")
    page.fill("input[name=retries]", "2")
    page.fill("input[name=retry_delay]", "30s")
    screenshot(page, "jobs-submit-later")
    page.click("button:has-text('Submit job')")

    # Then its page says it is delayed and when it starts
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    job = cluster.job(job_id)
    assert job["state"] == "delayed" and job["retry_delay"] == 30
    expect(page.locator("#job-state")).to_have_text("delayed")
    starts = page.locator("#job-starts")
    expect(starts).to_contain_text("Starts at")
    at = datetime.fromisoformat(job["not_before"].replace("Z", "+00:00"))
    assert at - datetime.fromisoformat(job["created_at"].replace("Z", "+00:00")) > timedelta(
        minutes=59
    )
    expect(starts.locator("time")).to_have_attribute("datetime", job["not_before"])
    expect(page.locator("#retry-policy")).to_contain_text("wait 30")
    screenshot(page, "job-delayed")

    # The list shows it delayed, with its start
    page.goto("/jobs?state=delayed")
    row = page.locator(f"tr[data-id='{job_id}']")
    expect(row.locator(".badge")).to_have_text("delayed")
    expect(row).to_contain_text("starts at")

    # Killing it ends it before it ever ran
    page.goto(f"/jobs/{job_id}")
    page.click("button:has-text('Kill')")
    expect(page.locator("#job-state")).to_have_text("killed")
    expect(page.locator("#job-starts")).to_have_count(0)
    assert cluster.job(job_id)["started_at"] is None

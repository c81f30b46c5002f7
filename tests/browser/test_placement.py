"""Placement in a real browser: a job that cannot fit says why on its page and on hover in
the job list, the dashboard counts it, and the workers page shows each worker's requested
resources as bars with its labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import Cluster

Shot = Callable[[Page, str], Path]


def test_a_pending_reason_and_the_workers_bars(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    # Given a render worker with 2 cpus and 2 GiB, labelled ffmpeg=6, running a job that
    # holds 1.5 GiB of it
    cluster.start_worker(
        "render-2", "--allow-root", "--max-jobs", "4", "--cpus", "2", "--memory", "2G",
        "--label", "ffmpeg=6", "--label", "ssd",
    )  # fmt: skip
    hog = cluster.submit(command="sleep 60", memory="1536M", constraints={"ffmpeg": "6"})
    cluster.wait_for(lambda: cluster.job(hog["id"])["state"] == "running", "the hog runs")
    # When a job needs 1 GiB on a worker with ffmpeg 6
    job = cluster.submit(command="true", memory="1G", constraints={"ffmpeg": "6"})
    reason = "needs 1 GiB memory; the most free is 512 MiB on render-2"
    assert cluster.job(job["id"])["pending_reason"] == reason

    # Then its page says why it waits
    page.goto(f"/jobs/{job['id']}")
    expect(page.locator("#pending-reason")).to_have_text(reason)
    expect(page.locator("#job-requests")).to_contain_text("1.0 GiB memory")
    expect(page.locator("#job-requests")).to_contain_text("ffmpeg=6")
    screenshot(page, "job-pending-reason")
    # The job list shows it on hover over the state
    page.goto("/jobs?state=waiting")
    badge = page.locator(f"tr[data-id='{job['id']}'] .badge")
    expect(badge).to_have_attribute("title", reason)
    # The dashboard counts jobs by what they wait for
    page.goto("/")
    expect(page.locator("#wait-reasons")).to_contain_text("1 job waits for memory in class default")

    # And the workers page shows the requested memory as a bar, with the labels
    page.goto("/workers")
    row = page.locator("tr", has_text="render-2")
    memory = row.locator("meter.m-memory")
    expect(memory).to_have_attribute("max", str(2 << 30))
    expect(memory).to_have_attribute("value", str(1536 << 20))
    expect(row.locator(".tag", has_text="ffmpeg=6")).to_be_visible()
    expect(row.locator(".tag", has_text="ssd")).to_be_visible()
    screenshot(page, "workers-capacity")

    # When the hog is killed, the waiting job runs
    cluster.api.post(f"/api/v1/jobs/{hog['id']}/kill")
    assert cluster.wait_job(job["id"])["state"] == "done"

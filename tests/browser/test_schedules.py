"""Schedules in a real browser, on a real server (whose leader fires them) with a real
worker: create one from the form while its preview follows the cron field as it is
typed (and says what is wrong with a bad expression), then watch it fire and its jobs
appear in its history; the job links back to it; pause it."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import Cluster

Shot = Callable[[Page, str], Path]


def test_create_preview_fire_and_see_the_history(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    page.on("dialog", lambda dialog: dialog.accept())

    # Given the Schedules page from the nav, the admin opens the form
    page.goto("/")
    page.click("nav a:has-text('Schedules')")
    expect(page.locator("table.schedules")).to_contain_text("No schedules yet.")
    page.click("a:has-text('New schedule')")
    page.fill("input[name=name]", "every-2s")
    preview = page.locator("#cron-preview")
    expect(preview).to_contain_text("Type an expression")

    # When the cron field is typed, the preview follows it: an incomplete expression
    # says what is wrong, five fields fire each 2 minutes, six each 2 seconds
    cron = page.locator("#sched-cron")
    cron.press_sequentially("*/2 * * *", delay=20)
    expect(preview.locator(".preview-error")).to_contain_text("cron: needs 5 fields")
    cron.press_sequentially(" *", delay=20)
    expect(preview.locator("li")).to_have_count(5)
    expect(preview).not_to_contain_text("seconds")
    minutes = _times(preview)
    assert all((b - a).total_seconds() == 120 for a, b in itertools.pairwise(minutes))
    cron.press_sequentially(" *", delay=20)
    expect(preview).to_contain_text("the first of 6 fields is seconds")
    expect(preview.locator("li")).to_have_count(5)
    seconds = _times(preview)
    assert all((b - a).total_seconds() == 2 for a, b in itertools.pairwise(seconds))
    # A bad one, then back
    cron.press_sequentially("x", delay=20)
    expect(preview.locator(".preview-error")).to_be_visible()
    cron.press("Backspace")
    expect(preview.locator("li")).to_have_count(5)
    # An unknown zone is named; a real one shows its offset
    zone = page.locator("#sched-timezone")
    zone.fill("Mars/Olympus")
    expect(preview.locator(".preview-error")).to_contain_text("unknown time zone 'Mars/Olympus'")
    zone.fill("Europe/Berlin")
    expect(preview.locator("li").first).to_contain_text(re.compile(r"CES?T \(\+0[12]:00\)"))
    screenshot(page, "schedule-form-preview")

    page.fill("textarea[name=command]", "echo fired-by-schedule")
    page.click("button:has-text('Create schedule')")

    # Then its page: the next runs, and the history filling as the leader fires it
    page.wait_for_url(re.compile(r"/schedules/\d+$"))
    expect(page.locator("#flash")).to_contain_text("Schedule every-2s created.")
    expect(page.locator("#next-runs li")).to_have_count(5)
    history = page.locator("#schedule-history")
    expect(history.locator("tr.occ-fired").first).to_be_visible(timeout=20_000)
    expect(history.locator(".badge.st-done").first).to_be_visible(timeout=30_000)
    screenshot(page, "schedule-history")

    # The dashboard lists its next runs
    schedule_url = page.url
    page.goto("/")
    expect(page.locator("#upcoming-runs")).to_contain_text("every-2s")

    # Its job ran the command and links back to the schedule
    page.goto(schedule_url)
    done = history.locator("tr.occ-fired:has(.st-done) a[href^='/jobs/']").first
    done.click()
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    expect(page.locator("#log")).to_contain_text("fired-by-schedule")
    page.click("#job-schedule")
    page.wait_for_url(schedule_url)

    # Pausing stops it; the list shows the last result and the state
    page.click("button:has-text('Pause')")
    expect(page.locator("#flash")).to_contain_text("Schedule every-2s paused.")
    expect(page.locator("#schedule-state")).to_have_text("paused")
    page.goto("/schedules")
    row = page.locator("tr[data-name='every-2s']")
    expect(row.locator(".last-result .badge")).to_be_visible()
    expect(row).to_contain_text("paused")
    screenshot(page, "schedules")
    fired = [s for s in cluster.api.get("/api/v1/schedules/every-2s/history").json()
             if s["outcome"] == "fired"]  # fmt: skip
    assert fired and all(s["job_id"] for s in fired)


def _times(preview: Locator) -> list[datetime]:
    """The local times of the preview's runs."""
    texts = preview.locator("li .local").all_inner_texts()
    return [datetime.strptime(t[:19], "%Y-%m-%d %H:%M:%S") for t in texts]

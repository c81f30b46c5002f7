"""Notifications in a real browser on a real cluster: an admin creates a webhook target,
sends a test (and sees why a test to a dead target failed), and a failed job's page lists
its delivery."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import Cluster
from tests.receivers import free_port, webhook

Shot = Callable[[Page, str], Path]


def test_create_a_target_send_a_test_and_see_a_failed_jobs_delivery(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    with webhook(secret="s3cret") as hook:
        # Given the Notifications page, in the nav
        page.goto("/")
        page.click("nav a:has-text('Notifications')")
        expect(page.locator("h1")).to_have_text("Notifications")

        # When a webhook target is created, its secret is not shown again
        page.fill(".target-form input[name=name]", "ops-hook")
        page.select_option(".target-form select[name=kind]", "webhook")
        page.fill(".target-form input[name=url]", hook.url)
        page.fill(".target-form input[name=secret]", "s3cret")
        page.click("button:has-text('Create target')")
        expect(page.locator("#flash")).to_contain_text("Notification target ops-hook created.")
        row = page.locator("tr[data-name='ops-hook']")
        expect(row).to_contain_text("set")
        assert "s3cret" not in page.content()

        # And a test is sent: it arrives, signed
        row.locator("button:has-text('Send test')").click()
        expect(page.locator("#flash")).to_contain_text("Test notification delivered to ops-hook.")
        [got] = hook.wait(1)
        assert got.signature_ok and got.body["test"] is True

        # A target nobody listens on: the test says why it failed
        page.fill(".target-form input[name=name]", "dead")
        page.fill(".target-form input[name=url]", f"http://127.0.0.1:{free_port()}/")
        page.click("button:has-text('Create target')")
        page.locator("tr[data-name='dead'] button:has-text('Send test')").click()
        expect(page.locator("#flash")).to_contain_text("Test to dead failed")
        expect(page.locator("#flash")).to_contain_text("connection refused")
        screenshot(page, "notifications")

        # Then a failed job that names the target shows its delivery on its page
        job = cluster.submit(
            command="echo broken >&2; exit 2", notify=[{"on": ["failed"], "target": "ops-hook"}]
        )
        assert cluster.wait_job(job["id"])["state"] == "failed"
        assert len(hook.wait(2, timeout=30)) == 2

        def delivered() -> bool:
            sent = cluster.api.get("/api/v1/notifications", params={"job": job["id"]}).json()
            return [n["state"] for n in sent] == ["delivered"]

        cluster.wait_for(delivered, "the delivery recorded")
        page.goto(f"/jobs/{job['id']}")
        section = page.locator("#job-notifications")
        expect(section).to_contain_text("ops-hook")
        expect(section.locator(".badge")).to_have_text("delivered")
        screenshot(page, "job-notifications")

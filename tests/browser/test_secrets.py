"""Secrets in a real browser on a real cluster: an admin makes a secret on the Secrets page
(limited to a class and a user), edits its limits, and a job that uses it shows the
secret's name on its page and ``****`` in its output, never the value."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import Cluster

Shot = Callable[[Page, str], Path]
VALUE = "browser-s3cret-value"


def test_make_edit_use_and_delete_a_secret(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    # Given the Secrets page, in the nav
    page.goto("/")
    page.click("nav a:has-text('Secrets')")
    expect(page.locator("h1")).to_have_text("Secrets")

    # When a secret is made for the default class and the admin only
    form = page.locator(".secret-form")
    form.locator("input[name=name]").fill("prod-db")
    form.locator("input[name=value]").fill(VALUE)
    form.locator("input[name=description]").fill("the database")
    form.locator("input[name=worker_classes_mode][value=some]").check()
    form.locator("input[name=worker_classes][value=default]").check()
    form.locator("input[name=users_mode][value=some]").check()
    form.locator("input[name=users][value=tester]").check()
    form.locator("button[type=submit]").click()

    # Then it is listed with its limits, and its value is nowhere on the page
    expect(page.locator("#flash")).to_contain_text("Secret prod-db created.")
    row = page.locator("tr[data-name='prod-db']")
    expect(row).to_contain_text("default")
    expect(row).to_contain_text("tester")
    assert VALUE not in page.content()

    # When its limits are edited (the value kept)
    row.locator("a:has-text('Edit')").click()
    expect(page.locator("h2").first).to_contain_text("Change secret prod-db")
    expect(page.locator(".secret-form input[name=value]")).to_have_value("")
    page.locator(".secret-form input[name=users_mode][value=all]").check()
    page.locator(".secret-form button[type=submit]").click()
    expect(page.locator("#flash")).to_contain_text("Secret prod-db changed.")
    expect(page.locator("tr[data-name='prod-db']")).to_contain_text("anyone")
    screenshot(page, "secrets")

    # Then a job that uses it gets the value, and its page shows only the name and ****
    job = cluster.submit(command='echo "pw=$PGPASSWORD"', secret_env={"PGPASSWORD": "prod-db"})
    assert cluster.wait_job(job["id"])["state"] == "done"
    page.goto(f"/jobs/{job['id']}")
    expect(page.locator(".job-secrets")).to_contain_text("PGPASSWORD from secret prod-db")
    expect(page.locator("body")).to_contain_text("pw=****")
    assert VALUE not in page.content()

    # And it can be deleted (after a confirmation)
    page.goto("/secrets")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr[data-name='prod-db'] button:has-text('Delete')").click()
    expect(page.locator("#flash")).to_contain_text("Secret prod-db deleted.")

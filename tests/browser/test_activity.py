"""A scoped, expiring API key made on the account page, and the Activity page (the audit
log) with its filters, in a real browser on a real cluster."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import Cluster, Pages

Shot = Callable[[Page, str], Path]


def test_a_scoped_expiring_key_from_the_account_page(
    pages: Pages, cluster: Cluster, screenshot: Shot
) -> None:
    # Given an operator on their account page
    page = pages.as_role("operator", "olga")
    page.goto("/account")
    form = page.locator("form:has(button:has-text('Create key'))")
    # the scopes offered are those an operator may give: not admin
    offered = form.locator("select[name=scope] option").evaluate_all("os => os.map(o => o.value)")
    assert offered == ["read", "submit", "operate"]
    assert form.locator("select[name=scope]").input_value() == "operate"  # the role's own

    # When they make a key scoped submit that expires in 30 days
    form.locator("input[name=name]").fill("ci")
    form.locator("select[name=scope]").select_option("submit")
    form.locator("input[name=expires]").fill("30d")
    screenshot(page, "account-key-form")
    form.locator("button:has-text('Create key')").click()
    secret = page.locator("#new-secret")
    expect(secret).to_be_visible()
    key = secret.inner_text()
    row = page.locator("table.keys tbody tr", has_text="ci")
    expect(row.locator(".key-scope")).to_have_text("submit")
    expect(row.locator(".key-expires")).not_to_have_text("never")  # it expires
    screenshot(page, "account-key-created")

    # Then the key submits, but does not kill another's job (an operator's right)
    others = cluster.api.post("/api/v1/jobs", json={"command": "sleep 30"}).json()["id"]
    with httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {key}"}) as api:
        assert api.post("/api/v1/jobs", json={"command": "true"}).status_code == 201
        assert api.post(f"/api/v1/jobs/{others}/kill").status_code == 404
        keys = api.get(f"/api/v1/users/{api.get('/api/v1/me').json()['id']}/api-keys").json()
    ci = next(k for k in keys if k["name"] == "ci")
    assert ci["scope"] == "submit" and ci["expires_at"] is not None

    # And a scope above the role is refused with the reason
    form.locator("input[name=name]").fill("too-much")
    form.locator("select[name=scope]").evaluate(
        "s => { const o = document.createElement('option'); o.value = 'admin'; s.add(o); "
        "s.value = 'admin'; }"
    )
    form.locator("button:has-text('Create key')").click()
    expect(page.locator(".flash-error")).to_contain_text("scope")
    assert page.locator("table.keys tbody tr", has_text="too-much").count() == 0


def test_the_activity_page_filters_the_audit_log(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    job = cluster.api.post("/api/v1/jobs", json={"command": "sleep 30"}).json()["id"]
    cluster.api.post(f"/api/v1/jobs/{job}/kill")
    cluster.api.post("/api/v1/worker-classes", json={"name": "gpu"})

    # The admin's nav leads to Activity, newest first
    page.goto("/")
    page.click("nav a:has-text('Activity')")
    expect(page.locator("h1")).to_have_text("Activity")
    rows = page.locator("table.activity tbody tr")
    expect(rows.first).to_contain_text("class.create")
    expect(page.locator("table.activity")).to_contain_text("job.kill")
    expect(page.locator("table.activity")).to_contain_text("login")
    screenshot(page, "activity")

    # Filtered to kills, only the kill is left, with who did it and how
    page.fill("#activity-filters input[name=action]", "job.kill")
    page.click("#activity-filters button:has-text('Filter')")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("tester")
    expect(rows.first).to_contain_text("key jb_")
    expect(rows.first.locator(f"a[href='/jobs/{job}']")).to_be_visible()
    assert "action=job.kill" in page.url
    screenshot(page, "activity-filtered")

    # A time range that makes no sense says so
    page.fill("#activity-filters input[name=since]", "last tuesday")
    page.click("#activity-filters button:has-text('Filter')")
    expect(page.locator(".flash-error")).to_contain_text("since")

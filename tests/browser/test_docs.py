"""The API reference at /docs: vendored Swagger UI, for signed-in users, under the same
strict script policy as every page, with "Try it out" riding on the session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import script_errors
from tests.e2e.conftest import Cluster


def test_the_api_reference_renders_and_tries_a_route_with_the_session(
    admin_page: Page, screenshot: Callable[[Page, str], Path]
) -> None:
    page = admin_page
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto("/docs")
    expect(page.locator("nav a[aria-current=page]")).to_have_text("API")
    me = page.locator(".opblock", has_text="/api/v1/me").first
    expect(me).to_be_visible(timeout=15_000)
    me.locator(".opblock-summary").click()
    me.get_by_role("button", name="Try it out").click()
    me.get_by_role("button", name="Execute").click()
    status = me.locator(".live-responses-table tr.response td.response-col_status")
    expect(status.first).to_have_text("200", timeout=10_000)
    expect(me.locator(".highlight-code").first).to_contain_text('"role": "admin"')
    screenshot(page, "api-docs")
    assert script_errors(errors) == []  # no script or style refused by the CSP


def test_anonymous_visitors_are_sent_to_the_login_form(browser: Browser, cluster: Cluster) -> None:
    context = browser.new_context(base_url=cluster.url)
    try:
        anon = context.new_page()
        anon.goto("/docs")
        expect(anon.locator("input[name=name]")).to_be_visible()
        assert "/login" in anon.url
        assert anon.request.get(f"{cluster.url}/openapi.json").status == 401
    finally:
        context.close()

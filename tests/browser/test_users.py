"""Users and API keys in a real browser on a real cluster: create a user with a role,
scripts-only and allowed classes; create an API key (shown once, with a Copy button) and
use it on the API; revoke it; reset a password and disable a user, which ends their
session; and non-admins do not get the page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import PASSWORD as ROLE_PASSWORD
from tests.browser.conftest import Cluster, Pages

Shot = Callable[[Page, str], Path]
PASSWORD = "a-long-password"


def test_create_a_user_and_a_key_and_use_it(
    admin_page: Page, pages: Pages, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    page.on("dialog", lambda dialog: dialog.accept())
    r = cluster.api.post("/api/v1/worker-classes", json={"name": "gpu"})
    assert r.status_code == 201

    # Given the users page, the admin creates a scripts-only submitter limited to gpu
    page.goto("/users")
    form = page.locator("#new-user form")
    form.locator("input[name=name]").fill("sam")
    form.locator("input[name=password]").fill(PASSWORD)
    form.locator("input[name=role][value=submitter]").check()
    form.locator("input[name=scripts_only]").check()
    expect(form.locator("input[name=worker_classes]").first).to_be_hidden()
    form.locator("input[name=classes_mode][value=some]").check()
    form.locator("input[name=worker_classes][value=gpu]").check()
    screenshot(page, "users-new")
    page.click("button:has-text('Create user')")
    expect(page.locator("#flash")).to_contain_text("User sam created.")
    sam = next(u for u in cluster.api.get("/api/v1/users").json() if u["name"] == "sam")
    assert (sam["role"], sam["commands_allowed"], sam["worker_classes"]) == (
        "submitter", False, ["gpu"],
    )  # fmt: skip

    # When a key is created, it is shown once with a Copy button
    page.fill("input[name=name] >> nth=-1", "ci")
    page.click("button:has-text('Create key')")
    secret = page.locator("#new-secret")
    expect(secret).to_be_visible()
    key = secret.inner_text()
    assert key.startswith("jb_")
    page.click("button.js-copy")
    expect(page.locator("button.js-copy")).to_have_text("Copied")
    screenshot(page, "user-key-created")

    # Then the key works on the API, as sam, with sam's limits
    with httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {key}"}) as api:
        assert api.get("/api/v1/me").json()["name"] == "sam"
        refused = api.post("/api/v1/jobs", json={"command": "true", "worker_class": "gpu"})
        assert refused.status_code == 403, refused.text  # scripts only
        # And the page lists it by prefix once reloaded, never the key again
        page.goto(page.url)
        expect(page.locator("#new-secret")).to_have_count(0)
        row = page.locator("table.keys tbody tr")
        expect(row).to_contain_text("ci")
        expect(row).to_contain_text(key[:11])
        screenshot(page, "user")

        # Revoked, it stops working at once
        row.locator("button:has-text('Revoke')").click()
        expect(page.locator("#flash")).to_contain_text("API key revoked")
        assert api.get("/api/v1/me").status_code == 401

    page.goto("/users")
    expect(page.locator("tr[data-name='sam']")).to_contain_text("scripts only")
    screenshot(page, "users")
    page.set_viewport_size({"width": 820, "height": 900})
    page.goto(f"/users/{sam['id']}")
    assert page.evaluate("(m => m.scrollWidth <= m.clientWidth)(document.querySelector('main'))")
    screenshot(page, "user-narrow")


def test_reset_password_and_disable_end_the_session(
    admin_page: Page, pages: Pages, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    page.on("dialog", lambda dialog: dialog.accept())
    r = cluster.api.post(
        "/api/v1/users", json={"name": "olga", "role": "operator", "password": PASSWORD}
    )
    olga_id = r.json()["id"]
    olga = pages.login("olga", PASSWORD)

    page.goto(f"/users/{olga_id}")
    page.click("button:has-text('Reset password')")
    new_password = page.locator("#new-secret").inner_text()
    expect(page.locator(".flash-ok")).to_contain_text("logged out everywhere")
    screenshot(page, "user-password-reset")
    olga.goto("/workers")
    expect(olga.locator("input[name=password]")).to_be_visible()  # back at the login form
    olga = pages.login("olga", new_password)

    page.goto(f"/users/{olga_id}")
    page.click("button:has-text('Disable')")
    expect(page.locator("#flash")).to_contain_text("User olga disabled")
    expect(page.locator("h1 .badge")).to_have_text("disabled")
    olga.goto("/workers")
    expect(olga.locator("input[name=password]")).to_be_visible()
    page.click("button:has-text('Enable')")
    expect(page.locator("#flash")).to_contain_text("User olga enabled.")
    pages.login("olga", new_password)


def test_only_admins_see_users(login_as: Callable[[str], Page], screenshot: Shot) -> None:
    page = login_as("operator")
    expect(page.locator("nav a:has-text('Users')")).to_have_count(0)
    page.goto("/users")
    expect(page.locator("h1")).to_have_text("Not allowed")
    expect(page.locator(".error-message")).to_contain_text("admins only")
    screenshot(page, "users-forbidden")


def test_a_viewer_makes_a_key_and_changes_the_password_on_the_account_page(
    login_as: Callable[[str], Page], pages: Pages, cluster: Cluster, screenshot: Shot
) -> None:
    # Given a viewer, who sees no Users page, opening the account from the top bar
    page = login_as("viewer")
    page.on("dialog", lambda dialog: dialog.accept())
    name = page.locator(".who-name").inner_text()
    page.click(".who-name")
    expect(page.locator("h1")).to_contain_text(name)
    expect(page.locator("main")).to_contain_text("reads everything, changes nothing")

    # When they create a key, it is shown once and works on the API
    page.fill("input[name=name]", "grafana")
    page.click("button:has-text('Create key')")
    key = page.locator("#new-secret").inner_text()
    assert key.startswith("jb_")
    screenshot(page, "account-key-created")
    with httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {key}"}) as api:
        assert api.get("/api/v1/me").json()["name"] == name
        page.goto("/account")
        expect(page.locator("#new-secret")).to_have_count(0)
        page.locator("table.keys tbody tr").locator("button:has-text('Revoke')").click()
        expect(page.locator("#flash")).to_contain_text("API key revoked")
        assert api.get("/api/v1/me").status_code == 401

    # And a password change keeps this browser signed in; the new password works elsewhere
    page.fill("input[name=current_password]", ROLE_PASSWORD)
    page.fill("input[name=new_password]", "a-newer-password")
    page.fill("input[name=repeat_password]", "a-newer-password")
    page.click("button:has-text('Change password')")
    expect(page.locator("#flash")).to_contain_text("Password changed.")
    screenshot(page, "account")
    page.goto("/jobs")
    expect(page.locator("h1")).to_contain_text("Jobs")
    pages.login(name, "a-newer-password")

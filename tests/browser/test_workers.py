"""Workers and worker classes in a real browser on a real cluster: the workers list
refreshing itself, disable (drain) and enable, editing max jobs and the class; classes
created, renamed, deleted, and deleting one in use refused with the reason; a viewer sees
no buttons on either page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import Cluster

Shot = Callable[[Page, str], Path]


def test_drain_enable_and_edit_a_worker(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    page.on("dialog", lambda dialog: dialog.accept())
    w1 = cluster.worker("w1")
    assert w1 is not None
    row = page.locator(f"tr[data-id='{w1['id']}']")

    # Given the workers page, w1 is online with its machine's figures
    page.goto("/workers")
    expect(row.locator(".badge")).to_have_text("online")
    expect(row).to_contain_text("0 / 2")
    expect(row).to_contain_text("CPU")
    expect(row).to_contain_text("GiB")
    screenshot(page, "workers")

    # The list refreshes itself: a job started elsewhere shows up in its slots
    job = cluster.submit(command="sleep 60")
    expect(row).to_contain_text("1 / 2", timeout=10_000)

    # When Disable is clicked, w1 takes no new jobs (its running job goes on)
    row.locator("button:has-text('Disable')").click()
    expect(page.locator("#flash")).to_contain_text("Worker w1 disabled")
    expect(row.locator(".badge")).to_have_text("disabled")
    assert cluster.worker("w1")["enabled"] is False  # type: ignore[index]
    waiting = cluster.submit(command="true")
    assert cluster.job(waiting["id"])["state"] == "waiting"
    assert cluster.job(job["id"])["state"] == "running"
    screenshot(page, "workers-disabled")

    # And Enable gives it jobs again: the waiting one runs
    row.locator("button:has-text('Enable')").click()
    expect(row.locator(".badge")).to_have_text("online")
    assert cluster.wait_job(waiting["id"])["state"] == "done"

    # Editing max jobs on the worker's page
    row.locator("a:has-text('Edit')").click()
    expect(page.locator("h1")).to_contain_text("w1")
    page.fill("input[name=max_jobs]", "4")
    screenshot(page, "worker")
    page.click("button:has-text('Save')")
    expect(page.locator("#flash")).to_contain_text("Worker w1 saved.")
    assert cluster.worker("w1")["max_jobs"] == 4  # type: ignore[index]
    expect(page.locator("dl.fields")).to_contain_text("running of 4 slots")

    # A bad value is refused with the reason, on the page
    page.fill("input[name=max_jobs]", "0")
    page.locator("input[name=max_jobs]").evaluate("el => el.removeAttribute('min')")
    page.click("button:has-text('Save')")
    expect(page.locator(".flash-error")).to_contain_text("max_jobs")
    assert cluster.worker("w1")["max_jobs"] == 4  # type: ignore[index]
    screenshot(page, "worker-error")

    # Back to the class's number
    page.fill("input[name=max_jobs]", "")
    page.click("button:has-text('Save')")
    expect(page.locator("#flash")).to_contain_text("saved")
    assert cluster.worker("w1")["own_max_jobs"] is None  # type: ignore[index]

    # On a narrow window the table scrolls sideways inside its frame; the page does not
    page.set_viewport_size({"width": 820, "height": 900})
    page.goto("/workers")
    assert page.evaluate("(m => m.scrollWidth <= m.clientWidth)(document.querySelector('main'))")
    screenshot(page, "workers-narrow")


def test_classes_create_rename_delete_and_in_use(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto("/classes")
    page.fill("form.class-form input[name=name]", "gpu")
    page.fill("form.class-form input[name=max_jobs]", "3")
    page.fill("form.class-form input[name=description]", "machines with a GPU")
    page.click("button:has-text('Create class')")
    expect(page.locator("#flash")).to_contain_text("Worker class gpu created.")
    row = page.locator("tr[data-name='gpu']")
    class_id = row.get_attribute("data-id")
    screenshot(page, "classes")

    # Rename and change max jobs in the row
    row.locator("input[name=name]").fill("cuda")
    row.locator("input[name=max_jobs]").fill("6")
    row.locator("button:has-text('Save')").click()
    expect(page.locator("#flash")).to_contain_text("Worker class cuda (was gpu) saved.")
    found = cluster.api.get(f"/api/v1/worker-classes/{class_id}").json()
    assert (found["name"], found["max_jobs"]) == ("cuda", 6)

    # A worker in the class: deleting it is refused, and the page says why
    cluster.start_worker("g1", "--allow-root", "--class", "cuda")
    row = page.locator(f"tr[data-id='{class_id}']")
    row.locator("button:has-text('Delete')").click()
    expect(page.locator(".flash-error")).to_contain_text(
        "Not deleted: worker class 'cuda' has 1 worker(s)"
    )
    assert cluster.api.get(f"/api/v1/worker-classes/{class_id}").status_code == 200
    screenshot(page, "classes-in-use")

    # Renaming default is refused with the reason too
    page.goto("/classes")
    expect(page.locator("tr[data-name='default'] input[name=name]")).to_have_count(0)

    # Once the worker is in another class, the delete goes through
    g1 = cluster.worker("g1")
    assert g1 is not None
    r = cluster.api.patch(f"/api/v1/workers/{g1['id']}", json={"worker_class": "default"})
    assert r.status_code == 200
    page.locator(f"tr[data-id='{class_id}'] button:has-text('Delete')").click()
    expect(page.locator("#flash")).to_contain_text("Worker class cuda deleted.")
    assert cluster.api.get(f"/api/v1/worker-classes/{class_id}").status_code == 404


def test_a_viewer_sees_no_buttons(
    login_as: Callable[[str], Page], cluster: Cluster, screenshot: Shot
) -> None:
    w1 = cluster.worker("w1")
    assert w1 is not None
    page = login_as("viewer")
    for path, shot in (("/workers", "workers-viewer"), (f"/workers/{w1['id']}", "worker-viewer"),
                       ("/classes", "classes-viewer")):  # fmt: skip
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
        expect(page.locator("main button")).to_have_count(0)
        expect(page.locator("main input")).to_have_count(0)
        screenshot(page, shot)
    expect(page.locator("tr[data-name='default']")).to_be_visible()

    # Forcing a request anyway: refused with a readable page
    csrf = page.eval_on_selector(
        "body", "b => JSON.parse(b.getAttribute('hx-headers'))['X-CSRF-Token']"
    )
    r = page.request.post(f"/workers/{w1['id']}/disable", form={"csrf_token": csrf})
    assert r.status == 403 and "does not allow" in r.text()
    assert cluster.worker("w1")["enabled"] is True  # type: ignore[index]

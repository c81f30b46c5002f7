"""Jobs in a real browser, on a real server with a real worker: submit from the form and
watch the output arrive, kill, restart, delete; the list's filters and selection;
settings; and a viewer who cannot act."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import ADMIN, Cluster, Pages

Shot = Callable[[Page, str], Path]
# Long enough to be killed while it runs; it prints as it goes, to both streams.
TICKER = (
    "echo started; echo to-stderr >&2; i=0; "
    "while [ $i -lt 600 ]; do i=$((i+1)); echo tick $i; sleep 0.2; done"
)


def _accept_dialogs(page: Page) -> None:
    page.on("dialog", lambda dialog: dialog.accept())


def _job_id(page: Page) -> int:
    match = re.search(r"/jobs/(\d+)$", page.url)
    assert match, page.url
    return int(match.group(1))


def test_submit_watch_kill_restart_delete(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    _accept_dialogs(page)

    # Given the jobs page, the admin opens the submit form and sends a command
    page.goto("/jobs")
    page.click("summary:has-text('Submit a job')")
    page.fill("textarea[name=command]", TICKER)
    page.fill("input[name=watchdog]", "120")
    screenshot(page, "jobs-submit-form")
    page.click("button:has-text('Submit job')")

    # Then the job's page shows its output as it is written, live
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_id = _job_id(page)
    expect(page.locator("#flash")).to_contain_text(f"Job {job_id} submitted.")
    expect(page.locator("#log")).to_contain_text("tick 5", timeout=20_000)
    expect(page.locator(".js-live")).to_be_visible()
    expect(page.locator("#log .stderr")).to_have_text("to-stderr")
    assert cluster.job(job_id)["state"] == "running"
    screenshot(page, "job-running")

    # The stderr toggle hides that stream only
    page.uncheck("input.js-stream-toggle[data-stream=stderr]")
    expect(page.locator("#log .stderr")).to_be_hidden()
    expect(page.locator("#log .stdout").first).to_be_visible()
    page.check("input.js-stream-toggle[data-stream=stderr]")

    # When Kill is clicked (and confirmed), the job ends killed
    page.click("button:has-text('Kill')")
    expect(page.locator("#job-state")).to_have_text("killed", timeout=20_000)
    assert cluster.wait_job(job_id)["state"] == "killed"
    expect(page.locator("button:has-text('Kill')")).to_have_count(0)
    log_after_kill = page.locator("#log").inner_text()
    assert "started" in log_after_kill and "tick 1\n" in log_after_kill
    screenshot(page, "job-killed")

    # Restart makes a new job linked to this one
    page.click("button:has-text('Restart')")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    new_id = _job_id(page)
    assert new_id != job_id
    expect(page.locator("#flash")).to_contain_text(f"Job {new_id} restarted from job {job_id}.")
    expect(page.locator(f"a[href='/jobs/{job_id}']")).to_have_text(f"job {job_id}")
    expect(page.locator("#log")).to_contain_text("tick 2", timeout=20_000)
    assert cluster.job(new_id)["restarted_from"] == job_id
    page.click("button:has-text('Kill')")
    expect(page.locator("#job-state")).to_have_text("killed", timeout=20_000)

    # Delete removes it, and the list says so
    page.click("button:has-text('Delete')")
    page.wait_for_url(re.compile(r"/jobs$"))
    expect(page.locator("#flash")).to_contain_text(f"Job {new_id} deleted")
    assert cluster.api.get(f"/api/v1/jobs/{new_id}").status_code == 404
    expect(page.locator(f"tr[data-id='{job_id}']")).to_be_visible()
    expect(page.locator(f"tr[data-id='{new_id}']")).to_have_count(0)


def test_finished_output_reads_whole_and_downloads(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    job = cluster.submit(command="for i in $(seq 1 300); do echo line $i; echo err $i >&2; done")
    cluster.wait_job(job["id"])
    admin_page.goto(f"/jobs/{job['id']}")
    log = admin_page.locator("#log")
    expect(log).to_contain_text("line 300")
    expect(admin_page.locator(".js-live")).to_have_count(0)
    assert log.inner_text().count("\n") >= 600
    screenshot(admin_page, "job-done")
    with admin_page.expect_download() as info:
        admin_page.click("a.btn:has-text('Download log')")
    saved = Path(info.value.path()).read_text()
    assert saved == cluster.log(job["id"])


def test_the_list_filters_refreshes_and_acts_on_a_selection(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    _accept_dialogs(page)
    done = [cluster.submit(command=f"echo quick-{i}")["id"] for i in range(3)]
    failed = cluster.submit(command="echo boom >&2; exit 7")["id"]
    slow = [cluster.submit(command=f"sleep 300 # slow-{i}")["id"] for i in range(2)]
    for job_id in [*done, failed]:
        cluster.wait_job(job_id)

    page.goto("/jobs")
    for job_id in [*done, failed, *slow]:
        expect(page.locator(f"tr[data-id='{job_id}']")).to_be_visible()
    expect(page.locator(f"tr[data-id='{failed}'] .badge")).to_have_text("failed")
    expect(page.locator(f"tr[data-id='{failed}'] td").last).to_have_text("7")
    screenshot(page, "jobs")

    # Filtering by text keeps only the matching rows (and the URL says so)
    page.fill("input[name=q]", "slow-")
    expect(page.locator("tbody tr[data-id]")).to_have_count(2)
    expect(page).to_have_url(re.compile(r"q=slow-"))

    # A selection survives the table's own refresh (every 3 s) and kills both
    for job_id in slow:
        page.check(f"tr[data-id='{job_id}'] input.js-select")
    expect(page.locator(".js-selected-count")).to_have_text("2 selected")
    row = page.locator(f"tr[data-id='{slow[0]}']").element_handle()
    row.wait_for_element_state("hidden")  # the table's own refresh (every 3 s) replaced it
    expect(page.locator("input.js-select:checked")).to_have_count(2)
    screenshot(page, "jobs-selected")
    page.click("button:has-text('Kill selected')")
    expect(page.locator("#flash")).to_contain_text("Kill requested for 2 jobs.")
    for job_id in slow:
        assert cluster.wait_job(job_id)["state"] == "killed"
    # The page came back filtered, and its refresh shows the new states
    expect(page.locator("input[name=q]")).to_have_value("slow-")
    expect(page.locator("tbody .badge.st-killed")).to_have_count(2, timeout=10_000)

    # Filter by state; then delete a selection
    page.goto("/jobs")
    page.select_option("select[name=state]", "done")
    expect(page.locator("tbody tr[data-id]")).to_have_count(3)
    page.check("input.js-select-all")
    page.click("button:has-text('Delete selected')")
    expect(page.locator("#flash")).to_contain_text("Deleted 3 jobs.")
    for job_id in done:
        assert cluster.api.get(f"/api/v1/jobs/{job_id}").status_code == 404


def test_the_form_shows_validation_errors(admin_page: Page, screenshot: Shot) -> None:
    page = admin_page
    page.goto("/jobs")
    page.click("summary:has-text('Submit a job')")
    page.fill("textarea[name=command]", "echo hi")
    page.select_option("select[name=worker_class]", "default")
    page.fill("input[name=retries]", "100")
    page.fill("textarea[name=command]", "   ")
    page.click("button:has-text('Submit job')")
    expect(page.locator(".submit-card .flash-error")).to_have_text("command: must not be empty")
    expect(page.locator("input[name=retries]")).to_have_value("100")  # what was typed stays
    screenshot(page, "jobs-submit-error")


def test_the_dashboard_shows_the_cluster(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    for i in range(4):
        cluster.wait_job(cluster.submit(command=f"exit {i % 2}")["id"])
    admin_page.goto("/")
    expect(admin_page.locator(".tile:has-text('Done, last hour') .tile-value")).to_have_text("2")
    expect(admin_page.locator(".tile:has-text('Failures, last hour') .tile-value")).to_have_text(
        "2"
    )
    expect(admin_page.locator(".tile:has-text('Workers') .tile-value")).to_contain_text("1")
    expect(admin_page.locator(".chart rect.bar-bad")).to_have_count(1)
    # It refreshes itself: a job submitted now shows up without a reload
    cluster.submit(command="sleep 60")
    expect(admin_page.locator(".tile:has-text('Running') .tile-value")).to_have_text(
        "1", timeout=30_000
    )
    screenshot(admin_page, "dashboard")
    # On a narrow screen the nav wraps and wide tables scroll in their box
    admin_page.set_viewport_size({"width": 720, "height": 900})
    screenshot(admin_page, "dashboard-narrow")
    admin_page.goto("/jobs")
    expect(admin_page.locator("tbody tr[data-id]").first).to_be_visible()
    screenshot(admin_page, "jobs-narrow")
    width = admin_page.evaluate("document.documentElement.scrollWidth")
    assert width <= 720, f"the page is {width}px wide: something does not wrap or scroll"


def test_changing_the_algorithm_applies_at_once(
    admin_page: Page, cluster: Cluster, screenshot: Shot
) -> None:
    page = admin_page
    page.goto("/settings")
    expect(page.locator("input[name=algorithm][value=round_robin]")).to_be_checked()
    page.check("input[name=algorithm][value=fill_first]")
    page.fill("input[name=retention_days]", "14")
    page.click("button:has-text('Save settings')")
    expect(page.locator("#flash")).to_contain_text("Settings saved")
    settings = cluster.api.get("/api/v1/settings").json()
    assert (settings["algorithm"], settings["retention_days"]) == ("fill_first", 14)
    screenshot(page, "settings")

    # fill_first packs the first worker: with two, both jobs go to the first one
    cluster.start_worker("w2", "--allow-root", "--max-jobs", "2")
    ids = [cluster.submit(command="sleep 30")["id"] for _ in range(2)]
    workers = {cluster.job(i)["worker"]["name"] for i in ids}
    assert len(workers) == 1, workers

    # A bad value is refused with the reason, and nothing changes
    page.fill("input[name=kill_grace]", "9999")
    page.locator("input[name=kill_grace]").evaluate("el => el.removeAttribute('max')")
    page.click("button:has-text('Save settings')")
    expect(page.locator(".flash-error")).to_contain_text("kill_grace")
    assert cluster.api.get("/api/v1/settings").json()["kill_grace"] == 1
    screenshot(page, "settings-error")


def test_a_viewer_cannot_act(
    login_as: Callable[[str], Page], cluster: Cluster, screenshot: Shot
) -> None:
    job_id = cluster.submit(command="sleep 60")["id"]
    page = login_as("viewer")
    page.goto("/jobs")
    expect(page.locator(f"tr[data-id='{job_id}']")).to_be_visible()
    for absent in ("summary:has-text('Submit a job')", "input.js-select", "#bulk-form"):
        expect(page.locator(absent)).to_have_count(0)
    screenshot(page, "jobs-viewer")
    page.goto(f"/jobs/{job_id}")
    expect(page.locator("h1")).to_contain_text(f"Job {job_id}")
    for label in ("Kill", "Restart", "Delete"):
        expect(page.locator(f"button:has-text('{label}')")).to_have_count(0)
    screenshot(page, "job-viewer")

    # Forcing the request anyway, with a valid session and CSRF token: refused
    csrf = page.eval_on_selector(
        "body", "b => JSON.parse(b.getAttribute('hx-headers'))['X-CSRF-Token']"
    )
    r = page.request.post(f"/jobs/{job_id}/kill", form={"csrf_token": csrf})
    assert r.status == 403
    r = page.request.post(f"/api/v1/jobs/{job_id}/kill", headers={"X-CSRF-Token": csrf}, data="{}")
    assert r.status == 403 and "viewer" in r.json()["message"]
    assert cluster.job(job_id)["state"] == "running"

    # Admin pages answer with a readable 403 page
    page.goto("/settings")
    expect(page.locator("h1")).to_have_text("Not allowed")
    expect(page.locator(".error-message")).to_contain_text("admins only")
    screenshot(page, "forbidden")


def test_times_show_in_the_browsers_time_zone(pages: Pages, cluster: Cluster) -> None:
    job = cluster.wait_job(cluster.submit(command="true")["id"])
    page = pages.login(*ADMIN, timezone_id="Asia/Tokyo")  # UTC+9, no summer time
    page.goto(f"/jobs/{job['id']}")
    created = datetime.fromisoformat(job["created_at"].replace("Z", "+00:00"))
    shown = page.locator("#job-run time").first
    expect(shown).to_have_text((created + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M:%S"))
    assert shown.get_attribute("title") == created.strftime("%Y-%m-%d %H:%M:%S UTC")
    # The table's refreshed rows too
    page.goto("/jobs")
    cell = page.locator(f"tr[data-id='{job['id']}'] time").first
    local = created + timedelta(hours=9)
    expect(cell).to_have_text(re.compile(local.strftime("%H:%M")))
    row = page.locator(f"tr[data-id='{job['id']}']").element_handle()
    row.wait_for_element_state("hidden")  # replaced by the table's refresh
    expect(page.locator(f"tr[data-id='{job['id']}'] time").first).to_have_text(
        re.compile(local.strftime("%H:%M"))
    )

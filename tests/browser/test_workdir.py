"""The submit form's working directory, in a real browser: the job runs there and its page
says where; a relative path comes back with the API's message, the form kept."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Cluster

Shot = Callable[[Page, str], Path]


@pytest.fixture
def media() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jbtest-web-workdir-", dir="/tmp"))
    path.chmod(0o755)
    (path / "in.mp4").write_text("x")
    yield path
    shutil.rmtree(path)


def test_submit_with_a_working_directory(
    admin_page: Page, cluster: Cluster, screenshot: Shot, media: Path
) -> None:
    page = admin_page
    page.goto("/jobs")
    page.click("summary:has-text('Submit a job')")
    page.fill("textarea[name=command]", "pwd; ls")
    page.fill("input[name=workdir]", "relative/dir")
    page.click("button:has-text('Submit job')")

    # A relative path: the API's message, and the form keeps what was typed
    expect(page.locator(".submit-card .flash-error")).to_contain_text(
        "workdir: must be an absolute path"
    )
    expect(page.locator("input[name=workdir]")).to_have_value("relative/dir")
    expect(page.locator("textarea[name=command]")).to_have_value("pwd; ls")

    page.fill("input[name=workdir]", str(media))
    screenshot(page, "jobs-submit-workdir")
    page.click("button:has-text('Submit job')")

    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#log")).to_contain_text(f"{media}\nin.mp4", timeout=20_000)
    expect(page.locator("dt:has-text('Working directory') + dd")).to_have_text(str(media))
    assert cluster.wait_job(job_id)["workdir"] == str(media)

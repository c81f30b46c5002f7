"""A typed Run form in a real browser: made from the script's declared parameters, filled
in and submitted, the job runs with them; a value the server refuses is shown next to its
field."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import Cluster

Shot = Callable[[Page, str], Path]
SCRIPT = {
    "name": "greet",
    "interpreter": "sh",
    "content": 'echo "name=$1 count=$2 ratio=$3 loud=$4 colour=$5"\n',
    "parameters": [
        {"name": "name", "type": "string", "required": True, "regex": "[a-z]+",
         "help": "lower-case letters"},
        {"name": "count", "type": "int", "min": 1, "max": 5, "default": 2},
        {"name": "ratio", "type": "float", "default": 0.5},
        {"name": "loud", "type": "bool"},
        {"name": "colour", "type": "choice", "values": ["red", "green"], "default": "red"},
    ],
}  # fmt: skip


def test_a_typed_run_form(admin_page: Page, cluster: Cluster, screenshot: Shot) -> None:
    page = admin_page
    r = cluster.api.post("/api/v1/scripts", json=SCRIPT)
    assert r.status_code == 201, r.text
    script_id = r.json()["id"]

    # Given the script's page: a field per declared parameter, with its help and defaults
    page.goto(f"/scripts/{script_id}")
    run = page.locator("#run")
    expect(run.locator("textarea[name=params]")).to_have_count(0)
    expect(run.locator("input[name='param.count']")).to_have_value("2")
    expect(run.locator("select[name='param.colour']")).to_have_value("red")
    expect(run).to_contain_text("lower-case letters")
    expect(page.locator("#parameters")).to_contain_text("1 to 5")

    # The browser checks what it can before sending: 9 is above the max
    run.locator("input[name='param.name']").fill("ada")
    run.locator("input[name='param.count']").fill("9")
    assert not run.locator("input[name='param.count']").evaluate("e => e.checkValidity()")

    # When a browser that does not check sends it anyway, the server refuses it and says
    # so next to the field, keeping what was typed
    page.evaluate("document.querySelector('#run form').noValidate = true")
    run.locator("button:has-text('Run')").click()
    error = page.locator(".field-error[data-param=count]")
    expect(error).to_have_text("params.count: must be ≤ 5")
    expect(page.locator("#run input[name='param.name']")).to_have_value("ada")
    screenshot(page, "script-run-typed-error")

    # When filled in right and run
    run = page.locator("#run")
    run.locator("input[name='param.count']").fill("3")
    run.locator("input[name='param.loud']").check()
    run.locator("select[name='param.colour']").select_option("green")
    screenshot(page, "script-run-typed")
    run.locator("button:has-text('Run')").click()

    # Then the job runs with the values in declared order, defaults filled in
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    expect(page.locator("#job-state")).to_have_text("done", timeout=30_000)
    expect(page.locator("#log")).to_contain_text(
        "name=ada count=3 ratio=0.5 loud=true colour=green"
    )

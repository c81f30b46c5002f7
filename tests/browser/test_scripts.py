"""Scripts in a real browser on a real cluster: write one in the editor (CodeMirror,
highlighting for the interpreter picked), run it with parameters typed into the page and
see its output on the job's page; rename and delete; what a viewer sees."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import Cluster

Shot = Callable[[Page, str], Path]
SCRIPT = (
    "import sys\n"
    "\n"
    "for i, arg in enumerate(sys.argv[1:], 1):\n"
    '    print(f"param {i}: {arg}")\n'
    'print("to stderr", file=sys.stderr)\n'
)


def _type_into_editor(page: Page, text: str) -> None:
    """Replace the editor's text the way a user does: select all, type."""
    page.click(".CodeMirror-code")
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    # CodeMirror auto-indents new lines; typing line by line from column 0 keeps ours.
    for i, line in enumerate(text.split("\n")):
        if i:
            page.keyboard.press("Enter")
            page.keyboard.press("Shift+Home")
            page.keyboard.press("Delete")
        page.keyboard.insert_text(line)


def test_write_run_rename_delete(admin_page: Page, cluster: Cluster, screenshot: Shot) -> None:
    page = admin_page
    page.on("dialog", lambda dialog: dialog.accept())

    # Given an empty list, the admin opens the editor for a new script
    page.goto("/scripts")
    expect(page.locator("td.empty")).to_contain_text("No scripts yet")
    screenshot(page, "scripts-empty")
    page.click("a:has-text('New script')")
    expect(page.locator(".CodeMirror")).to_be_visible()
    # The template's #! line picks shell highlighting
    expect(page.locator(".CodeMirror")).to_have_attribute("data-mode", "shell")

    # When they pick python3 and write a script, it is highlighted as Python
    page.fill("input[name=name]", "show-params")
    page.select_option("select[name=interpreter_choice]", "python3")
    expect(page.locator("input[name=interpreter_path]")).to_be_hidden()
    _type_into_editor(page, SCRIPT)
    page.fill("input[name=description]", "prints its parameters, one a line")
    expect(page.locator(".CodeMirror")).to_have_attribute("data-mode", "python")
    expect(page.locator(".CodeMirror .cm-keyword").first).to_have_text("import")
    screenshot(page, "script-new")
    page.click("button:has-text('Create script')")

    # Then it is stored as typed
    expect(page.locator("#flash")).to_contain_text("Script show-params saved.")
    script_id = int(re.search(r"/scripts/(\d+)$", page.url).group(1))  # type: ignore[union-attr]
    stored = cluster.api.get(f"/api/v1/scripts/{script_id}").json()
    assert (stored["interpreter"], stored["content"]) == ("python3", SCRIPT)

    # When it is run with parameters typed into the page
    page.fill("#run textarea[name=params]", "first one\n$HOME; rm -rf /\nthird")
    screenshot(page, "script-editor")
    page.click("#run button:has-text('Run')")

    # Then the job's page shows its output, each parameter one argument, untouched
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    expect(page.locator("#flash")).to_contain_text("script show-params")
    expect(page.locator("#job-state")).to_have_text("done", timeout=30_000)
    log = page.locator("#log")
    expect(log).to_contain_text("param 1: first one")
    expect(log).to_contain_text("param 2: $HOME; rm -rf /")
    expect(log).to_contain_text("param 3: third")
    expect(page.locator("#log .stderr")).to_contain_text("to stderr")
    screenshot(page, "script-job")

    # Rename, with a custom interpreter path
    page.goto(f"/scripts/{script_id}")
    page.fill("input[name=name]", "params")
    page.select_option("select[name=interpreter_choice]", "custom")
    expect(page.locator("input[name=interpreter_path]")).to_be_visible()
    page.fill("input[name=interpreter_path]", "/usr/bin/python3")
    expect(page.locator(".CodeMirror")).to_have_attribute("data-mode", "python")
    page.click("button:has-text('Save')")
    expect(page.locator("#flash")).to_contain_text(
        "Script params saved (renamed from show-params)."
    )
    assert cluster.api.get(f"/api/v1/scripts/{script_id}").json()["name"] == "params"

    # An error is shown on the page, and what was typed stays
    page.select_option("select[name=interpreter_choice]", "shebang")
    page.click("button:has-text('Save')")
    expect(page.locator(".flash-error")).to_contain_text("interpreter is required unless")
    expect(page.locator(".CodeMirror")).to_contain_text("param {i}")
    screenshot(page, "script-error")

    page.goto("/scripts")
    expect(page.locator(f"tr[data-id='{script_id}']")).to_contain_text("/usr/bin/python3")
    screenshot(page, "scripts")
    page.goto(f"/scripts/{script_id}")
    page.click("button:has-text('Delete')")
    expect(page.locator("#flash")).to_contain_text("Script params deleted")
    assert cluster.api.get(f"/api/v1/scripts/{script_id}").status_code == 404


def test_a_viewer_reads_scripts_but_cannot_act(
    login_as: Callable[[str], Page], cluster: Cluster, screenshot: Shot
) -> None:
    r = cluster.api.post(
        "/api/v1/scripts",
        json={"name": "hello", "interpreter": "bash", "content": 'echo "hi $1"\n'},
    )
    assert r.status_code == 201
    page = login_as("viewer")
    page.goto("/scripts")
    expect(page.locator("a:has-text('New script')")).to_have_count(0)
    page.click("a:has-text('hello')")
    expect(page.locator(".CodeMirror")).to_contain_text('echo "hi $1"')
    expect(page.locator("main button")).to_have_count(0)
    expect(page.locator("#run")).to_have_count(0)
    screenshot(page, "script-viewer")
    # The editor follows the system's dark setting, as the rest of the UI does
    page.emulate_media(color_scheme="dark")
    expect(page.locator(".CodeMirror .cm-string").first).to_have_css("color", "rgb(195, 232, 141)")
    screenshot(page, "script-viewer-dark")

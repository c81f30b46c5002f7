"""`jobbalancer submit --after…` and `show` of a job with parents and children (the client
played by stand-ins; tests/e2e runs them against a real server)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jobbalancer import cli
from jobbalancer.client import Client, job_spec

REMOTE = ["--url", "http://127.0.0.1:9", "--api-key", "jb_x"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("JOBBALANCER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_submit_after_flags_become_after(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: dict[str, Any] = {}

    def fake_submit(self: Client, command: str | None = None, **kwargs: Any) -> dict[str, Any]:
        sent.update(job_spec(command, **kwargs))
        return {"id": 44, "state": "held"}

    monkeypatch.setattr(Client, "submit", fake_submit)
    args = ["submit", *REMOTE, "--after", "41", "--after-any", "42", "--after-failure", "43"]
    result = CliRunner().invoke(cli.app, [*args, "--", "echo", "hi"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "44"
    assert sent["after"] == [
        {"job": 41, "on": "success"},
        {"job": 42, "on": "any"},
        {"job": 43, "on": "failure"},
    ]
    assert "after" not in job_spec("true")  # nothing to wait for: not sent


def test_show_prints_parents_children_and_what_it_waits_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = {
        "id": 44,
        "state": "held",
        "parents": [
            {"id": 41, "on": "success", "met": True, "state": "done"},
            {"id": 40, "on": "any", "met": False, "state": None},
        ],
        "children": [{"id": 45, "on": "failure", "met": False, "state": "held"}],
        "waiting_for": "waits for job 40 to end",
    }
    monkeypatch.setattr(Client, "job", lambda self, job_id: job)
    result = CliRunner().invoke(cli.app, ["show", "44", *REMOTE], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "job 41  on success  done" in result.output
    assert "job 40  on any  deleted" in result.output
    assert "job 45  on failure  held" in result.output
    assert "waits for job 40 to end" in result.output

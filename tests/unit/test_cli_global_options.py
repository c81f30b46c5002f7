"""The client options (--url, --api-key, --timeout) before the subcommand too:
`jobbalancer --url URL submit …`. The subcommand's own flag wins, then the one before it,
then the variable, then the default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jobbalancer import cli, client
from jobbalancer.cli import base


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("JOBBALANCER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


class FakeClient:
    """Stands in for client.Client: records how it was made, answers `show`."""

    made: list[tuple[str, str | None, float]] = []

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        FakeClient.made.append((url, api_key, timeout))

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def job(self, job_id: int) -> dict[str, Any]:
        return {"id": job_id, "state": "done"}


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None, float]]:
    FakeClient.made = []
    monkeypatch.setattr(client, "Client", FakeClient)
    return FakeClient.made


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli.app, list(args), env=env)


def test_url_before_the_subcommand_is_used() -> None:
    result = run("--url", "http://127.0.0.1:1", "submit", "--", "true")

    assert result.exit_code == cli.RET_CONNECT, result.output
    assert "http://127.0.0.1:1" in result.output
    assert "no such option" not in result.output.lower()


def test_all_three_before_the_subcommand(made: list[tuple[str, str | None, float]]) -> None:
    result = run("--url", "http://h:1", "--api-key", "k1", "--timeout", "5", "show", "7")

    assert result.exit_code == 0, result.output
    assert made == [("http://h:1", "k1", 5.0)]


def test_the_subcommands_flag_wins(made: list[tuple[str, str | None, float]]) -> None:
    env = {"JOBBALANCER_URL": "http://env:3", "JOBBALANCER_API_KEY": "kenv"}
    result = run(
        "--url", "http://root:1", "--api-key", "kroot",
        "show", "7", "--url", "http://own:2",
        env=env,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert made == [("http://own:2", "kroot", base.DEFAULT_TIMEOUT)]


def test_the_variable_then_the_default(made: list[tuple[str, str | None, float]]) -> None:
    with_env = run("show", "7", env={"JOBBALANCER_URL": "http://env:3", "JOBBALANCER_TIMEOUT": "9"})
    plain = run("show", "7")
    root_over_env = run(
        "--url", "http://root:1", "show", "7", env={"JOBBALANCER_URL": "http://env:3"}
    )

    assert [r.exit_code for r in (with_env, plain, root_over_env)] == [0, 0, 0]
    assert made == [
        ("http://env:3", None, 9.0),
        (base.DEFAULT_URL, None, base.DEFAULT_TIMEOUT),
        ("http://root:1", None, base.DEFAULT_TIMEOUT),
    ]


def test_a_bad_timeout_before_the_subcommand_is_a_usage_error() -> None:
    result = run("--timeout", "0", "jobs")

    assert result.exit_code == cli.RET_USAGE
    assert "--timeout" in result.output


def test_help_shows_the_root_options_and_their_variables() -> None:
    result = run("--help", env={"COLUMNS": "300"})

    assert result.exit_code == 0
    for option, variable in [
        ("--url", "JOBBALANCER_URL"),
        ("--api-key", "JOBBALANCER_API_KEY"),
        ("--timeout", "JOBBALANCER_TIMEOUT"),
    ]:
        assert option in result.output and variable in result.output


def test_submit_sends_the_workdir(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    def fake_submit(self: client.Client, command: str | None = None, **spec: Any) -> dict[str, Any]:
        sent.append({"command": command, **spec})
        return {"id": 5}

    monkeypatch.setattr(client.Client, "submit", fake_submit)
    by_flag = run("submit", "--workdir", "/srv/media", "--", "./encode.sh", "in.mp4")
    by_env = run("submit", "--", "pwd", env={"JOBBALANCER_SUBMIT_WORKDIR": "/srv/x"})

    assert (by_flag.exit_code, by_flag.output) == (0, "5\n")
    assert by_env.exit_code == 0
    assert sent[0]["workdir"] == "/srv/media" and sent[0]["command"] == "./encode.sh in.mp4"
    assert sent[1]["workdir"] == "/srv/x"
    assert client.job_spec("true", workdir="/w") == {"command": "true", "workdir": "/w"}
    assert "workdir" not in client.job_spec("true")

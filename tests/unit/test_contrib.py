"""The example systemd units in contrib/ run commands and flags the CLI really has, and
keep what the worker's stop and cgroups rely on."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
import typer

from jobbalancer import cli

UNITS = sorted((Path(__file__).parents[2] / "contrib" / "systemd").glob("*.service"))


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read(path)
    return parser


def test_there_are_units() -> None:
    assert {p.name for p in UNITS} == {"jobbalancer-server.service", "jobbalancer-worker.service"}


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_exec_start_is_a_real_command_with_real_flags(path: Path) -> None:
    argv = shlex.split(_unit(path)["Service"]["ExecStart"])
    assert argv[0].endswith("/bin/jobbalancer")
    group = typer.main.get_command(cli.app)
    command = group.commands[argv[1]]  # type: ignore[attr-defined]  # a group: it has them
    known = {opt for param in command.params for opt in param.opts}
    assert [a for a in argv[2:] if a.startswith("-") and a not in known] == []


def test_the_worker_unit_drains_on_stop_and_delegates_its_cgroup() -> None:
    service = _unit(next(p for p in UNITS if "worker" in p.name))["Service"]
    assert service["KillMode"] == "mixed"  # the first SIGTERM to the worker only: a drain
    assert service["Delegate"] == "yes"  # a cgroup per job, even for an unprivileged worker
    assert "--run-as" in service["ExecStart"] or service.get("User")

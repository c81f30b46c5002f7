"""The example systemd units in contrib/ run commands and flags the CLI really has, and
keep what the worker's stop, cgroups and identity rely on; the sample configs load."""

from __future__ import annotations

import configparser
import os
import shlex
from pathlib import Path

import pytest
import typer

from jobbalancer import cli, settings

CONTRIB = Path(__file__).parents[2] / "contrib"
UNITS = sorted((CONTRIB / "systemd").glob("*.service"))


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


def _worker_unit() -> configparser.ConfigParser:
    return _unit(next(p for p in UNITS if "worker" in p.name))


def test_the_worker_unit_needs_its_config_and_keeps_its_id_in_its_state_dir() -> None:
    unit = _worker_unit()
    config = "/etc/jobbalancer/worker.toml"
    assert unit["Unit"]["AssertPathExists"] == config
    path = next(p for p in UNITS if "worker" in p.name)
    # Every Environment= line (the parser keeps only the last of repeated keys).
    lines = path.read_text().splitlines()
    env = [w for line in lines if line.startswith("Environment=") for w in shlex.split(line[12:])]
    assert f"JOBBALANCER_CONFIG={config}" in env
    assert "JOBBALANCER_DATA_DIR=/var/lib/jobbalancer" in env  # <data_dir>/worker-id
    assert unit["Service"]["StateDirectory"] == "jobbalancer"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_a_unit_does_not_restart_what_a_restart_cannot_fix(path: Path) -> None:
    service = _unit(path)["Service"]
    prevented = {int(code) for code in service["RestartPreventExitStatus"].split()}
    assert {cli.RET_CONFIG, cli.RET_ROOT} <= prevented
    assert cli.RET_SCHEMA not in prevented  # a newer schema: restarted on the new version


@pytest.mark.parametrize("name", ["server.toml", "worker.toml"])
def test_the_sample_configs_load(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith(settings.ENV_PREFIX)]:
        monkeypatch.delenv(key)
    url_file = tmp_path / "database-url"
    url_file.write_text("postgresql://jb_worker:secret@db-host/jobbalancer\n")
    url_file.chmod(0o600)
    loaded = settings.load(CONTRIB / name, **{"database.url_file": str(url_file)})
    assert loaded.database.url == "postgresql://jb_worker:secret@db-host/jobbalancer"
    assert loaded.data_dir == "/var/lib/jobbalancer"
    assert loaded.worker_id_file == "/var/lib/jobbalancer/worker-id"


def test_the_server_units_config_is_the_sample() -> None:
    unit = _unit(next(p for p in UNITS if "server" in p.name))
    assert unit["Unit"]["AssertPathExists"] == "/etc/jobbalancer/server.toml"
    assert (CONTRIB / "server.toml").exists()

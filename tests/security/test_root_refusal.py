"""Server and worker refuse to start as root unless told to, and say how to go on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobbalancer import cli, settings
from jobbalancer.cli import up

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to test the refusal")


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBBALANCER_")}
    env["JOBBALANCER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'jb.db'}"
    return subprocess.run(
        [sys.executable, "-m", "jobbalancer", *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [("server", "--port", "0"), ("worker", "--name", "rootless")],
    ids=["server", "worker"],
)
def test_root_is_refused_with_a_message_that_says_what_to_do(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    # When started as root without the override
    done = _run(tmp_path, *args)
    # Then it exits at once with the "refused root" code, naming the way out
    assert done.returncode == cli.RET_ROOT, done.stdout + done.stderr
    message = " ".join((done.stdout + done.stderr).split())
    assert "root" in message
    assert "--allow-root" in message
    # and it never started serving or registered
    assert "serving on" not in message


def test_worker_refuses_run_as_root_user(tmp_path: Path) -> None:
    done = _run(tmp_path, "worker", "--name", "w", "--run-as", "root")
    assert done.returncode == cli.RET_ROOT
    assert "unprivileged" in done.stdout + done.stderr


def test_up_as_root_passes_the_override_to_its_own_server_only() -> None:
    # `up` as root runs each job under a uid of its own, so its server is started with
    # --allow-root while its workers get --run-as dynamic (not --allow-root).
    plan = up.UpPlan.make(settings.Settings(), 1, None)
    assert "--allow-root" in plan.server_argv()
    worker_argv = plan.worker_argv("w-1")
    assert "--allow-root" not in worker_argv
    assert worker_argv[worker_argv.index("--run-as") + 1] == "dynamic"


def test_up_as_root_keeps_an_explicit_run_as_user() -> None:
    loaded = settings.Settings(worker=settings.WorkerSettings(run_as="nobody"))
    worker_argv = up.UpPlan.make(loaded, 1, None).worker_argv("w-1")
    assert worker_argv[worker_argv.index("--run-as") + 1] == "nobody"


def test_worker_refuses_dynamic_uids_unless_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobbalancer import errors
    from jobbalancer.worker import loop

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(errors.ConfigError, match="only root can give each job a uid"):
        loop.check_privileges(settings.WorkerSettings(run_as="dynamic"))


def test_the_override_also_works_from_the_environment(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBBALANCER_")}
    env["JOBBALANCER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'jb.db'}"
    env["JOBBALANCER_SERVER_ALLOW_ROOT"] = "1"
    out = tmp_path / "server.log"
    with open(out, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jobbalancer", "server", "--port", "0"],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "serving on" not in out.read_text(errors="replace"):
            assert server.poll() is None, out.read_text(errors="replace")
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize(
    ("worker", "says"),
    [
        ({"run_as": "dynamic"}, "uids of their own"),
        ({"run_as": "nobody"}, "can read the environment and files of other running jobs"),
        ({"allow_root": True}, "JOBS RUN AS ROOT"),
    ],
)
def test_the_worker_says_what_a_job_can_reach(worker: dict[str, object], says: str) -> None:
    from jobbalancer.worker import loop

    assert says in loop.isolation(settings.WorkerSettings.model_validate(worker))


def test_an_unprivileged_worker_says_its_jobs_share_its_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobbalancer.worker import loop

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    line = loop.isolation(settings.WorkerSettings())
    assert "the worker's own user" in line and "--run-as dynamic" in line


def test_up_as_root_with_allow_root_runs_jobs_as_root_as_told() -> None:
    loaded = settings.Settings(worker=settings.WorkerSettings(allow_root=True))
    plan = up.UpPlan.make(loaded, 1, None)
    worker_argv = plan.worker_argv("w-1")
    assert "--run-as" not in worker_argv and "--allow-root" in worker_argv
    assert not plan.default_run_as

"""`--workdir` for real: the README's `./encode.sh in.mp4` runs in the directory given, on
a worker started as root giving each job a dynamic uid; a directory that uid may not
enter fails the job with the reason and what to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="dynamic uids need a worker started as root"),
]

ENCODE = '#!/bin/sh\necho "encoding $1 in $(pwd) as uid $(id -u)"\n'


@pytest.fixture
def media() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path sits under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="jbtest-media-", dir="/tmp"))
    path.chmod(0o755)
    (path / "encode.sh").write_text(ENCODE)
    (path / "encode.sh").chmod(0o755)
    (path / "in.mp4").write_text("not really a video")
    yield path
    shutil.rmtree(path)


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI, client options before the subcommand (as the README writes it)."""
    argv = [sys.executable, "-m", "jobbalancer", "--url", cluster.url, "--api-key", cluster.key]
    return subprocess.run(
        [*argv, *args], env=cluster.env, capture_output=True, text=True, timeout=60, check=False
    )


def test_submit_workdir_runs_the_readme_example_there(
    make_cluster: Callable[..., Cluster], media: Path
) -> None:
    cluster = make_cluster("sqlite")
    cluster.start_worker("w", "--run-as", "dynamic")

    done = _cli(cluster, "submit", "--workdir", str(media), "--wait", "--", "./encode.sh", "in.mp4")

    assert done.returncode == 0, done.stdout + done.stderr
    job_id = int(done.stdout.split()[0])
    said = cluster.log(job_id)
    assert said.startswith(f"encoding in.mp4 in {media} as uid "), said
    assert int(said.split()[-1]) != 0  # a dynamic uid, not the worker's root
    shown = _cli(cluster, "show", str(job_id))
    assert shown.returncode == 0 and str(media) in shown.stdout

    (media / "private").mkdir(mode=0o700)
    refused = cluster.submit(command="./encode.sh in.mp4", workdir=str(media / "private"))
    failed = cluster.wait_job(refused["id"])

    assert failed["state"] == "failed", failed
    assert f"workdir '{media / 'private'}': a job's dynamic uid may not enter it" in failed["error"]
    assert "chmod o+rx" in failed["error"] and "--run-as USER" in failed["error"]


def test_a_workdir_missing_on_the_worker_fails_the_job(
    make_cluster: Callable[..., Cluster], media: Path
) -> None:
    cluster = make_cluster("sqlite")
    cluster.start_worker("w", "--run-as", "dynamic")

    job = cluster.submit(command="true", workdir=str(media / "nope"))
    failed = cluster.wait_job(job["id"])

    assert failed["state"] == "failed"
    assert failed["error"] == f"workdir '{media / 'nope'}' does not exist on this worker"

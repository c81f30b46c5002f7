"""`jobbalancer parallel` end to end: the real command, a real server and real workers."""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e
Factory = Any
PARALLEL = [sys.executable, "-m", "jobbalancer", "parallel"]

# Names a careless fan-out would run as shell code. If quoting broke, the rm would remove
# the canary directory (and nothing else), and the substitutions would touch files there.
HOSTILE = [
    'a b; rm -rf "$CANARY"',
    "$(touch $CANARY/dollar)",
    "`touch $CANARY/backtick`",
    "it's",
    'say "hi"',
    "ünïcødé ☃ 日本",
    "-n",
    "*",
    "back\\slash",
    "semi;colon|pipe&amp>gt<lt",
    "  spaces  ",
    "{}",
    "dir/file.tar.gz",
]


def _env(cluster: Cluster, **extra: str) -> dict[str, str]:
    env = {**cluster.env, "JOBBALANCER_URL": cluster.url, "JOBBALANCER_API_KEY": cluster.key}
    env.pop("JOBBALANCER_PARALLEL_BAR", None)
    return env | extra


def _run_labelled(cluster: Cluster, label: str) -> list[dict[str, Any]]:
    page = cluster.api.get("/api/v1/jobs", params={"label": label, "limit": 500}).json()
    return list(page["items"])


def test_thousand_inputs_each_run_once_quoted(make_cluster: Factory, tmp_path: Path) -> None:
    # Given a server, two workers, and 1,000 inputs, many of them hostile
    cluster: Cluster = make_cluster()
    for name in ("w1", "w2"):
        cluster.start_worker(name, "--allow-root", "--max-jobs", "8")
    canary, ran = tmp_path / "canary", tmp_path / "ran"
    canary.mkdir()
    ran.mkdir()
    inputs = [f"{HOSTILE[i % len(HOSTILE)]}#{i}" for i in range(1000)]
    joblog = tmp_path / "joblog.tsv"
    # When each runs as `record it; print it; fail every 100th`, with {} bare, in double
    # and in single quotes (each must give the input itself, and never run it)
    command = (
        f"printf '%s\\n' {{}} >> {ran}/{{#}}; printf '%s|%s\\n' {{#}} \"{{}}\"; "
        "test '{}' = \"{}\" && exit $(( {#} % 100 == 0 ))"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [*PARALLEL, "-e", f"CANARY={canary}", "--joblog", str(joblog), "--", command],
        input="\n".join(inputs) + "\n", env=_env(cluster), capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    # Then the exit code counts the 10 failures, and the summary names them
    assert proc.returncode == 10, proc.stderr[-3000:]
    assert "1000 jobs: 990 done, 10 failed" in proc.stderr
    for seq in range(100, 1001, 100):
        assert f"): {inputs[seq - 1]}" in proc.stderr
    # and every input ran exactly once, as one argument, nothing of it run as code
    assert canary.is_dir() and list(canary.iterdir()) == []
    files = {int(p.name): p.read_text() for p in ran.iterdir()}
    assert sorted(files) == list(range(1, 1001))
    assert all(files[seq] == inputs[seq - 1] + "\n" for seq in files)
    # and each job's output was printed once
    printed = Counter(proc.stdout.splitlines())
    assert printed == Counter(f"{seq}|{value}" for seq, value in enumerate(inputs, start=1))
    # and the joblog has a line per job, failures with their exit value
    lines = joblog.read_text().splitlines()
    assert lines[0].split("\t") == ["Seq", "Host", "Starttime", "JobRuntime", "Send",
                                    "Receive", "Exitval", "Signal", "Command"]  # fmt: skip
    rows = [line.split("\t") for line in lines[1:]]
    assert sorted(int(r[0]) for r in rows) == list(range(1, 1001))
    assert {r[1] for r in rows} == {"w1", "w2"}
    assert sorted(int(r[0]) for r in rows if r[6] == "1") == list(range(100, 1001, 100))
    print(f"1000 inputs through parallel: {took:.1f} s")


def test_progress_and_summary_in_a_terminal(make_cluster: Factory, tmp_path: Path) -> None:
    # Given one worker with two slots and six one-second jobs
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root", "--max-jobs", "2")
    # When parallel runs in a terminal
    args = [*PARALLEL, "--", "sleep 0.7; echo out-{#}; exit $(( {} == 3 ))", ":::", *"123456"]
    env = _env(cluster, TERM="xterm-256color", COLUMNS="160", LINES="40")
    env.pop("NO_COLOR", None)
    plain, code = _in_a_pty(args, env, timeout=60)
    # Then it shows a progress bar with the counts, the output, and the summary
    assert code == 1, plain
    assert re.search(r"done \d+\s+failed \d+\s+running [12]\s+waiting [1-4]", plain), plain
    assert re.search(r"6/6 done 5\s+failed 1\s+running 0\s+waiting 0", plain), plain
    assert re.search(r"\d+\.\d/s ETA", plain), plain
    assert all(f"out-{i}" in plain for i in range(1, 7)), plain
    assert "6 jobs: 5 done, 1 failed in" in plain
    assert re.search(r"failed job \d+ \(exit code 1\): 3", plain), plain

    # When Ctrl-C is pressed while two jobs run, it asks on the terminal (stdin holds the
    # inputs), and kills them on "y"
    inputs = tmp_path / "inputs"
    inputs.write_text("30\n31\n")
    line = shlex.join([*PARALLEL, "-l", "run=asked", "--", "sleep"])
    args = ["/bin/sh", "-c", f"exec {line} < {shlex.quote(str(inputs))}"]
    steps = [(r"running 2", b"\x03"), (r"Kill the 2 submitted jobs not ended\? \[y/N\]", b"y\r")]
    plain, code = _in_a_pty(args, env, timeout=60, steps=steps)
    assert code == 130, plain
    assert "asked to kill the 2 submitted jobs not ended" in plain

    def killed() -> bool:
        page = cluster.api.get("/api/v1/jobs", params={"label": "run=asked"}).json()
        return {j["state"] for j in page["items"]} == {"killed"}

    cluster.wait_for(killed, "the jobs killed on Ctrl-C")


def _in_a_pty(
    args: list[str],
    env: dict[str, str],
    timeout: float,
    steps: Sequence[tuple[str, bytes]] = (),
) -> tuple[str, int]:
    """Run ``args`` in a new terminal; type each step's bytes once its pattern has shown
    up. The whole output and the exit code."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, its stdio the terminal
        try:
            os.execve(args[0], args, env)  # noqa: S606 (our own command, no shell)
        finally:
            os._exit(127)
    todo = list(steps)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if todo and re.search(todo[0][0], _plain(seen)):
                os.write(fd, todo.pop(0)[1])
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            seen += data
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return _plain(seen), os.waitstatus_to_exitcode(status)


def _plain(output: bytes) -> str:
    """Terminal output without its colours and cursor moves."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace"))


def test_halt_retries_scripts_and_ctrl_c(make_cluster: Factory, tmp_path: Path) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root", "--max-jobs", "1")
    env = _env(cluster)

    def parallel(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if "input" not in kwargs:
            kwargs["stdin"] = subprocess.DEVNULL
        return subprocess.run(
            [*PARALLEL, *args], env=env, capture_output=True, text=True, timeout=60,
            check=False, **kwargs,
        )  # fmt: skip

    # --halt soon,fail=1: after the first failure the jobs not started are killed
    halted = parallel("--halt", "soon,fail=1", "-l", "run=halt", "--",
                      "sleep 0.1; exit $(( {} == 2 ? 5 : 0 ))",
                      ":::", *map(str, range(1, 21)))  # fmt: skip
    assert halted.returncode == 5, halted.stderr  # the failed job's code, as GNU parallel
    assert "halted after 1 failed" in halted.stderr
    states = Counter(j["state"] for j in _run_labelled(cluster, "run=halt"))
    assert states["failed"] == 1 and states["killed"] >= 10, states
    assert states["done"] + states["failed"] + states["killed"] == 20, states

    # --retries: a job that fails once and then succeeds counts as done, its joblog too
    marks = tmp_path / "marks"
    marks.mkdir()
    joblog = tmp_path / "retries.tsv"
    retried = parallel("--retries", "1", "--joblog", str(joblog), "--",
                       f"test -e {marks}/{{#}} || {{ touch {marks}/{{#}}; exit 9; }}; echo ok {{}}",
                       ":::", "x", "y z")  # fmt: skip
    assert retried.returncode == 0, retried.stderr
    assert sorted(retried.stdout.splitlines()) == ["ok x", "ok y z"]
    assert [line.split("\t")[6] for line in joblog.read_text().splitlines()[1:]] == ["0", "0"]

    # --script: values are argv entries as they are; --tag prefixes the input
    r = cluster.api.post(
        "/api/v1/scripts",
        json={"name": "show", "interpreter": "sh", "content": 'printf "[%s]" "$@"; echo'},
    )
    assert r.status_code == 201, r.text
    scripted = parallel("--tag", "--script", "show", "-p", "{/}", "-p", "{#}",
                        "::::", "-", input="$(id)/a b\n'q'\n")  # fmt: skip
    assert scripted.returncode == 0, scripted.stderr
    assert sorted(scripted.stdout.splitlines()) == ["$(id)/a b\t[a b][1]", "'q'\t['q'][2]"]

    # Ctrl-C with stdin not a terminal: nothing asked, the jobs go on, and it says so
    left = _interrupt(cluster, env, "run=left")
    assert left.returncode == 130, left.stderr
    assert "submitted jobs not ended go on" in left.stderr
    assert {j["state"] for j in _run_labelled(cluster, "run=left")} <= {"running", "waiting"}
    for job in _run_labelled(cluster, "run=left"):  # make room on the worker
        cluster.api.post(f"/api/v1/jobs/{job['id']}/kill")
    # --kill-on-exit: Ctrl-C kills them
    killed = _interrupt(cluster, env, "run=killed", "--kill-on-exit")
    assert killed.returncode == 130, killed.stderr
    assert "asked to kill the 3 submitted jobs" in killed.stderr

    def all_killed() -> bool:
        return {j["state"] for j in _run_labelled(cluster, "run=killed")} == {"killed"}

    cluster.wait_for(all_killed, "the jobs killed on Ctrl-C")


def _interrupt(
    cluster: Cluster, env: dict[str, str], label: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Start a run of three long jobs, press Ctrl-C once all are submitted and one runs
    (a Ctrl-C in the middle of submitting is the unit tests')."""
    proc = subprocess.Popen(
        [*PARALLEL, "-l", label, *extra, "--", "sleep", ":::", "30", "31", "32"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:

        def started() -> bool:
            jobs = _run_labelled(cluster, label)
            return len(jobs) == 3 and any(j["state"] == "running" for j in jobs)

        cluster.wait_for(started, "a job of the run to start")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

"""A job plays the attacker against `jobbalancer up`: the database password and the SQLite
database must be out of its reach (issue 9, items 1 and 2).

Real processes: `up` started as root, as documented, so its jobs run as an unprivileged
user (which one, nobody or a uid of the job's own, does not matter here: only that the
job cannot read). The job reads every /proc/*/cmdline and /proc/*/environ it can and
looks for the password; on SQLite it tries to open the database and its -wal and -shm.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobbalancer.client import Client
from tests.conftest import MakeDatabaseUrl

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="jobs run as another user only under root"),
]

_START_WAIT = 60.0


@dataclass
class Up:
    popen: subprocess.Popen[bytes]
    out: Path
    url: str
    key: str

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def run_job(self, command: str) -> str:
        """The job's output once it has finished (it must finish)."""
        with Client(self.url, self.key) as c:
            job = c.submit(command=command)
            done = c.wait(job["id"], timeout=60)
            text = c.log(job["id"])[0]
        assert done["state"] == "done", f"{done}\n{text}"
        return text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def world_traversable() -> Iterator[Path]:
    """A directory others may enter (pytest's tmp_path is under a 0700 root dir, where the
    job could read nothing anyway and the test would prove nothing)."""
    base = Path(tempfile.mkdtemp(prefix="jb-attack-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def start_up(world_traversable: Path) -> Iterator[object]:
    """Starts `jobbalancer up` (one worker) with extra environment; stops it at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], *args: str, key: str = "") -> Up:
        port = _free_port()
        out = world_traversable / f"up-{len(started)}.out"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBBALANCER_")}
        with open(out, "wb") as fh:
            popen = subprocess.Popen(
                [sys.executable, "-m", "jobbalancer", "up", "--port", str(port), "--workers", "1",
                 *args],
                env={**clean, **env}, stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=world_traversable, start_new_session=True,
            )  # fmt: skip
        started.append(popen)
        deadline = time.monotonic() + _START_WAIT
        ready = "Try it:" if not key else "Stop with Ctrl-C"  # the first start shows a key
        while ready not in out.read_text(errors="replace"):
            assert popen.poll() is None, out.read_text(errors="replace")
            assert time.monotonic() < deadline, out.read_text(errors="replace")
            time.sleep(0.1)
        shown = re.search(r"API key\s+(jb_[\w-]+)", out.read_text(errors="replace"))
        assert shown is not None or key
        return Up(popen, out, f"http://127.0.0.1:{port}", shown[1] if shown else key)

    yield start
    for popen in started:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()


def _probe(password: str) -> str:
    """A job that reads every command line and environment it can and counts hits of
    ``password``, which its own command line must not hold: it is put together at run time."""
    half = len(password) // 2
    return (
        f"a='{password[:half]}'; b='{password[half:]}'; pw=\"$a$b\"; r=0; h=0; j=0\n"
        "for f in /proc/[0-9]*/cmdline /proc/[0-9]*/environ; do\n"
        "  c=$(tr '\\000' ' ' 2>/dev/null < \"$f\") || continue\n"
        "  r=$((r+1))\n"
        '  case "$c" in *"$pw"*) h=$((h+1)); echo "HIT $f";; esac\n'
        '  case "$c" in *"-m jobbalancer"*) j=$((j+1));; esac\n'
        "done\n"
        'echo "readable=$r hits=$h ours=$j uid=$(id -u)"\n'
    )


def _counts(text: str) -> dict[str, int]:
    found = re.search(r"readable=(\d+) hits=(\d+) ours=(\d+) uid=(\d+)", text)
    assert found is not None, text
    return dict(zip(("readable", "hits", "ours", "uid"), map(int, found.groups()), strict=True))


def test_a_job_cannot_find_the_database_password_in_any_process(
    make_database_url: MakeDatabaseUrl, start_up: object
) -> None:
    """PostgreSQL trusts local connections, so a made-up password still connects: the
    password is real to every process that handles the URL."""
    password = "pw-" + secrets.token_hex(12)
    url = sa.make_url(make_database_url("postgresql")).set(password=password)
    up = start_up(  # type: ignore[operator]
        {"JOBBALANCER_DATABASE_URL": url.render_as_string(hide_password=False)}
    )

    text = up.run_job(_probe(password))

    counts = _counts(text)
    assert counts["hits"] == 0, text
    assert counts["uid"] != 0, text  # it did run unprivileged
    # Not vacuous: it read command lines, those of `up`, its server and worker among them.
    assert counts["readable"] > 0 and counts["ours"] >= 3, text
    assert password not in up.output()


def test_a_password_given_to_up_as_a_flag_is_warned_about_and_not_passed_on(
    make_database_url: MakeDatabaseUrl, start_up: object
) -> None:
    """`up`'s own command line is the user's to choose (and shows the password: warned
    about); the server's and the worker's, built by `up`, must not repeat it."""
    password = "pw-" + secrets.token_hex(12)
    url = sa.make_url(make_database_url("postgresql")).set(password=password)
    up = start_up({}, "--database-url", url.render_as_string(hide_password=False))

    counts = _counts(up.run_job(_probe(password)))

    assert "/proc/PID/cmdline" in up.output()
    assert counts["hits"] == 1  # `up`'s own command line, no other


_READ_DB = (
    "for f in {files}; do\n"
    '  if cat "$f" > /dev/null 2>&1; then echo "READ $f"; else echo "DENIED $f"; fi\n'
    "done\n"
    'ls {data} > /dev/null 2>&1 && echo "LISTED" || echo "NOT LISTED"\n'
    "cat {beside} > /dev/null && echo BESIDE\n"
)


def _sqlite_probe(data: Path) -> str:
    files = " ".join(str(data / f"jobbalancer.db{s}") for s in ("", "-wal", "-shm"))
    return _READ_DB.format(files=files, data=data, beside=data.parent / "public.txt")


def _modes(data: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [data, *data.iterdir()]}


def _assert_private(data: Path) -> None:
    modes = _modes(data)
    assert modes.pop("data") == 0o700
    assert modes and set(modes.values()) == {0o600}, modes


def _assert_unreadable(text: str, data: Path) -> None:
    assert "BESIDE" in text, text  # the job does reach the directory around the data dir
    assert "READ " not in text and "NOT LISTED" in text, text
    assert text.count("DENIED") == 3, text


def test_a_job_cannot_open_the_sqlite_database(world_traversable: Path, start_up: object) -> None:
    data = world_traversable / "data"
    (world_traversable / "public.txt").write_text("anyone may read this\n")
    (world_traversable / "public.txt").chmod(0o644)
    old = os.umask(0o022)  # as a user's shell would have it
    try:
        up = start_up({"JOBBALANCER_DATA_DIR": str(data)})  # type: ignore[operator]
    finally:
        os.umask(old)

    _assert_private(data)
    text = up.run_job(_sqlite_probe(data))
    _assert_unreadable(text, data)
    _assert_private(data)  # what the worker and its jobs did since left it so


def test_an_old_world_readable_sqlite_layout_is_repaired_on_start(
    world_traversable: Path, start_up: object
) -> None:
    data = world_traversable / "data"
    (world_traversable / "public.txt").write_text("anyone may read this\n")
    (world_traversable / "public.txt").chmod(0o644)
    first = start_up({"JOBBALANCER_DATA_DIR": str(data)})  # type: ignore[operator]
    first.popen.send_signal(signal.SIGTERM)
    assert first.popen.wait(timeout=30) == 0
    data.chmod(0o755)  # as an older version left it
    for name in ("jobbalancer.db", "jobbalancer.db-wal", "jobbalancer.db-shm"):
        (data / name).touch()
        (data / name).chmod(0o644)

    up = start_up({"JOBBALANCER_DATA_DIR": str(data)}, key=first.key)  # type: ignore[operator]

    _assert_private(data)
    log = up.output()
    assert log.count("made the data dir private") == 1, log
    assert log.count("made the SQLite database private") == 1, log
    _assert_unreadable(up.run_job(_sqlite_probe(data)), data)

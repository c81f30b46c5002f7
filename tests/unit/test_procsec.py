"""procsec: non-dumpable processes, private directories and files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobbalancer import procsec

_CHILD = """
import ctypes, os, sys
from jobbalancer import procsec
ok = procsec.make_undumpable()
dumpable = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
print(ok, dumpable, os.stat(f"/proc/{os.getpid()}/environ").st_uid)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_make_undumpable_hides_the_environment_from_the_same_uid() -> None:
    # In a child: a non-dumpable pytest would be a surprise to every later test.
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()

    assert out == ["True", "0", "0"]  # /proc/PID/environ now belongs to root


def test_make_private_dir_creates_and_repairs(tmp_path: Path) -> None:
    new = tmp_path / "a" / "b"
    assert procsec.make_private_dir(new) is None
    assert new.stat().st_mode & 0o777 == 0o700

    new.chmod(0o755)
    assert procsec.make_private_dir(new) == f"{new} 0755 -> 0700"
    assert new.stat().st_mode & 0o777 == 0o700
    assert procsec.make_private_dir(new) is None


def test_make_private_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert procsec.make_private_file(path) is None  # missing: nothing to do
    path.touch()
    path.chmod(0o664)
    assert procsec.make_private_file(path) == f"{path} 0664 -> 0600"
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o400)
    assert procsec.make_private_file(path) is None  # private already: left as it is


def test_private_umask_returns_the_old_one() -> None:
    old = procsec.private_umask()
    try:
        assert os.umask(0o077) == 0o077
    finally:
        os.umask(old)

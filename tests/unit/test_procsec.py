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


# -- create_whole: a private file made whole or not at all --------------------------------


def test_create_whole_makes_a_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "id"
    assert procsec.create_whole(path, "first\n") is True
    assert path.read_text() == "first\n"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert procsec.create_whole(path, "second\n") is False  # it exists: left as it is
    assert path.read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id"]  # no draft left behind


def test_create_whole_never_writes_through_a_link(tmp_path: Path) -> None:
    victim, path = tmp_path / "victim", tmp_path / "id"
    victim.write_text("keep\n")
    path.symlink_to(victim)
    assert procsec.create_whole(path, "planted\n") is False
    assert victim.read_text() == "keep\n"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert procsec.create_whole(dangling, "planted\n") is False
    assert not (tmp_path / "nowhere").exists()


def test_racers_see_no_file_or_a_whole_one(tmp_path: Path) -> None:
    # Processes starting at once (as two workers on one disk): exactly one makes it, and
    # every reader after any call finds it whole, never empty or half written.
    path = tmp_path / "id"
    code = (
        "import sys; from pathlib import Path; from jobbalancer import procsec\n"
        "p = Path(sys.argv[1]); text = sys.argv[2] * 20000 + '\\n'\n"
        "made = procsec.create_whole(p, text)\n"
        "seen = p.read_text()\n"
        "print(made, len(seen), seen == seen[0] * (len(seen) - 1) + '\\n')\n"
    )
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), letter], stdout=subprocess.PIPE, text=True
        )
        for letter in "abcdefgh"
    ]
    results = [r.communicate(timeout=60)[0].split() for r in racers]
    assert sum(made == "True" for made, _, _ in results) == 1
    assert all(size == "20001" and whole == "True" for _, size, whole in results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id"]


def test_the_file_appears_only_once_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing is at the path until it is linked there, written in full and flushed.
    path, text, seen = tmp_path / "id", "x" * 100_000 + "\n", []
    real_link = os.link

    def link(src: str | Path, dst: str | Path) -> None:
        seen.append((Path(dst).exists(), Path(src).read_text()))
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    assert procsec.create_whole(path, text, sync=True) is True
    assert seen == [(False, text)]
    assert path.read_text() == text

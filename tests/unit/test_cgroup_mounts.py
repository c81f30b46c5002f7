"""The worker's reading of the host's mounts: where cgroup2 and the v1 hierarchies are, and
whether job starts wait for the move into their cgroups (``favordynmods``, issue 16)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jobbalancer.worker import cgroups

HYBRID = """\
25 31 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
27 25 0:24 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw{extra}
50 31 0:40 / /mnt/with\\040space rw - ext4 /dev/vda rw
"""


Mountinfo = Callable[..., None]


@pytest.fixture
def mountinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Mountinfo:
    """Make the worker read this mountinfo, its own cgroup being ``base``."""

    def write(extra: str = "", base: str | None = "/sys/fs/cgroup/unified/workers") -> None:
        path = tmp_path / "mountinfo"
        path.write_text(HYBRID.format(extra=extra))
        monkeypatch.setattr(cgroups, "_MOUNTINFO", str(path))
        monkeypatch.setattr(cgroups, "base_dir", lambda: base)

    return write


def test_mounts_are_read_with_their_options(mountinfo: Mountinfo) -> None:
    mountinfo(",nsdelegate")
    mounts = {mount: (kind, options) for kind, mount, _, options in cgroups._mounts()}
    assert mounts["/sys/fs/cgroup/unified"] == ("cgroup2", ["rw", "nsdelegate"])
    assert mounts["/mnt/with space"][0] == "ext4"  # octal escapes undone
    assert list(cgroups._cgroup2_mounts()) == [("/sys/fs/cgroup/unified", "/")]
    assert list(cgroups._v1_mounts("memory")) == [("/sys/fs/cgroup/memory", "/")]
    assert list(cgroups._v1_mounts("pids")) == []


def test_a_mount_without_favordynmods_is_named_with_the_fix(mountinfo: Mountinfo) -> None:
    mountinfo()
    note = cgroups.slow_moves(kernel="6.18.44")
    assert note is not None
    assert "/sys/fs/cgroup/unified is mounted without favordynmods" in note
    assert "mount -o remount,favordynmods /sys/fs/cgroup/unified" in note


def test_favordynmods_says_nothing(mountinfo: Mountinfo) -> None:
    mountinfo(",favordynmods")
    assert cgroups.slow_moves(kernel="6.18.44") is None


def test_nothing_to_say_before_linux_6_or_without_job_cgroups(mountinfo: Mountinfo) -> None:
    mountinfo()
    assert cgroups.slow_moves(kernel="5.15.0-91-generic") is None  # no favordynmods there
    assert cgroups.slow_moves(kernel="weird") is None
    mountinfo(base=None)
    assert cgroups.slow_moves(kernel="6.18.44") is None


def test_an_unreadable_mountinfo_is_no_mounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroups, "_MOUNTINFO", str(tmp_path / "missing"))
    monkeypatch.setattr(cgroups, "base_dir", lambda: "/sys/fs/cgroup/unified")
    assert list(cgroups._mounts()) == []
    assert cgroups.slow_moves(kernel="6.18.44") is None

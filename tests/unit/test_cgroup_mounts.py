"""The worker's reading of the host's mounts (where cgroup2 and the v1 hierarchies are),
and the line its log gets the first time moving a job into its cgroup is slow: the kernel
waited for an RCU grace period, which the host's ``favordynmods`` spares (issue 16)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jobbalancer.worker import cgroups, spawn

# As systemd hosts write it: optional fields ("shared:9") before the " - ".
MOUNTS = """\
25 31 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/memory rw,relatime shared:10 master:2 - cgroup cgroup rw,memory
27 25 0:24 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu
40 31 0:39 / /sys/fs/cgroup/unified2 rw,relatime - cgroup2 other rw,favordynmods
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:12 - cgroup2 {source} rw{extra}
50 31 0:40 / /mnt/with\\040space rw - ext4 /dev/vda rw
"""

Host = Callable[..., None]


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    """Make the worker see these mounts and cgroup features, its own cgroup being ``base``;
    nothing said yet."""

    def make(
        extra: str = "",
        base: str | None = "/sys/fs/cgroup/unified/workers",
        features: str = "nsdelegate\nfavordynmods\n",
        source: str = "cgroup2",
    ) -> None:
        mountinfo, feature_file = tmp_path / "mountinfo", tmp_path / "features"
        mountinfo.write_text(MOUNTS.format(extra=extra, source=source))
        feature_file.write_text(features)
        monkeypatch.setattr(cgroups, "_MOUNTINFO", str(mountinfo))
        monkeypatch.setattr(cgroups, "_FEATURES", str(feature_file))
        monkeypatch.setattr(cgroups, "base_dir", lambda: base)
        monkeypatch.setattr(cgroups, "_slow_move_said", False)

    return make


def test_mounts_are_read_with_their_options(host: Host) -> None:
    host(",nsdelegate")
    mounts = {mount: (kind, options) for kind, mount, _, options in cgroups._mounts()}
    assert mounts["/sys/fs/cgroup/unified"] == ("cgroup2", ["rw", "nsdelegate"])
    assert mounts["/sys/fs/cgroup/memory"] == ("cgroup", ["rw", "memory"])
    assert mounts["/mnt/with space"][0] == "ext4"  # octal escapes undone
    assert ("/sys/fs/cgroup/unified", "/") in list(cgroups._cgroup2_mounts())
    assert list(cgroups._v1_mounts("memory")) == [("/sys/fs/cgroup/memory", "/")]
    assert list(cgroups._v1_mounts("pids")) == []


def test_an_empty_source_keeps_the_options_in_place(host: Host) -> None:
    host(",favordynmods", source="")
    mounts = {mount: options for _, mount, _, options in cgroups._mounts()}
    assert mounts["/sys/fs/cgroup/unified"] == ["rw", "favordynmods"]


def test_the_mount_holding_the_cgroup_not_a_sibling_with_a_longer_name(host: Host) -> None:
    host()
    assert cgroups._mount_of("/sys/fs/cgroup/unified/workers/w1") == (
        "/sys/fs/cgroup/unified",
        ["rw"],
    )
    assert cgroups._mount_of("/sys/fs/cgroup/unified") == ("/sys/fs/cgroup/unified", ["rw"])
    assert cgroups._mount_of("/sys/fs/cgroup/unified2/x") == (
        "/sys/fs/cgroup/unified2",
        ["rw", "favordynmods"],
    )
    assert cgroups._mount_of("/elsewhere") is None
    assert cgroups._mount_of(None) is None


def test_a_quick_move_says_nothing(host: Host) -> None:
    host()
    assert cgroups.slow_move(0.0004) is None
    assert cgroups.slow_move(cgroups.SLOW_MOVE / 2) is None


def test_a_slow_move_names_the_mount_and_the_fix_once(host: Host) -> None:
    host()
    note = cgroups.slow_move(0.0112)
    assert note is not None
    assert note.startswith("moving a job into its cgroup took 11.2 ms")
    assert "cgroup2 at /sys/fs/cgroup/unified is mounted without favordynmods" in note
    assert "mount -o remount,favordynmods /sys/fs/cgroup/unified" in note
    assert cgroups.slow_move(0.02) is None  # said once per process


def test_with_favordynmods_on_a_slow_move_is_only_reported(host: Host) -> None:
    host(",favordynmods")
    note = cgroups.slow_move(0.009)
    assert note is not None and "remount" not in note


def test_a_kernel_without_favordynmods_gets_the_other_remedy(host: Host) -> None:
    host(features="nsdelegate\n")
    note = cgroups.slow_move(0.009)
    assert note is not None
    assert "no favordynmods" in note and "rcu_expedited" in note and "remount" not in note


def test_unreadable_files_are_no_mounts_and_no_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroups, "_MOUNTINFO", str(tmp_path / "missing"))
    monkeypatch.setattr(cgroups, "_FEATURES", str(tmp_path / "missing"))
    monkeypatch.setattr(cgroups, "_slow_move_said", False)
    assert list(cgroups._mounts()) == []
    assert cgroups._features() == set()
    note = cgroups.slow_move(0.01)
    assert note is not None and "rcu_expedited" in note


class _SlowGroup(cgroups.JobCgroup):
    """A cgroup whose move takes as long as a grace period would."""

    def add(self, pid: int) -> None:
        time.sleep(0.012)


def test_the_worker_says_it_when_a_start_waited(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    host()
    caplog.set_level("INFO", logger=spawn.__name__)
    group = _SlowGroup("/sys/fs/cgroup/unified/workers/jobbalancer-w@1-x")
    assert spawn.move_in(group, 4242) is group
    assert spawn.move_in(group, 4243) is group
    said = [r.getMessage() for r in caplog.records if "cgroup" in r.getMessage()]
    assert len(said) == 1
    assert said[0].startswith("job starts: moving a job into its cgroup took 1")

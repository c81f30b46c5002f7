"""A worker's identity: the machine id file, the process holding a name, and the decision
whether a starting worker may take a name."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from jobbalancer import cli, errors
from jobbalancer.registry import Holder
from jobbalancer.worker import identity, presence
from jobbalancer.worker.identity import Me, Next, Refuse, Take, Wait, decide

MID = "ab12cd34" + "0" * 24
OTHER = "ffee0000" + "1" * 24
ME = Me(MID, "jbhost", "/var/lib/jobbalancer/worker-id")
T = 3.0


@pytest.fixture
def system_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "machine-id"
    path.write_text("1111\n")
    monkeypatch.setattr(identity, "SYSTEM_MACHINE_ID", str(path))
    return path


def test_the_id_file_is_made_once_world_readable_and_read_back(
    tmp_path: Path, system_id: Path
) -> None:
    path = tmp_path / "state" / "worker-id"
    first = identity.machine_id(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().splitlines() == [first, "1111"]
    assert identity.machine_id(str(path)) == first
    assert len(first) == 32


def test_a_new_id_when_the_machine_id_changed_since(
    tmp_path: Path, system_id: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "worker-id"
    first = identity.machine_id(str(path))
    system_id.write_text("2222\n")  # a clone that got a machine-id of its own
    second = identity.machine_id(str(path))
    assert second != first
    assert "this machine is a clone" in caplog.text
    assert identity.machine_id(str(path)) == second  # and it is kept from then on


def test_without_a_machine_id_the_file_alone_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity, "SYSTEM_MACHINE_ID", str(tmp_path / "none"))
    path = tmp_path / "worker-id"
    assert identity.machine_id(str(path)) == identity.machine_id(str(path))


@pytest.mark.parametrize("content", ["", "not hex at all\n", "abc\n"])
def test_an_id_file_we_did_not_write_is_refused(
    tmp_path: Path, system_id: Path, content: str
) -> None:
    path = tmp_path / "worker-id"
    path.write_text(content)
    with pytest.raises(errors.ConfigError, match="is not one jobbalancer wrote: delete it"):
        identity.machine_id(str(path))


def test_an_id_file_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(
        errors.ConfigError, match=r"cannot (read|create) the worker id file .*Not a dir"
    ):
        identity.machine_id(str(blocker / "worker-id"))


def test_this_process_is_alive_here_and_a_dead_one_is_not() -> None:
    me = identity.Instance.here()
    assert identity.alive_here(str(me)) is True
    gone = identity.Instance(me.boot_id, me.pidns, me.pid, me.start_time - 1000)
    assert identity.alive_here(str(gone)) is False  # our pid, another start: a reused pid
    dead = identity.Instance(me.boot_id, me.pidns, 2**22 + 1, me.start_time)
    assert identity.alive_here(str(dead)) is False


@pytest.mark.parametrize(
    "instance",
    [None, "", "garbage", "otherboot/1:2/1/1.00"],
)
def test_another_boot_or_namespace_cannot_be_told(instance: str | None) -> None:
    assert identity.alive_here(instance) is None


def test_another_pid_namespace_cannot_be_told() -> None:
    me = identity.Instance.here()
    elsewhere = identity.Instance(me.boot_id, "0:1", me.pid, me.start_time)
    assert identity.alive_here(str(elsewhere)) is None


def test_instance_round_trips() -> None:
    me = identity.Instance.here()
    parsed = identity.Instance.parse(str(me))
    assert parsed is not None
    assert (parsed.boot_id, parsed.pidns, parsed.pid) == (me.boot_id, me.pidns, os.getpid())
    assert len(str(me)) <= 160  # workers.instance


def test_default_names_are_the_host_then_its_own_then_numbered() -> None:
    names = identity.default_names("jbhost", MID)
    assert names[:3] == ["jbhost", "jbhost-ab12cd", "jbhost-ab12cd-2"]
    assert names[-1] == "jbhost-ab12cd-9"


def _holder(
    *,
    mid: str | None = MID,
    state: str = "online",
    age: float = 0.5,
    host: str = "jbhost",
) -> Holder:
    return Holder(1, "jbhost", host, state, 77, "s", mid, "i", age)


def _decide(
    holder: Holder | None, *, explicit: bool, alive: bool | None = None, waited: bool = False
) -> identity.Decision:
    return decide(
        holder, ME, explicit=explicit, worker_timeout=T, alive_here=lambda _: alive, waited=waited
    )


@pytest.mark.parametrize("explicit", [True, False])
def test_a_free_name_is_taken(explicit: bool) -> None:
    assert _decide(None, explicit=explicit) == Take()


@pytest.mark.parametrize(
    ("mid", "explicit", "expected"),
    [
        (MID, True, Take()),
        (MID, False, Take()),
        (None, True, Take()),
        (None, False, Take()),
        (OTHER, True, Take()),  # --name: this name is this worker's
        (OTHER, False, Next()),  # another machine's default name: not ours
    ],
)
@pytest.mark.parametrize(("state", "age"), [("offline", 0.1), ("online", T), ("draining", 99.0)])
def test_an_offline_or_stale_holder(
    mid: str | None, explicit: bool, expected: identity.Decision, state: str, age: float
) -> None:
    assert _decide(_holder(mid=mid, state=state, age=age), explicit=explicit) == expected


@pytest.mark.parametrize("explicit", [True, False])
def test_our_dead_predecessor_is_replaced_at_once(explicit: bool) -> None:
    assert _decide(_holder(), explicit=explicit, alive=False) == Take()


def test_a_live_worker_of_ours_is_refused_under_its_own_name() -> None:
    decision = _decide(_holder(), explicit=True, alive=True)
    assert decision == Refuse("worker 'jbhost' already runs here (pid 77)")


def test_a_second_default_named_worker_on_one_machine_moves_on() -> None:
    assert _decide(_holder(), explicit=False, alive=True) == Next()


@pytest.mark.parametrize("explicit", [True, False])
def test_our_id_elsewhere_is_waited_for_once_then_refused_as_a_clone(explicit: bool) -> None:
    assert _decide(_holder(age=1.0), explicit=explicit) == Wait(T - 1.0 + 0.5)
    refused = _decide(_holder(age=0.2), explicit=explicit, waited=True)
    assert isinstance(refused, Refuse)
    assert refused.message == (
        "another worker with this machine's id ab12cd34 (from /var/lib/jobbalancer/worker-id) "
        "runs as 'jbhost' on host 'jbhost' (pid 77): this machine was cloned with its id "
        "file; delete that file here (a new id is made at the next start) or give this "
        "worker --name"
    )


def test_a_clone_whose_twin_died_meanwhile_takes_the_name() -> None:
    assert _decide(_holder(age=T + 0.1), explicit=False, waited=True) == Take()


def test_another_machines_live_worker_refuses_a_given_name() -> None:
    refused = _decide(_holder(mid=OTHER, host="other"), explicit=True)
    assert refused == Refuse(
        "worker name 'jbhost' is in use by a live worker on host 'other' (machine ffee0000, "
        "pid 77, last heartbeat 0.5 s ago): give this worker a name of its own with --name "
        "(JOBBALANCER_WORKER_NAME, worker.name)"
    )


def test_another_machines_live_worker_moves_a_default_name_on() -> None:
    assert _decide(_holder(mid=OTHER, host="jbhost"), explicit=False) == Next()


@pytest.mark.parametrize("explicit", [True, False])
def test_a_live_row_without_machine_id_from_our_host_is_waited_for(explicit: bool) -> None:
    # Written by a version before machine ids: maybe our own predecessor.
    assert _decide(_holder(mid=None, age=2.0), explicit=explicit) == Wait(1.5)
    after = _decide(_holder(mid=None, age=0.1), explicit=explicit, waited=True)
    assert after == (Refuse(identity.in_use_message(_holder(mid=None, age=0.1))) if explicit
                     else Next())  # fmt: skip


@pytest.mark.parametrize("explicit", [True, False])
def test_a_live_row_without_machine_id_from_another_host(explicit: bool) -> None:
    decision = _decide(_holder(mid=None, host="elsewhere"), explicit=explicit)
    assert isinstance(decision, Refuse if explicit else Next)
    if isinstance(decision, Refuse):
        assert "on host 'elsewhere' (pid 77," in decision.message


def test_the_exit_codes_agree_with_the_cli() -> None:
    assert (presence.EXIT_CONFIG, presence.EXIT_SCHEMA) == (cli.RET_CONFIG, cli.RET_SCHEMA)


def test_a_zombie_is_dead() -> None:
    child = subprocess.Popen(["true"])
    try:
        proc = psutil.Process(child.pid)
        deadline = time.monotonic() + 10
        while proc.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)  # bounded: `true` exits at once, and we have not reaped it
        me = identity.Instance.here()
        zombie = identity.Instance(me.boot_id, me.pidns, child.pid, proc.create_time())
        assert identity.alive_here(str(zombie)) is False
    finally:
        child.wait()


def test_the_id_file_is_private_as_every_file_in_the_data_dir(
    tmp_path: Path, system_id: Path
) -> None:
    old = os.umask(0o077)
    try:
        identity.machine_id(str(tmp_path / "worker-id"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "worker-id").stat().st_mode) == 0o600


@pytest.mark.parametrize("dangling", [False, True])
def test_a_link_in_place_of_the_id_file_is_refused_and_its_target_untouched(
    tmp_path: Path, system_id: Path, dangling: bool
) -> None:
    target = tmp_path / "shadow"
    if not dangling:
        target.write_text(f"{MID}\n1111\n")
        target.chmod(0o600)
    (tmp_path / "worker-id").symlink_to(target)

    with pytest.raises(errors.ConfigError, match="cannot read the worker id file"):
        identity.machine_id(str(tmp_path / "worker-id"))

    if dangling:
        assert not target.exists()  # nothing made through the link
    else:
        assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_workers_starting_at_once_on_one_disk_agree_on_the_id(
    tmp_path: Path, system_id: Path
) -> None:
    # Each as its own process, as workers are: one makes the file, all read the same id
    # (one that read it while it was being written used to find it empty and refuse it).
    path = tmp_path / "state" / "worker-id"
    code = (
        "import sys; from jobbalancer.worker import identity\n"
        f"identity.SYSTEM_MACHINE_ID = {str(system_id)!r}\n"
        "print(identity.machine_id(sys.argv[1]))\n"
    )
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outs = [s.communicate(timeout=60) for s in starts]
    assert all(not err for _, err in outs), outs
    ids = {out.strip() for out, _ in outs}
    assert len(ids) == 1 and len(ids.pop()) == 32
    assert path.read_text().splitlines()[1] == "1111"

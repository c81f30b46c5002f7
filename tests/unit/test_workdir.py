"""A job's workdir on the worker: refused before the start unless the job's user (a
--run-as user, any dynamic uid, or the worker's own) may enter and list it; the job then
runs there, with $HOME/$TMPDIR still its private directory."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobbalancer.cli import formatting
from jobbalancer.worker import jobenv, runner, spawn, uids

pytestmark = pytest.mark.timeout(30)

# A user who owns nothing here but the directories a test gives it.
OTHER = uids.Identity(uid=54321, gid=54321, name="jbtest", home="/")
ROOT_ONLY = "drwx------ root root"


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path sits under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="jbtest-workdir-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _dir(base: Path, mode: int, name: str = "d") -> Path:
    path = base / name
    path.mkdir()
    path.chmod(mode)
    return path


@pytest.mark.parametrize("ident", [OTHER, spawn.ANY_DYNAMIC], ids=["run-as", "dynamic"])
def test_a_directory_others_may_list_is_usable(base: Path, ident: uids.Identity) -> None:
    jobenv.check_workdir(str(_dir(base, 0o755)), ident)
    jobenv.check_workdir(str(_dir(base, 0o705, "other-bits-only")), ident)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make root-owned dirs for others")
@pytest.mark.parametrize(
    ("mode", "ident", "says"),
    [
        (0o711, spawn.ANY_DYNAMIC, "a job's dynamic uid may not enter it (drwx--x--x root root)"),
        (0o700, spawn.ANY_DYNAMIC, f"a job's dynamic uid may not enter it ({ROOT_ONLY})"),
        (0o744, spawn.ANY_DYNAMIC, "(drwxr--r-- root root)"),
        (0o700, OTHER, f"user 'jbtest' may not enter it ({ROOT_ONLY})"),
        (0o711, OTHER, "user 'jbtest' may not enter it (drwx--x--x root root)"),
    ],
)
def test_a_directory_the_user_may_not_list_and_enter_is_refused(
    base: Path, mode: int, ident: uids.Identity, says: str
) -> None:
    path = _dir(base, mode)

    with pytest.raises(jobenv.NotUsable) as refused:
        jobenv.check_workdir(str(path), ident)

    assert str(refused.value).startswith(f"workdir '{path}': ")
    assert says in str(refused.value)


def test_the_dynamic_uid_refusal_says_what_to_do(base: Path) -> None:
    path = _dir(base, 0o700)
    os.chown(path, os.geteuid(), os.getegid())

    with pytest.raises(jobenv.NotUsable, match=r"chmod o\+rx.*--run-as USER"):
        jobenv.check_workdir(str(path), spawn.ANY_DYNAMIC)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_the_owner_bits_count_for_the_owner(base: Path) -> None:
    path = _dir(base, 0o700)
    os.chown(path, OTHER.uid, OTHER.gid)

    jobenv.check_workdir(str(path), OTHER)  # its own: fine
    with pytest.raises(jobenv.NotUsable, match="dynamic uid"):
        jobenv.check_workdir(str(path), spawn.ANY_DYNAMIC)


def test_an_ancestor_the_user_may_not_search_is_named(base: Path) -> None:
    parent = _dir(base, 0o700, "parent")
    inner = _dir(parent, 0o755, "inner")

    with pytest.raises(jobenv.NotUsable) as refused:
        jobenv.check_workdir(str(inner), spawn.ANY_DYNAMIC)

    assert f"({parent} is drwx------" in str(refused.value)


@pytest.mark.parametrize("ident", [None, OTHER, spawn.ANY_DYNAMIC], ids=["own", "run-as", "dyn"])
def test_missing_file_and_relative_are_refused(base: Path, ident: uids.Identity | None) -> None:
    (base / "f").write_text("x")

    with pytest.raises(jobenv.NotUsable, match="does not exist on this worker"):
        jobenv.check_workdir(str(base / "missing"), ident)
    with pytest.raises(jobenv.NotUsable, match="is not a directory"):
        jobenv.check_workdir(str(base / "f"), ident)
    with pytest.raises(jobenv.NotUsable, match="not an absolute path"):
        jobenv.check_workdir("srv/media", ident)


def test_a_link_to_a_directory_is_checked_where_it_points(base: Path) -> None:
    private = _dir(base, 0o700, "private")
    os.chown(private, os.geteuid(), os.getegid())
    (base / "link").symlink_to(private)

    with pytest.raises(jobenv.NotUsable, match="dynamic uid may not enter"):
        jobenv.check_workdir(str(base / "link"), spawn.ANY_DYNAMIC)


# -- the runner ---------------------------------------------------------------------------


def _run(spec: runner.RunSpec) -> tuple[runner.Outcome, bytes]:
    out: list[bytes] = []
    job = runner.JobProcess(spec, lambda stream, data: out.append(data))
    job.start()
    return job.wait(), b"".join(out)


def _spec(command: str, workdir: str | None) -> runner.RunSpec:
    return runner.RunSpec(
        job_id=os.getpid() * 1000 + 17,
        command=command,
        interpreter=None,
        script=None,
        workdir=workdir,
        cgroup=False,
    )


def test_the_job_runs_in_its_workdir_with_its_private_tmpdir(base: Path) -> None:
    workdir = _dir(base, 0o755, "media")
    (workdir / "in.mp4").write_text("x")

    outcome, out = _run(_spec('pwd; ls; echo "$TMPDIR"', str(workdir)))

    assert outcome.reason == "exited" and outcome.exit_code == 0, outcome
    cwd, listing, tmpdir = out.decode().split("\n")[:3]
    assert (cwd, listing) == (str(workdir), "in.mp4")
    assert tmpdir != str(workdir) and not os.path.exists(tmpdir)  # removed at the end
    assert sorted(os.listdir(workdir)) == ["in.mp4"]  # nothing of ours left there


def test_without_a_workdir_the_job_runs_in_its_private_directory() -> None:
    outcome, out = _run(_spec('[ "$(pwd)" = "$TMPDIR" ] && echo same', None))

    assert outcome.exit_code == 0 and out == b"same\n"


def test_a_missing_workdir_fails_the_start_with_the_reason(base: Path) -> None:
    missing = base / "gone"
    job = runner.JobProcess(_spec("true", str(missing)), lambda stream, data: None)

    with pytest.raises(runner.StartError, match=f"workdir '{missing}' does not exist"):
        job.start()


def test_show_prints_the_workdir() -> None:
    rows = dict(formatting.show_rows({"id": 1, "workdir": "/srv/media", "error": None}))

    assert rows == {"id": "1", "workdir": "/srv/media"}


def test_a_workdir_gone_between_the_check_and_the_start_is_named(base: Path) -> None:
    with pytest.raises(spawn.StartError) as failed:
        spawn.popen(["/bin/true"], {}, str(base / "gone"), None)

    assert str(failed.value) == (
        f"cannot enter the job's directory '{base / 'gone'}': No such file or directory"
    )


# -- a link swapped between the check and the start ----------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def _swapped_after_the_check(monkeypatch: pytest.MonkeyPatch, link: Path, target: Path) -> None:
    """The submitter's move: the link passes the check, then points elsewhere."""
    check = jobenv.check_workdir

    def check_then_swap(path: str, user: uids.Identity | None) -> None:
        check(path, user)
        link.unlink()
        link.symlink_to(target)

    monkeypatch.setattr(jobenv, "check_workdir", check_then_swap)


@pytest.fixture
def root_secret(base: Path) -> Path:
    """A file under a directory only root may enter."""
    vault = _dir(base, 0o700, "vault")
    inner = _dir(vault, 0o755, "inner")
    (inner / "secret").write_text("jbtest-secret")
    return inner


@needs_root
@pytest.mark.parametrize("who", ["dynamic", "run_as"])
@pytest.mark.parametrize("kind", ["command", "script"])
def test_a_link_swapped_after_the_check_does_not_let_the_job_in(
    base: Path, root_secret: Path, monkeypatch: pytest.MonkeyPatch, who: str, kind: str
) -> None:
    link = base / "media"
    link.symlink_to(_dir(base, 0o755, "public"))
    _swapped_after_the_check(monkeypatch, link, root_secret)
    first = random.randrange(70000, 79000)
    spec = dataclasses.replace(
        _spec("cat secret", str(link)),
        run_as="nobody" if who == "run_as" else None,
        uid_pool=uids.UidPool(uids.UidRange(first, first + 1), lock_dir=str(base / "uids"))
        if who == "dynamic"
        else None,
    )
    if kind == "script":
        spec = dataclasses.replace(spec, command=None, script="cat secret", interpreter="sh")

    outcome, out = _run(spec)

    assert b"jbtest-secret" not in out
    assert outcome.exit_code == 126, (outcome, out)  # the job's own cd was refused


@pytest.mark.parametrize("kind", ["command", "script"])
def test_a_job_enters_a_workdir_named_with_shell_characters(base: Path, kind: str) -> None:
    workdir = _dir(base, 0o755, "it's $(here) ;x")
    spec = _spec("pwd", str(workdir))
    if kind == "script":
        spec = dataclasses.replace(spec, command=None, script="pwd", interpreter="sh")

    outcome, out = _run(spec)

    assert outcome.exit_code == 0 and out == f"{workdir}\n".encode()

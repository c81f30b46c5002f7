"""Placement as pure functions: sizes, labels and constraints parsed, what fits where,
every strategy with resources and labels, and the reasons a job waits."""

from __future__ import annotations

import pytest

from jobbalancer import balancer, resources
from jobbalancer.balancer import Candidate
from jobbalancer.resources import Capacity, Request

GiB, MiB = 1 << 30, 1 << 20


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "size"),
    [
        ("512M", 512 * MiB),
        ("2G", 2 * GiB),
        ("2g", 2 * GiB),
        ("1.5GiB", 3 * GiB // 2),
        ("100k", 100 * 1024),
        ("4 Gi", 4 * GiB),
        ("1T", 1 << 40),
        ("1024", 1024),
        (1024, 1024),
        (0, 0),
    ],
)
def test_sizes_are_read_in_binary_units(given: object, size: int) -> None:
    assert resources.parse_memory(given) == size


@pytest.mark.parametrize("given", ["12X", "-1G", "G", "", "1.2.3G", -5, True, None, [1]])
def test_bad_sizes_are_refused_saying_why(given: object) -> None:
    with pytest.raises(ValueError, match=r"."):
        resources.parse_memory(given)


def test_an_absurd_size_is_refused() -> None:
    with pytest.raises(ValueError, match="1 EiB"):
        resources.parse_memory("9999999T")


def test_sizes_are_shown_readably() -> None:
    assert resources.format_memory(512 * MiB) == "512 MiB"
    assert resources.format_memory(3 * GiB // 2) == "1.5 GiB"
    assert resources.format_memory(100) == "100 B"


def test_labels_and_constraints_parse_from_the_command_line() -> None:
    assert resources.parse_labels(["os=debian", "ffmpeg=6", "ssd"]) == {
        "os": "debian",
        "ffmpeg": "6",
        "ssd": "",
    }
    assert resources.parse_constraint("ffmpeg=6") == ("ffmpeg", "6")
    assert resources.parse_constraint("os!=windows") == ("os", "!windows")
    assert resources.parse_constraint("ssd") == ("ssd", True)
    assert resources.parse_constraint("!ssd") == ("ssd", False)
    for bad in ("bad label=1", "=x", "-x"):
        with pytest.raises(ValueError, match="label name"):
            resources.parse_constraint(bad)


def test_constraints_match_labels() -> None:
    labels = {"os": "debian", "ffmpeg": "6", "ssd": ""}
    assert resources.matches({"ffmpeg": "6"}, labels)
    assert not resources.matches({"ffmpeg": "7"}, labels)
    assert resources.matches({"os": "!windows"}, labels)
    assert not resources.matches({"os": "!debian"}, labels)
    assert resources.matches({"gpu": "!a100"}, labels)  # missing counts as "not a100"
    assert resources.matches({"ssd": True}, labels)
    assert not resources.matches({"hdd": True}, labels)
    assert resources.matches({"hdd": False}, labels)
    assert resources.matches(None, {})
    with pytest.raises(ValueError, match="give a value"):
        resources.check_constraints({"os": "!"})


# -- fitting ------------------------------------------------------------------------------


def test_a_request_fits_what_is_free_and_unknown_capacity_is_unlimited() -> None:
    cap = Capacity(cpus=4, memory=8 * GiB, gpus=1, used_cpus=3, used_memory=6 * GiB)
    assert cap.fits(Request(cpus=1, memory=2 * GiB, gpus=1))
    assert not cap.fits(Request(cpus=1.5))
    assert not cap.fits(Request(memory=3 * GiB))
    assert not cap.fits(Request(gpus=2))
    assert cap.could_fit(Request(cpus=4))
    assert Capacity().fits(Request(cpus=1000, memory=1 << 50, gpus=64))
    # Fractions add up without drifting past a whole CPU
    tenths = Capacity(cpus=1)
    for _ in range(10):
        assert tenths.fits(Request(cpus=0.1))
        tenths = tenths.plus(Request(cpus=0.1))
    assert not tenths.fits(Request(cpus=0.1))


def test_too_big_names_the_largest_capacity() -> None:
    caps = [Capacity(cpus=8, memory=16 * GiB), Capacity(cpus=4, memory=32 * GiB)]
    assert resources.too_big(Request(memory=64 * GiB), caps) == (
        "needs 64 GiB memory; the largest worker has 32 GiB"
    )
    assert resources.too_big(Request(cpus=16), caps) == "needs 16 cpus; the largest worker has 8"
    assert "no single worker" in str(resources.too_big(Request(cpus=8, memory=32 * GiB), caps))
    assert resources.too_big(Request(cpus=8), caps) is None
    assert resources.too_big(Request(cpus=8000), []) is None  # no worker known yet: wait


# -- strategies with resources and labels ------------------------------------------------


def cand(
    id: int,
    active: int = 0,
    max_jobs: int = 4,
    *,
    cpus: float | None = 8,
    memory: int | None = 16 * GiB,
    gpus: int | None = 0,
    used_cpus: float = 0,
    used_memory: int = 0,
    labels: dict[str, str] | None = None,
    load: float | None = None,
    state: str = "online",
    enabled: bool = True,
) -> Candidate:
    cap = Capacity(cpus, memory, gpus, used_cpus, used_memory)
    return Candidate(
        id, f"w{id}", 1, max_jobs, active, cap, labels or {}, load, 8, state, enabled, "default"
    )


def pick(name: str, candidates: list[Candidate], request: Request, cursor: int = 0) -> Candidate:
    """What the balancer does per job: only the workers that take it, then the strategy."""
    fits = [c for c in candidates if c.takes(request)]
    assert fits, "no candidate takes the request"
    return balancer.STRATEGIES[name](fits, cursor, request)


WORKERS = [
    cand(1, cpus=2, memory=4 * GiB),
    cand(2, cpus=16, memory=64 * GiB, gpus=2, labels={"ffmpeg": "6", "ssd": ""}),
    cand(3, cpus=8, memory=16 * GiB, labels={"ffmpeg": "5"}),
]


@pytest.mark.parametrize("name", sorted(balancer.STRATEGIES))
@pytest.mark.parametrize(
    ("request_", "allowed"),
    [
        (Request(), {1, 2, 3}),
        (Request(cpus=4), {2, 3}),
        (Request(memory=32 * GiB), {2}),
        (Request(gpus=1), {2}),
        (Request(constraints={"ffmpeg": "6"}), {2}),
        (Request(constraints={"ffmpeg": "!6"}), {1, 3}),
        (Request(constraints={"ssd": True}), {2}),
        (Request(constraints={"ssd": False}, cpus=4), {3}),
    ],
)
def test_every_strategy_picks_only_a_worker_that_fits(
    name: str, request_: Request, allowed: set[int]
) -> None:
    for cursor in (0, 1, 2, 3):
        for _ in range(5):  # random too
            assert pick(name, WORKERS, request_, cursor).id in allowed


def test_full_disabled_and_offline_workers_take_nothing() -> None:
    request = Request()
    assert not cand(1, active=4).takes(request)
    assert not cand(1, state="offline").takes(request)
    assert not cand(1, enabled=False).takes(request)
    assert not cand(1, used_cpus=8).takes(Request(cpus=1))


def test_least_loaded_counts_requested_resources_and_reported_load() -> None:
    # One job each, but w1's uses 7 of 8 cpus; w2 is free by slots and resources but its
    # machine is loaded; w3 is idle
    w1 = cand(1, active=1, used_cpus=7)
    w2 = cand(2, active=0, load=7.5)
    w3 = cand(3, active=1, used_cpus=1)
    assert balancer.least_loaded([w1, w2, w3], 0, Request()).id == 3


def test_binpack_fills_the_tightest_fit_and_fill_first_the_first() -> None:
    roomy = cand(1, cpus=32, memory=64 * GiB)
    tight = cand(2, cpus=4, memory=8 * GiB, used_cpus=2)
    request = Request(cpus=2, memory=4 * GiB)
    assert balancer.binpack([roomy, tight], 0, request).id == 2
    assert balancer.fill_first([roomy, tight], 0, request).id == 1


# -- why a job waits ----------------------------------------------------------------------


def test_reasons_say_the_first_thing_in_the_way() -> None:
    reason = balancer.reason
    assert reason(Request(), "gpu", []) == "no online worker of class gpu"
    assert reason(Request(), "gpu", [cand(1, state="offline")]) == "no online worker of class gpu"
    assert reason(Request(), "d", [cand(1, enabled=False)]) == "worker w1 is disabled"
    full = [cand(i, active=4) for i in (1, 2, 3)]
    assert reason(Request(), "default", full) == (
        "all 3 workers of class default are full (12/12 slots)"
    )
    assert reason(Request(constraints={"ffmpeg": "6"}), "d", [cand(1)]) == (
        "no worker has label ffmpeg=6"
    )
    busy = [cand(1, memory=8 * GiB, used_memory=5 * GiB), cand(2, memory=4 * GiB)]
    assert reason(Request(memory=8 * GiB), "render", busy) == (
        "needs 8 GiB memory; the most free is 3 GiB on w1"
    )
    assert reason(Request(cpus=64), "d", [cand(1)]) == (
        "needs 64 cpus; the largest worker has 8 (online)"
    )


# -- the worker's settings ----------------------------------------------------------------


def test_worker_capacity_settings_parse_sizes_and_labels() -> None:
    from pydantic import ValidationError

    from jobbalancer.settings import WorkerSettings
    from jobbalancer.worker import capacity

    ws = WorkerSettings(cpus=2.5, memory="16G", gpus=1, labels="os=debian,ssd")  # type: ignore[arg-type]
    offered = capacity.detect(ws)
    assert (offered.cpus, offered.memory, offered.gpus) == (2.5, 16 * GiB, 1)
    assert offered.labels == {"os": "debian", "ssd": ""}
    assert capacity.describe(offered) == "2.5 cpus, 16 GiB memory, 1 gpus, labels os=debian ssd"
    detected = capacity.detect(WorkerSettings())
    assert detected.cpus and detected.cpus > 0 and detected.memory and detected.memory > 0
    for bad in ({"memory": "12X"}, {"cpus": -1}, {"labels": ["bad label"]}, {"gpus": -1}):
        with pytest.raises(ValidationError):
            WorkerSettings(**bad)  # type: ignore[arg-type]


# -- enforcement: the job cgroup's files, the end a worker reports ------------------------


def test_a_job_cgroup_gets_its_limits_and_counts_oom_kills(tmp_path: object) -> None:
    from pathlib import Path

    from jobbalancer.worker import cgroups

    path = Path(str(tmp_path))
    for name in ("cpu.max", "memory.max", "memory.swap.max"):
        (path / name).write_text("")  # the kernel replaces these; a test file is empty
    group = cgroups.JobCgroup(str(path))
    assert group.limit(1.5, 512 * MiB) == []
    assert (path / "cpu.max").read_text() == "150000 100000"
    assert (path / "memory.max").read_text() == str(512 * MiB)
    assert (path / "memory.swap.max").read_text() == "0"
    assert group.oom_kills() == 0  # no memory.events: none seen
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert group.oom_kills() == 1
    # Without the controller's files nothing is written, and what was not is named
    bare = path / "bare"
    bare.mkdir()
    assert cgroups.JobCgroup(str(bare)).limit(2, GiB) == ["cpus", "memory"]


def test_an_oom_end_is_failed_out_of_memory_not_a_signal() -> None:
    from jobbalancer.worker import reports, runner

    job = type("J", (), {"watchdog": None})()
    oom = runner.Outcome(
        exit_code=None, signal=9, reason="out_of_memory", error="out of memory (limit 64 MiB)"
    )
    assert reports.judge(job, oom, None) == (  # type: ignore[arg-type]
        jobs_state("failed"),
        "out of memory (limit 64 MiB)",
    )


def jobs_state(value: str) -> object:
    from jobbalancer import jobs

    return jobs.State(value)


def test_up_shares_the_machine_between_its_workers(tmp_path: object) -> None:
    from pathlib import Path

    from jobbalancer import settings
    from jobbalancer.cli import up
    from jobbalancer.worker import capacity

    plan = up.UpPlan.make(settings.load(), 2, Path(str(tmp_path)) / "c.toml")
    first, second = (plan.worker_argv(n) for n in plan.worker_names())
    cpus = float(first[first.index("--cpus") + 1])
    assert cpus == pytest.approx(capacity.detect_cpus() / 2, abs=0.01)
    assert int(second[second.index("--memory") + 1]) == capacity.detect_memory() // 2
    assert "--gpus" not in first and second[second.index("--gpus") + 1] == "0"
    assert "--cpus" not in up.UpPlan.make(settings.load(), 1, None).worker_argv("w-1")


def test_on_cgroup_v1_a_job_gets_cfs_quota_and_a_memory_limit_without_swap(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    from jobbalancer.worker import cgroups

    root = Path(str(tmp_path))
    bases = {c: root / c for c in cgroups.V1_CONTROLLERS}
    jobs_dirs = {c: bases[c] / "jobbalancer-w@7-t" for c in bases}
    files = {
        "cpu": ("cpu.cfs_period_us", "cpu.cfs_quota_us", "cgroup.procs"),
        "memory": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "cgroup.procs"),
    }
    for controller, names in files.items():
        jobs_dirs[controller].mkdir(parents=True)  # the kernel fills a new cgroup's files
        for name in names:
            (jobs_dirs[controller] / name).write_text("")
    monkeypatch.setattr(cgroups, "v1_base_dir", lambda c: str(bases[c]))
    limits, missed = cgroups.create_v1("w", 7, "t", cpus=0.5, memory=512 * MiB)
    assert limits is not None and missed == []
    cpu, memory = jobs_dirs["cpu"], jobs_dirs["memory"]
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (memory / "memory.limit_in_bytes").read_text() == str(512 * MiB)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(512 * MiB)
    limits.add(4242)
    assert (cpu / "cgroup.procs").read_text() == (memory / "cgroup.procs").read_text() == "4242"
    # The OOM killer's count, from memory.oom_control; an old kernel's failcnt + SIGKILL
    oom = memory / "memory.oom_control"
    oom.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert limits.oom_kills(sigkilled=False) == 2
    oom.write_text("oom_kill_disable 0\nunder_oom 0\n")
    (memory / "memory.failcnt").write_text("5\n")
    assert limits.oom_kills(sigkilled=True) == 1
    assert limits.oom_kills(sigkilled=False) == 0
    # Only what was asked is made; a hierarchy without the files is named as missed
    only_cpu, missed = cgroups.create_v1("w", 8, "t", cpus=1, memory=None)
    assert only_cpu is None and missed == ["cpus"]  # no files in a plain new directory
    assert not (bases["cpu"] / "jobbalancer-w@8-t").exists()  # and not left behind
    assert not (bases["memory"] / "jobbalancer-w@8-t").exists()


def test_a_worker_sweeps_the_v1_job_cgroups_its_predecessor_left(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    from jobbalancer.worker import cgroups

    root = Path(str(tmp_path))
    left, other = root / "jobbalancer-w@3-x", root / "jobbalancer-w2@3-x"
    left.mkdir()
    other.mkdir()
    monkeypatch.setattr(cgroups, "v1_base_dir", lambda c: str(root) if c == "memory" else None)
    monkeypatch.setattr(cgroups, "base_dir", lambda: None)
    assert cgroups.clean_up_after("w") == 0  # empty: nothing to kill
    assert not left.exists() and other.exists()  # another worker's stays


def test_capacity_counts_cgroup_v1_cpu_quotas_above_too_and_the_hierarchical_memory_limit(
    tmp_path: object,
) -> None:
    from pathlib import Path

    from jobbalancer.worker import capacity

    top = Path(str(tmp_path)) / "cpu"
    own = top / "workers" / "w1"
    own.mkdir(parents=True)
    for path, quota in ((top, "-1"), (top / "workers", "150000"), (own, "400000")):
        (path / "cpu.cfs_quota_us").write_text(quota + "\n")
        (path / "cpu.cfs_period_us").write_text("100000\n")
    assert sorted(capacity._cfs_quotas(str(own))) == [1.5, 4.0]  # -1 is no quota
    memory = Path(str(tmp_path)) / "memory"
    memory.mkdir()
    (memory / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert capacity._hierarchical_limit(str(memory)) is None  # unlimited
    (memory / "memory.stat").write_text(f"cache 0\nhierarchical_memory_limit {GiB}\n")
    assert capacity._hierarchical_limit(str(memory)) == GiB  # a parent's limit counts

"""Jobs attacking jobs: a real worker started as root with ``--run-as dynamic``, real jobs
of two submitters, and the attacker's job trying what worked when every job ran as
``nobody`` (issue 9, item 4; and item 8's inherited worker environment).

Each test: the victim (alice) starts a job holding a secret and says where it is (its
pid, its temp dir); the attacker (mallory) then runs a job that goes after it, and
reports what it got. The attack must fail, and the victim must be unharmed.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from jobbalancer.worker import cgroups
from tests.conftest import BACKENDS, Databases
from tests.e2e.conftest import FAST_ENV, Cluster, _admin_key

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="dynamic uids need a worker started as root"),
]

SECRET = f"jbtest-secret-{secrets.token_hex(8)}"
# The victim: says who and where it is, keeps a secret in its environment and its temp
# dir, then waits (exec: its pid stays the one it printed).
VICTIM = 'echo "uid=$(id -u) pid=$$ dir=$TMPDIR"; echo "$SECRET" > "$TMPDIR/secret"; exec sleep 60'


class Attack:
    """A cluster with a dynamic-uid worker, and a submitter key for victim and attacker."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.alice = self._submitter("alice")
        self.mallory = self._submitter("mallory")

    def _submitter(self, name: str) -> httpx.Client:
        api = self.cluster.api
        r = api.post("/api/v1/users", json={"name": name, "role": "submitter"})
        assert r.status_code == 201, r.text
        r = api.post(f"/api/v1/users/{r.json()['id']}/api-keys", json={"name": "attack"})
        assert r.status_code == 201, r.text
        return httpx.Client(
            base_url=self.cluster.url,
            headers={"Authorization": f"Bearer {r.json()['key']}"},
            timeout=30,
        )

    def submit(self, who: httpx.Client, command: str, **spec: Any) -> int:
        r = who.post("/api/v1/jobs", json={"command": command, **spec})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def victim(self, command: str = VICTIM) -> tuple[int, dict[str, str]]:
        """Start alice's job; its id and what it said about itself."""
        job = self.submit(self.alice, command, env={"SECRET": SECRET})
        said = self.cluster.wait_for(
            lambda: re.search(r"uid=(\d+) pid=(\d+) dir=(\S+)", self.cluster.log(job)),
            "the victim to start",
        )
        return job, {"uid": said[1], "pid": said[2], "dir": said[3]}

    def attack(self, command: str, **spec: Any) -> str:
        """Run mallory's job to its end; its whole output."""
        job = self.submit(self.mallory, command, **spec)
        state = self.cluster.wait_job(job)["state"]
        assert state in ("done", "failed"), state
        return self.cluster.log(job)

    def kill(self, job: int) -> None:
        self.cluster.api.post(f"/api/v1/jobs/{job}/kill")

    def close(self) -> None:
        self.alice.close()
        self.mallory.close()


@pytest.fixture(scope="module", params=BACKENDS)
def attack(
    request: pytest.FixtureRequest,
    databases: dict[str, Databases],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Attack]:
    """One server and one dynamic-uid worker per backend, for all the attacks."""
    backend = str(request.param)
    url = databases[backend].create(migrated=False)
    home = tmp_path_factory.mktemp(f"attack-{backend}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBBALANCER_")}
    env.update(FAST_ENV, JOBBALANCER_DATABASE_URL=url, JOBBALANCER_DATA_DIR=str(home))
    cluster = Cluster(database_url=url, tmp=home, env=env)
    try:
        cluster.key = _admin_key(url)
        cluster.start_server()
        cluster.start_worker("attacked", "--run-as", "dynamic", "--max-jobs", "4")
        result = Attack(cluster)
        yield result
        result.close()
    finally:
        cluster.stop()
        databases[backend].drop(url)


def test_the_worker_says_jobs_run_under_uids_of_their_own(attack: Attack) -> None:
    worker = next(p for p in attack.cluster.procs if p.name == "attacked")
    assert "jobs run as uids of their own" in worker.log()


def test_jobs_of_two_users_run_under_different_unprivileged_uids(attack: Attack) -> None:
    job, victim = attack.victim()
    out = attack.attack("id -u; id -G")
    attack.kill(job)

    uid, groups = out.split()
    assert uid != victim["uid"]
    assert int(uid) >= 1000 and int(victim["uid"]) >= 1000
    assert groups == uid  # no group of anyone else's, root's least of all


def test_reading_another_jobs_environment_fails(attack: Attack) -> None:
    job, victim = attack.victim()
    out = attack.attack(
        f"tr '\\0' '\\n' < /proc/{victim['pid']}/environ; "
        f"grep -a SECRET /proc/{victim['pid']}/task/*/environ; "
        f"cat /proc/{victim['pid']}/mem; echo tried"
    )
    attack.kill(job)

    assert "tried" in out
    assert SECRET not in out
    assert "Permission denied" in out


def test_reading_another_jobs_temp_dir_and_script_fails(attack: Attack) -> None:
    # The victim a stored script: its file lies in its temp dir too
    r = attack.cluster.api.post(
        "/api/v1/scripts",
        json={"name": f"victim-{secrets.token_hex(3)}", "interpreter": "sh",
              "content": f"# {SECRET}\n{VICTIM}\n"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    r = attack.alice.post(
        "/api/v1/jobs", json={"script": r.json()["name"], "env": {"SECRET": SECRET}}
    )
    assert r.status_code == 201, r.text
    job = int(r.json()["id"])
    said = attack.cluster.wait_for(
        lambda: re.search(r"dir=(\S+)", attack.cluster.log(job)), "the victim to start"
    )
    where = said[1]

    out = attack.attack(
        f"ls -la {where}; cat {where}/secret {where}/job-script; "
        f"cp -r {where} $TMPDIR/loot; cat $TMPDIR/loot/*; echo tried"
    )
    attack.kill(job)

    assert "tried" in out
    assert SECRET not in out
    assert "Permission denied" in out


def test_kill_minus_one_and_signals_do_not_reach_another_job(attack: Attack) -> None:
    job, victim = attack.victim('echo "uid=$(id -u) pid=$$ dir=$TMPDIR"; sleep 4; echo survived')
    pid = victim["pid"]
    out = attack.attack(f"kill -9 {pid}; kill -STOP {pid}; kill -9 -1; echo tried")

    assert "tried" in out
    assert "Operation not permitted" in out or "not permitted" in out.lower()
    final = attack.cluster.wait_job(job)
    assert final["state"] == "done", final
    assert "survived" in attack.cluster.log(job)


def test_the_worker_cannot_be_read_or_traced_by_a_job(attack: Attack) -> None:
    worker = attack.cluster.worker("attacked")
    assert worker is not None and worker["pid"]
    pid = worker["pid"]
    trace = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        f"print('ptrace', libc.ptrace(16, {pid}, 0, 0), ctypes.get_errno())"
    )  # 16: PTRACE_ATTACH
    out = attack.attack(
        f"tr '\\0' '\\n' < /proc/{pid}/environ; cat /proc/{pid}/mem; "
        f'ls /proc/{pid}/fd; /usr/bin/python3 -c "{trace}"; kill -TERM {pid}; echo tried'
    )

    assert "tried" in out
    assert "JOBBALANCER" not in out.replace("JOBBALANCER_JOB", "")
    assert attack.cluster.database_url not in out
    assert re.search(r"ptrace -1 1\b", out), out  # EPERM
    assert attack.cluster.worker("attacked", "online") is not None  # not signalled either


def test_no_job_can_gain_a_uid_through_a_setuid_program(attack: Attack) -> None:
    # A setuid copy of a shell left by an earlier holder of a uid (somewhere the uid
    # sweep does not reach) would make a later job that uid; no_new_privs forbids it.
    out = attack.attack("grep NoNewPrivs /proc/self/status")

    assert out.split() == ["NoNewPrivs:", "1"]


def test_nothing_a_job_sets_runs_before_it_is_in_its_cgroup(attack: Attack) -> None:
    # LD_PRELOAD (or LD_AUDIT…) would run the attacker's code in the job's shell before
    # the worker moves it into the job's cgroup: a process forked then, in a session of
    # its own, would outlive the job unseen, keeping its uid for the next job. LD_DEBUG
    # shows whether that shell's loader saw the job's variables: it must not.
    if cgroups.base_dir() is None:
        pytest.skip("this host lets the worker make no cgroups (no gate without them)")
    out = attack.attack("echo in-the-job >&2; /bin/true", env={"LD_DEBUG": "libs"})

    before, _, after = out.partition("in-the-job")
    assert "library" not in before, out
    assert "libc.so" in after  # what the job then starts has it


def test_a_job_sees_no_setting_of_the_worker_in_its_environment(attack: Attack) -> None:
    out = attack.attack("env")

    names = {line.split("=", 1)[0] for line in out.splitlines() if "=" in line}
    assert {n for n in names if n.startswith("JOBBALANCER_")} <= {
        "JOBBALANCER_JOB_ID", "JOBBALANCER_RUN_TAG", "JOBBALANCER_JOB_OWNER",
    }  # fmt: skip
    assert attack.cluster.database_url not in out
    assert names <= {
        "PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "LANG", "LANGUAGE", "TZ", "PWD",
        "SHLVL", "JOBBALANCER_JOB_ID", "JOBBALANCER_RUN_TAG", "JOBBALANCER_JOB_OWNER",
    } | {n for n in names if n.startswith("LC_")}  # fmt: skip


def test_a_job_that_outlives_a_killed_worker_leaves_nothing_for_the_next(
    attack: Attack,
) -> None:
    # Given a job that leaves a file in /tmp and a process that left its session
    tag = secrets.token_hex(4)
    left = f"/tmp/jbtest-attack-{tag}"
    job, victim = attack.victim(
        f'echo "$SECRET" > {left}; (setsid sleep 300 &); '
        'echo "uid=$(id -u) pid=$$ dir=$TMPDIR"; exec sleep 300'
    )
    assert os.path.exists(left)
    # When the worker is SIGKILLed while it runs, and started again
    worker = next(p for p in attack.cluster.procs if p.name == "attacked")
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait(timeout=10)
    attack.cluster.procs.remove(worker)
    attack.cluster.start_worker("attacked", "--run-as", "dynamic", "--max-jobs", "4")

    # Then the job is lost, and nothing of its uid is left for whoever gets it next
    assert attack.cluster.wait_job(job)["state"] == "lost"
    uid = int(victim["uid"])
    attack.cluster.wait_for(lambda: not _processes_of(uid), "the job's processes to die")
    assert not os.path.exists(left)
    assert not os.path.exists(victim["dir"])


def _processes_of(uid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["uids", "status"]):
        if uid in proc.info["uids"] and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found

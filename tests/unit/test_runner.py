"""The runner really runs processes: exit codes, output, argv, environment, the private
directory, watchdog, kill, and no descendant surviving its job (group members, processes
that ignore SIGTERM, processes that escaped with setsid)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import glob
import itertools
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from jobbalancer import procsec
from jobbalancer.worker import cgroups, jobenv, runner, spawn, uids

pytestmark = pytest.mark.timeout(30)

GRACE = 0.5
LINUX = sys.platform.startswith("linux")
# Job ids from a random base, so leftovers of another run can never be mistaken for ours.
_ids = itertools.count(random.randrange(10**6, 10**9))
# Put in the argv of processes that scrub their environment, so cleanup still finds them.
MARKER = f"jbtest-{secrets.token_hex(4)}"

# Shell snippets: each started process appends its pid to $PIDFILE.
WAIT_FOR_PIDS = 'while [ "$(wc -l < "$PIDFILE")" -lt {n} ]; do sleep 0.02; done'
IGNORES_TERM = """sh -c 'trap "" TERM; echo $$ >> "$PIDFILE"; exec sleep 300' &"""
ESCAPES = """"$PY" -c 'import os, signal, time
os.setsid()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.environ["PIDFILE"], "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(300)' &"""
BACKGROUND = 'sleep 300 & echo $! >> "$PIDFILE"'


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    args = [ctypes.c_ulong(int(on)), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)]
    libc.prctl(36, *args)  # PR_SET_CHILD_SUBREAPER


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> Iterator[bool]:
    enabled = runner.become_subreaper()
    yield enabled
    runner.reap_orphans()
    if enabled:
        _set_subreaper(False)


@pytest.fixture(params=["subreaper", "no-subreaper"])
def reaper_mode(request: pytest.FixtureRequest, subreaper: bool) -> Iterator[str]:
    """Run a test with and without the worker being a subreaper."""
    mode = str(request.param)
    if mode == "subreaper" and not subreaper:
        pytest.skip("this platform has no subreaper")
    if subreaper and mode == "no-subreaper":
        _set_subreaper(False)
    yield mode
    if subreaper:
        _set_subreaper(True)


@dataclass
class Captured:
    """An on_output callback that keeps every chunk."""

    chunks: list[tuple[str, bytes]] = field(default_factory=list)

    def __call__(self, stream: str, data: bytes) -> None:
        self.chunks.append((stream, data))

    def stream(self, name: str) -> bytes:
        return b"".join(data for stream, data in self.chunks if stream == name)


@dataclass
class Result:
    outcome: runner.Outcome
    out: bytes
    err: bytes
    elapsed: float


class Jobs:
    """Builds specs, runs jobs, and kills whatever a test leaves behind."""

    def __init__(self, tmp_path: Path, *, cgroup: bool) -> None:
        self.cgroup = cgroup  # track the jobs by cgroup, or by session, tree and environment
        self.pidfile = tmp_path / "pids"
        self.pidfile.touch()
        self.ids: set[int] = set()
        self.started: list[runner.JobProcess] = []

    def spec(self, command: str | None = None, **kwargs: Any) -> runner.RunSpec:
        job_id = next(_ids)
        self.ids.add(job_id)
        env = {"PIDFILE": str(self.pidfile), "PY": sys.executable, **kwargs.pop("env", {})}
        kwargs.setdefault("interpreter", None)
        kwargs.setdefault("script", None)
        kwargs.setdefault("kill_grace", GRACE)
        kwargs.setdefault("cgroup", self.cgroup)
        return runner.RunSpec(job_id=job_id, command=command, env=env, **kwargs)

    def start(self, spec: runner.RunSpec) -> tuple[runner.JobProcess, Captured]:
        captured = Captured()
        job = runner.JobProcess(spec, captured)
        self.started.append(job)
        job.start()
        return job, captured

    def run(self, spec: runner.RunSpec) -> Result:
        began = time.monotonic()
        job, captured = self.start(spec)
        outcome = job.wait()
        return Result(
            outcome, captured.stream("stdout"), captured.stream("stderr"), time.monotonic() - began
        )

    def pids(self, n: int, timeout: float = 5.0) -> list[int]:
        """The first n pids the job's processes wrote, waiting for them if need be."""
        deadline = time.monotonic() + timeout
        while True:
            pids = [int(line) for line in self.pidfile.read_text().split()]
            if len(pids) >= n or time.monotonic() > deadline:
                return pids
            time.sleep(0.02)

    def cleanup(self) -> None:
        for job in self.started:
            job.kill()
            with contextlib.suppress(RuntimeError):
                job.wait()
        for proc in psutil.process_iter():
            if self._is_ours(proc):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        runner.reap_orphans()

    def _is_ours(self, proc: psutil.Process) -> bool:
        if proc.pid == os.getpid():
            return False
        try:
            if MARKER in proc.cmdline():
                return True
            return int(proc.environ().get(runner.JOB_ID_VAR, "-1")) in self.ids
        except (psutil.Error, ValueError):
            return False


@pytest.fixture(params=["cgroup", "session"])
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Jobs]:
    """Jobs tracked by a cgroup of their own, and (the fallback) without one."""
    if request.param == "cgroup" and cgroups.base_dir() is None:
        pytest.skip("this host lets the worker make no cgroups")
    factory = Jobs(tmp_path, cgroup=request.param == "cgroup")
    yield factory
    factory.cleanup()


@pytest.fixture
def cgroup_jobs(tmp_path: Path) -> Iterator[Jobs]:
    """For the tests of what only a cgroup does."""
    if cgroups.base_dir() is None:
        pytest.skip("this host lets the worker make no cgroups")
    factory = Jobs(tmp_path, cgroup=True)
    yield factory
    factory.cleanup()


@pytest.fixture
def session_jobs(tmp_path: Path) -> Iterator[Jobs]:
    """For the tests of the fallback's own machinery (walks, child lists)."""
    factory = Jobs(tmp_path, cgroup=False)
    yield factory
    factory.cleanup()


def gone(pid: int) -> bool:
    """Dead: no such process, or only a zombie waiting for its parent."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def leftover_dirs(spec: runner.RunSpec) -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), f"jobbalancer-{spec.job_id}-*"))


# --- exit status and output ------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_code(jobs: Jobs, code: int) -> None:
    result = jobs.run(jobs.spec(f"exit {code}"))

    assert result.outcome == runner.Outcome(
        exit_code=code, signal=None, reason="exited", error=None
    )


def test_stdout_and_stderr_arrive_apart_and_complete(jobs: Jobs) -> None:
    # Interleaved, and far more than one pipe buffer or one 64 KiB chunk.
    script = (
        "import sys\n"
        "for i in range(2000):\n"
        "    sys.stdout.write(f'out {i:05d} ' + 'o' * 500 + '\\n')\n"
        "    sys.stderr.write(f'err {i:05d} ' + 'e' * 100 + '\\n')\n"
    )
    result = jobs.run(jobs.spec(interpreter=sys.executable, script=script))

    assert result.outcome.exit_code == 0
    assert result.out == b"".join(f"out {i:05d} {'o' * 500}\n".encode() for i in range(2000))
    assert result.err == b"".join(f"err {i:05d} {'e' * 100}\n".encode() for i in range(2000))


def test_bytes_pass_through_unchanged(jobs: Jobs) -> None:
    result = jobs.run(jobs.spec(r"printf '\377\000abc\n\303'; printf '\000\376' >&2"))

    assert result.out == b"\xff\x00abc\n\xc3"
    assert result.err == b"\x00\xfe"


def test_output_chunks_are_at_most_64_kib(jobs: Jobs) -> None:
    captured_sizes: list[int] = []

    def on_output(stream: str, data: bytes) -> None:
        captured_sizes.append(len(data))

    job = runner.JobProcess(jobs.spec("head -c 1000000 /dev/zero"), on_output)
    jobs.started.append(job)
    job.start()
    job.wait()

    assert sum(captured_sizes) == 1_000_000
    assert max(captured_sizes) <= runner.CHUNK_SIZE


# --- argv, environment, directory ------------------------------------------------------

NASTY = (
    "$(touch {canary})",
    "`touch {canary}`",
    "; rm -rf {canary_dir}; touch {canary}",
    'it\'s "quoted"',
    "two  words",
    "*",
    "",
    "\\n not a newline",
    "--help",
)


def nasty_params(tmp_path: Path) -> tuple[str, ...]:
    canary = tmp_path / "canary"
    return tuple(p.format(canary=canary, canary_dir=tmp_path) for p in NASTY)


def test_script_params_arrive_literally_as_argv(jobs: Jobs, tmp_path: Path) -> None:
    params = nasty_params(tmp_path)
    script = "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"

    result = jobs.run(jobs.spec(interpreter=sys.executable, script=script, params=params))

    assert result.outcome.exit_code == 0, result.err
    assert json.loads(result.out) == list(params)
    assert not (tmp_path / "canary").exists()
    assert (tmp_path / "pids").exists()  # the "rm -rf" never ran


def test_command_params_are_positional_not_parsed(jobs: Jobs, tmp_path: Path) -> None:
    params = nasty_params(tmp_path)

    result = jobs.run(jobs.spec('printf "%s\\0" "$@"', params=params))

    assert result.out.split(b"\0")[:-1] == [p.encode() for p in params]
    assert not (tmp_path / "canary").exists()


def test_interpreter_is_looked_up_on_path_and_script_is_private(jobs: Jobs) -> None:
    script = 'echo "$0"; stat -c %a "$0"; echo "$1"'

    result = jobs.run(jobs.spec(interpreter="sh", script=script, params=("arg one",)))

    path, mode, arg = result.out.decode().splitlines()
    assert os.path.basename(path) == runner.SCRIPT_NAME
    assert mode == "500"
    assert arg == "arg one"


def test_script_without_interpreter_runs_by_its_shebang(jobs: Jobs) -> None:
    result = jobs.run(jobs.spec(script="#!/bin/sh\necho shebang $1\n", params=("ok",)))

    assert result.out == b"shebang ok\n"


def test_env_is_added_and_job_id_set(jobs: Jobs) -> None:
    spec = jobs.spec(
        'printf "%s|%s|%s" "$FOO" "$JOBBALANCER_JOB_ID" "$PATH"',
        env={"FOO": "a b $HOME", runner.JOB_ID_VAR: "999"},
    )

    result = jobs.run(spec)

    # The job's PATH, not the worker's; the job id cannot be overridden.
    assert result.out.decode() == f"a b $HOME|{spec.job_id}|{jobenv.DEFAULT_PATH}"


def test_env_is_minimal_nothing_of_the_worker_leaks(
    jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker whose environment holds secrets and locale settings
    monkeypatch.setenv("JOBBALANCER_DATABASE_URL", "postgresql://u:secret@h/db")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("TZ", "UTC")
    spec = jobs.spec("env", env={"ASKED": "yes"})

    # When a job prints its environment
    result = jobs.run(spec)

    # Then it has exactly the minimal set, what it asked for and the runner's markers
    env = dict(line.split("=", 1) for line in result.out.decode().splitlines())
    env.pop("PWD", None)  # the shell's own
    env.pop("SHLVL", None)
    me = pwd.getpwuid(os.geteuid())
    workdir = env["TMPDIR"]
    assert os.path.basename(workdir).startswith(f"jobbalancer-{spec.job_id}-")
    assert env == {
        "PATH": jobenv.DEFAULT_PATH, "HOME": me.pw_dir, "USER": me.pw_name,
        "LOGNAME": me.pw_name, "TMPDIR": workdir, "LC_TIME": "C", "TZ": "UTC",
        **({"LANG": os.environ["LANG"]} if "LANG" in os.environ else {}),
        **({"LANGUAGE": os.environ["LANGUAGE"]} if "LANGUAGE" in os.environ else {}),
        **{k: v for k, v in os.environ.items() if k.startswith("LC_")},
        "ASKED": "yes", "PIDFILE": str(jobs.pidfile), "PY": sys.executable,
        runner.JOB_ID_VAR: str(spec.job_id), runner.RUN_TAG_VAR: env[runner.RUN_TAG_VAR],
    }  # fmt: skip


def test_interpreter_is_looked_up_on_the_jobs_path_not_the_workers(
    jobs: Jobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a program only on the worker's PATH
    private = tmp_path / "bin"
    private.mkdir()
    (private / "jbtest-interp").symlink_to("/bin/sh")
    monkeypatch.setenv("PATH", f"{private}:{os.environ['PATH']}")
    spec = jobs.spec(interpreter="jbtest-interp", script="echo x")

    # Then the job does not find it there
    with pytest.raises(runner.StartError, match="'jbtest-interp' not found on PATH"):
        runner.JobProcess(spec, Captured()).start()
    # but does on a PATH the job gives itself
    mine = jobs.spec(interpreter="jbtest-interp", script="echo x", env={"PATH": str(private)})
    assert jobs.run(mine).out == b"x\n"


def test_cwd_is_a_private_temp_dir_removed_afterwards(jobs: Jobs) -> None:
    spec = jobs.spec('pwd; stat -c "%a %u" .; ls -A; mkdir -p ro/sub; chmod 500 ro; : > f')

    result = jobs.run(spec)

    cwd, mode_owner = result.out.decode().splitlines()[:2]
    assert os.path.basename(cwd).startswith(f"jobbalancer-{spec.job_id}-")
    assert os.path.dirname(cwd) == tempfile.gettempdir()
    assert mode_owner == f"700 {os.geteuid()}"
    assert result.out.decode().splitlines()[2:] == []  # empty when the job starts
    assert not os.path.exists(cwd)


def test_stdin_is_dev_null(jobs: Jobs) -> None:
    result = jobs.run(jobs.spec("cat; echo end"))

    assert result.out == b"end\n"


# --- failures to start -----------------------------------------------------------------


def test_missing_interpreter_raises_start_error_and_leaves_nothing(jobs: Jobs) -> None:
    spec = jobs.spec(interpreter="nosuch-interpreter", script="print(1)")
    job = runner.JobProcess(spec, Captured())

    with pytest.raises(runner.StartError, match="interpreter 'nosuch-interpreter' not found"):
        job.start()

    assert job.pid is None
    assert leftover_dirs(spec) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interpreter": "/nonexistent/python", "script": "x"}, "not found or not exec"),
        ({"interpreter": "bin/python", "script": "x"}, "program name or an absolute path"),
        ({"run_as": "no-such-user-jbtest"}, "'no-such-user-jbtest' does not exist"),
        ({"run_as": "root"}, "unprivileged"),
        ({"env": {"BAD=NAME": "x"}}, "cannot start"),
        ({"env": {"NUL": "a\0b"}}, "cannot start"),
        ({"script": "echo no shebang\n"}, "cannot start the script: it has no #! line"),
        ({"script": "#!\necho x\n"}, "names no interpreter"),
        ({"script": "#!/nonexistent/sh\necho x\n"}, "'/nonexistent/sh' is not a program"),
        ({"script": "#!/bin/sh\r\necho x\r\n"}, "carriage return"),
        ({"script": "#!sh\necho x\n"}, "not an absolute path"),
        ({"script": "#!/etc/passwd\necho x\n"}, "not a program"),  # text, no #!
    ],
)
def test_bad_specs_raise_start_error(jobs: Jobs, kwargs: dict[str, Any], message: str) -> None:
    command = None if "script" in kwargs else "true"
    spec = jobs.spec(command, **kwargs)

    with pytest.raises(runner.StartError, match=message):
        runner.JobProcess(spec, Captured()).start()

    assert leftover_dirs(spec) == []


def test_command_and_script_together_are_refused(jobs: Jobs) -> None:
    with pytest.raises(runner.StartError, match="exactly one"):
        runner.JobProcess(jobs.spec("true", script="x"), Captured()).start()


def test_start_failed_outcome() -> None:
    outcome = runner.Outcome.start_failed("interpreter 'x' not found on PATH")

    assert outcome.reason == "start_failed"
    assert outcome.exit_code is None and outcome.signal is None


# --- watchdog and kill -----------------------------------------------------------------


def test_watchdog_fires(jobs: Jobs) -> None:
    result = jobs.run(jobs.spec("sleep 30", watchdog=0.3))

    assert result.outcome.reason == "timeout"
    assert result.outcome.signal == signal.SIGTERM
    assert result.outcome.exit_code is None
    assert 0.3 <= result.elapsed < 3


def test_no_watchdog_when_zero(jobs: Jobs) -> None:
    result = jobs.run(jobs.spec("sleep 0.3; echo done", watchdog=0))

    assert result.outcome.reason == "exited"
    assert result.out == b"done\n"


def test_kill_from_another_thread(jobs: Jobs) -> None:
    job, _ = jobs.start(jobs.spec("echo started; sleep 30"))
    timer = threading.Timer(0.3, job.kill)
    timer.start()
    began = time.monotonic()

    outcome = job.wait()

    timer.join()
    assert outcome.reason == "killed"
    assert outcome.signal == signal.SIGTERM
    assert time.monotonic() - began < 3
    job.kill()  # idempotent, also once the job is over
    assert job.wait() is outcome


def test_main_process_ignoring_term_gets_sigkill_after_grace(jobs: Jobs) -> None:
    result = jobs.run(jobs.spec('trap "" TERM; sleep 30', watchdog=0.3))

    assert result.outcome.reason == "timeout"
    assert result.outcome.signal == signal.SIGKILL
    assert 0.3 + GRACE <= result.elapsed < 4


def test_stopped_job_still_gets_sigterm(jobs: Jobs) -> None:
    result = jobs.run(jobs.spec("kill -STOP $$", watchdog=0.3, kill_grace=5))

    assert result.outcome.signal == signal.SIGTERM  # continued, so it acted on SIGTERM
    assert result.elapsed < 3


@pytest.mark.parametrize("trigger", ["kill", "watchdog"])
def test_descendants_ignoring_term_or_escaping_die(
    jobs: Jobs, reaper_mode: str, trigger: str
) -> None:
    command = f"{IGNORES_TERM}\n{ESCAPES}\n{BACKGROUND}\nwait"
    job, _ = jobs.start(jobs.spec(command, watchdog=30 if trigger == "kill" else 1.0))
    pids = jobs.pids(3)
    assert len(pids) == 3
    if trigger == "kill":
        job.kill()

    outcome = job.wait()

    assert outcome.reason == ("killed" if trigger == "kill" else "timeout")
    assert [pid for pid in pids if not gone(pid)] == []


def test_leftovers_die_when_main_process_exits(jobs: Jobs, reaper_mode: str) -> None:
    # The main process exits 0 at once, leaving three processes behind on its pipes.
    command = (
        f"{IGNORES_TERM}\n{ESCAPES}\n{BACKGROUND}\n{WAIT_FOR_PIDS.format(n=3)}\n"
        "head -c 300000 /dev/zero | tr '\\0' x; echo end"
    )

    result = jobs.run(jobs.spec(command))

    assert result.outcome == runner.Outcome(exit_code=0, signal=None, reason="exited", error=None)
    assert result.out == b"x" * 300000 + b"end\n"  # what was in the pipes still arrives
    assert [pid for pid in jobs.pids(3) if not gone(pid)] == []
    assert result.elapsed < GRACE + 3


def test_escapee_found_only_by_environment_dies(session_jobs: Jobs, reaper_mode: str) -> None:
    # Started late and the main process exits at once: no tree walk ever saw it as a
    # descendant, and it left the session, so only JOBBALANCER_JOB_ID gives it away.
    command = f"sleep 0.2\n{ESCAPES}\n{WAIT_FOR_PIDS.format(n=1)}"

    result = session_jobs.run(session_jobs.spec(command))

    assert result.outcome.exit_code == 0
    assert [pid for pid in session_jobs.pids(1) if not gone(pid)] == []


def test_untraceable_pipe_holder_does_not_hang_wait(jobs: Jobs) -> None:
    # No environment, own session, parent gone before the next tree walk: nothing ties
    # this process to the job, and it keeps stdout open. wait() must still return.
    command = (
        "sleep 0.2\n"
        'env -i "$PY" -c \'import os, sys, time\n'
        "os.setsid()\n"
        'open(sys.argv[1], "a").write(f"{os.getpid()}\\n")\n'
        f'time.sleep(300)\' "$PIDFILE" {MARKER} &\n'
        f"{WAIT_FOR_PIDS.format(n=1)}\necho bye"
    )

    result = jobs.run(jobs.spec(command))

    assert result.outcome.exit_code == 0
    assert result.out == b"bye\n"
    assert result.elapsed < 3
    # The jobs fixture kills it (found by MARKER) if the runner could not.


def test_closed_stdout_still_waited_for_and_watchdog_works(jobs: Jobs) -> None:
    result = jobs.run(jobs.spec("exec >&-; echo still here >&2; sleep 30", watchdog=0.5))

    assert result.outcome.reason == "timeout"
    assert result.err == b"still here\n"
    assert result.elapsed < 3


def test_closed_stdout_and_stderr_still_waited_for(jobs: Jobs) -> None:
    result = jobs.run(jobs.spec("exec >&- 2>&-; sleep 0.5; exit 4"))

    assert result.outcome.exit_code == 4
    assert result.elapsed >= 0.5


def test_failing_on_output_kills_the_job_and_cleans_up(jobs: Jobs) -> None:
    def on_output(stream: str, data: bytes) -> None:
        raise ValueError("sink broke")

    spec = jobs.spec(f"{BACKGROUND}\necho hello; sleep 30")
    job = runner.JobProcess(spec, on_output)
    jobs.started.append(job)
    pid = job.start()

    with pytest.raises(ValueError, match="sink broke"):
        job.wait()

    assert gone(pid)
    assert [p for p in jobs.pids(1) if not gone(p)] == []
    assert leftover_dirs(spec) == []


# --- cgroups ---------------------------------------------------------------------------

needs_cgroups = pytest.mark.skipif(
    cgroups.base_dir() is None, reason="this host lets the worker make no cgroups"
)
# Leaves the session, scrubs its environment and is re-parented to init before anything
# could see it as the job's: only a cgroup still knows it belongs to the job.
UNTRACEABLE = (
    'env -i "$PY" -c \'import os, sys, time\n'
    "if os.fork(): sys.exit(0)\n"
    "os.setsid()\n"
    'open(sys.argv[1], "a").write(f"{os.getpid()}\\n")\n'
    f'time.sleep(300)\' "$PIDFILE" {MARKER}'
)


def job_cgroups(spec: runner.RunSpec) -> list[str]:
    base = cgroups.base_dir() or "/nonexistent"
    return glob.glob(os.path.join(base, f"jobbalancer-*{spec.job_id}-*"))


@pytest.mark.parametrize("kind", ["command", "script"])
def test_the_job_runs_in_its_own_cgroup_which_is_removed_after(
    cgroup_jobs: Jobs, kind: str
) -> None:
    body = "cat /proc/self/cgroup; sleep 0.1 & wait"
    spec = (
        cgroup_jobs.spec(body)
        if kind == "command"
        else cgroup_jobs.spec(script=f"#!/bin/sh\n{body}\n")
    )

    result = cgroup_jobs.run(spec)

    assert result.outcome.exit_code == 0
    assert f"@{spec.job_id}-".encode() in result.out or f"-{spec.job_id}-".encode() in result.out
    assert job_cgroups(spec) == []


def test_gated_command_gets_dev_null_as_stdin(cgroup_jobs: Jobs) -> None:

    result = cgroup_jobs.run(
        cgroup_jobs.spec('cat; read x || echo "eof:$x"; ls -l /proc/self/fd/0')
    )

    assert result.outcome.exit_code == 0
    assert b"eof:" in result.out
    assert b"/dev/null" in result.out


# What the loader or the shell would act on as the gated shell starts comes after the gate.
AT_START = {
    "LD_LIBRARY_PATH": " /a b/'q'\\x ",
    "LD_BIND_NOT": "",
    "PS4": "+$(echo) ",
    "GCONV_PATH": "é/ü",
    "MALLOC_ARENA_MAX": "2",
}


def test_a_gated_job_gets_the_variables_that_act_at_start_after_its_gate(
    jobs: Jobs,
) -> None:
    names = sorted(AT_START)
    shown = "; ".join(f'printf "%s|" "${n}"' for n in names)
    spec = jobs.spec(f"{shown}; env", env={**AT_START, "PLAIN": "p"})

    result = jobs.run(spec)

    assert result.outcome.exit_code == 0, result.err
    said, _, env = result.out.decode().partition("\n")
    assert said.split("|")[:-1] == [AT_START[n] for n in names]
    exported = env.splitlines()
    assert all(f"{n}={AT_START[n]}" in exported for n in names)  # in the programs' env too
    assert "PLAIN=p" in exported


def test_the_loader_of_a_gated_shell_sees_none_of_the_jobs_variables(jobs: Jobs) -> None:
    # LD_DEBUG makes the loader of every process that has it say what it loads. The gated
    # shell (in a cgroup) starts without it and gets it after its gate: its own start says
    # nothing, and only a program it then starts does. (Ungated, the shell has it at once:
    # the control that shows the probe works.)
    spec = jobs.spec("echo in-the-job >&2; /bin/true", env={"LD_DEBUG": "libs"})

    result = jobs.run(spec)

    assert result.outcome.exit_code == 0
    before, _, after = result.err.partition(b"in-the-job\n")
    assert (before == b"") is jobs.cgroup, result.err
    assert b"libc.so" in after


def test_a_line_break_in_a_variable_that_acts_at_start_is_a_start_error(
    cgroup_jobs: Jobs,
) -> None:
    spec = cgroup_jobs.spec("true", env={"LD_LIBRARY_PATH": "/a\n/b"})

    with pytest.raises(
        runner.StartError, match="the value of LD_LIBRARY_PATH must not contain a line break"
    ):
        cgroup_jobs.start(spec)
    assert job_cgroups(spec) == []


def test_variables_that_act_at_start_may_not_overfill_the_gate(cgroup_jobs: Jobs) -> None:
    # Written to the gate's pipe at once, they must fit in it: a bounded write.
    big = "x" * (procsec.AT_START_MAX_BYTES // 2)
    spec = cgroup_jobs.spec("true", env={"LD_A": big, "LD_B": big})

    with pytest.raises(runner.StartError, match=r"the variables LD_A, LD_B take \d+ bytes"):
        cgroup_jobs.start(spec)
    assert job_cgroups(spec) == []
    just = cgroup_jobs.spec('printf %s "$LD_A" | wc -c', env={"LD_A": big + big[:-200]})
    assert cgroup_jobs.run(just).out.strip() == str(len(big) * 2 - 200).encode()


def test_the_gate_reads_only_valid_names() -> None:
    assert spawn.gate().startswith("{ read _; } || { echo ")
    assert " && IFS= read -r LD_PRELOAD && export LD_PRELOAD; }" in spawn.gate(["LD_PRELOAD"])
    with pytest.raises(spawn.StartError, match="not a valid name"):
        spawn.gate(["LD_X; rm -rf /"])


def _gated(gate: spawn.Gate, names: list[str], command: str) -> subprocess.Popen[bytes]:
    text = spawn.gate(names) + command
    return subprocess.Popen(
        ["/bin/sh", "-c", text], stdin=gate.read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.parametrize("names", [[], ["LD_X"]])
def test_a_gate_closed_without_its_line_ends_the_shell(names: list[str]) -> None:
    # As when the worker gives up on a start, or a read times out (bash's TMOUT): the
    # shell must never go on ungated.
    gate = spawn.Gate()
    shell = _gated(gate, names, "echo ran")
    gate.close()

    out, err = shell.communicate(timeout=10)

    assert (shell.returncode, out) == (125, b"")
    assert b"was not let through its start gate" in err


def test_a_gate_opened_gives_the_shell_its_variables() -> None:
    gate = spawn.Gate()
    shell = _gated(gate, ["LD_X", "PS4"], 'printf "%s|%s|" "$LD_X" "$PS4"; env | grep ^LD_X=')
    gate.open([" a\\b ", ""])
    gate.close()

    out, _ = shell.communicate(timeout=10)

    assert (shell.returncode, out) == (0, b" a\\b ||LD_X= a\\b \n")


def test_a_shell_that_does_not_read_its_gate_is_a_start_error_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A small pipe (an unprivileged worker over its pipe quota) and a shell stopped by
    # another process of its uid: the worker waits a while, then gives up on the start.
    monkeypatch.setattr(spawn, "_GATE_WAIT", 0.3)
    gate = spawn.Gate()
    fcntl.fcntl(gate.read_end, 1031, 4096)  # F_SETPIPE_SZ: one page
    stopped = subprocess.Popen(["sleep", "30"], stdin=gate.read_end)  # never reads it
    try:
        began = time.monotonic()
        with pytest.raises(spawn.StartError, match="did not read its gate"):
            gate.open(["x" * 20_000])
        assert time.monotonic() - began < 5
    finally:
        gate.close()
        stopped.kill()
        stopped.wait()


@pytest.mark.parametrize(
    ("name", "acts"),
    [
        ("LD_PRELOAD", True), ("LD_AUDIT", True), ("BASH_ENV", True), ("ENV", True),
        ("PS4", True), ("GCONV_PATH", True), ("BASH_FUNC_f", True), ("MALLOC_TRACE", True),
        ("TMOUT", True), ("LANGUAGE", True), ("MUSL_LOCPATH", True),
        ("PATH", False), ("HOME", False), ("LANG", False), ("JOB_LD_PRELOAD", False),
        ("LD", False), ("ENVIRONMENT", False),
    ],
)  # fmt: skip
def test_which_variables_act_at_start(name: str, acts: bool) -> None:
    assert procsec.acts_at_start(name) is acts


def test_tmout_comes_last_through_the_gate() -> None:
    # bash times out each read after it with it: the values before it must be in already.
    later = jobenv.after_gate({"TMOUT": "0.01", "LD_A": "a", "PATH": "/bin", "PS4": "+"})
    assert list(later) == ["LD_A", "PS4", "TMOUT"]


def test_an_untraceable_process_dies_with_its_job_in_a_cgroup(cgroup_jobs: Jobs) -> None:
    spec = cgroup_jobs.spec(f"{UNTRACEABLE}\n{WAIT_FOR_PIDS.format(n=1)}\necho started")

    result = cgroup_jobs.run(spec)

    assert result.outcome.exit_code == 0
    assert result.out == b"started\n"
    escapee = cgroup_jobs.pids(1)
    assert escapee and all(gone(pid) for pid in escapee)
    assert job_cgroups(spec) == []


@pytest.mark.parametrize("trigger", ["kill", "watchdog"])
def test_a_job_forking_as_fast_as_it_can_leaves_no_survivor(jobs: Jobs, trigger: str) -> None:
    # Each round leaves an orphan (re-parented at once) in a new session: bounded to 1000.
    command = (
        'echo $$ >> "$PIDFILE"; i=0\n'
        "while [ $i -lt 1000 ]; do setsid sleep 300 & i=$((i+1)); done\nwait"
    )
    spec = jobs.spec(command, watchdog=30 if trigger == "kill" else 1.0)
    job, _ = jobs.start(spec)
    jobs.pids(1)
    time.sleep(0.3)  # forking at full speed by now
    if trigger == "kill":
        job.kill()

    outcome = job.wait()

    assert outcome.reason == ("killed" if trigger == "kill" else "timeout")
    time.sleep(0.2)  # a survivor would still be there
    assert survivors(spec.job_id) == []


def test_without_cgroup_kill_the_cgroup_is_frozen_and_emptied_by_hand(
    cgroup_jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older kernel (before 5.14) has no cgroup.kill: the cgroup still lists them all.
    write = cgroups._write

    def no_kill_file(path: str, data: str) -> None:
        if path.endswith("cgroup.kill"):
            raise FileNotFoundError(path)
        write(path, data)

    monkeypatch.setattr(cgroups, "_write", no_kill_file)
    forks = "i=0; while [ $i -lt 3000 ]; do (sleep 300 &); i=$((i+1)); done &"
    command = f"{IGNORES_TERM}\n{UNTRACEABLE} &\n{WAIT_FOR_PIDS.format(n=2)}\n{forks}\nsleep 300"
    spec = cgroup_jobs.spec(command)
    job, _ = cgroup_jobs.start(spec)
    pids = cgroup_jobs.pids(2)
    time.sleep(0.3)  # forking by now
    job.kill()

    outcome = job.wait()

    assert outcome.reason == "killed"
    assert [pid for pid in pids if not gone(pid)] == []
    assert survivors(spec.job_id) == []
    assert job_cgroups(spec) == []


# The job's own cgroup, as a command finds it ($CGROOT: where job cgroups are made).
OWN_CGROUP = 'CG="$CGROOT/$(sed -n "s#^0::.*/##p" /proc/self/cgroup)"'


def test_a_main_process_that_leaves_its_cgroup_and_ignores_term_still_dies(
    cgroup_jobs: Jobs,
) -> None:
    # Only a job privileged enough can (root; or the worker's own user, delegated).
    command = 'trap "" TERM; echo $$ > "$CGROOT/cgroup.procs"; while :; do sleep 1; done'
    spec = cgroup_jobs.spec(command, env={"CGROOT": cgroups.base_dir() or ""})
    job, _ = cgroup_jobs.start(spec)
    time.sleep(0.3)
    job.kill()

    outcome = job.wait()

    assert (outcome.reason, outcome.signal) == ("killed", signal.SIGKILL)


def test_a_process_that_leaves_its_cgroup_is_still_found_when_the_job_ends(
    cgroup_jobs: Jobs,
) -> None:
    leaves = """sh -c 'echo $$ > "$CGROOT/cgroup.procs"; echo $$ >> "$PIDFILE"; exec sleep 300' &"""
    spec = cgroup_jobs.spec(
        f"{leaves}\n{WAIT_FOR_PIDS.format(n=1)}\nexit 0", env={"CGROOT": cgroups.base_dir() or ""}
    )

    result = cgroup_jobs.run(spec)

    assert result.outcome.exit_code == 0
    assert [pid for pid in cgroup_jobs.pids(1) if not gone(pid)] == []


@pytest.mark.parametrize("how", ["kill", "exit"])
def test_cgroups_a_job_makes_below_its_own_are_emptied_and_removed(
    cgroup_jobs: Jobs, how: str
) -> None:
    below = (
        f'{OWN_CGROUP}; mkdir "$CG/sub"\n'
        """sh -c 'echo $$ > "$CG/sub/cgroup.procs"; echo $$ >> "$PIDFILE"; exec sleep 300' &\n"""
        f"{WAIT_FOR_PIDS.format(n=1)}\n"
    )
    command = below + ("sleep 300" if how == "kill" else "exit 0")
    spec = cgroup_jobs.spec(command, env={"CGROOT": cgroups.base_dir() or ""})
    job, _ = cgroup_jobs.start(spec)
    pids = cgroup_jobs.pids(1)
    if how == "kill":
        job.kill()

    job.wait()

    assert [pid for pid in pids if not gone(pid)] == []
    assert job_cgroups(spec) == []


def test_gated_stdin_is_dev_null_open_for_writing_too(cgroup_jobs: Jobs) -> None:
    result = cgroup_jobs.run(cgroup_jobs.spec("echo x >&0 && echo wrote"))

    assert (result.outcome.exit_code, result.out) == (0, b"wrote\n")


@needs_cgroups
def test_clean_up_after_kills_what_is_left_in_its_cgroups() -> None:
    # Given a cgroup of a dead worker's job, holding a process nothing else could find
    owner = f"jbtest-{secrets.token_hex(4)}"
    group = cgroups.create(owner, 5, "dead")
    assert group is not None
    proc = subprocess.Popen(["env", "-i", "sleep", "300"], start_new_session=True)
    try:
        os.mkdir(os.path.join(group.path, "sub"))  # the job made one below its own
        cgroups.JobCgroup(os.path.join(group.path, "sub")).add(proc.pid)
        assert group.pids() == [proc.pid]
        # When its successor cleans up
        killed, _ = runner.clean_up_after(owner)
        # Then the process is dead and the cgroup is gone
        assert killed >= 1
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert not os.path.exists(group.path)
    finally:
        proc.kill()
        proc.wait()
        group.remove()


# --- identity and reaping --------------------------------------------------------------


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


@pytest.mark.skipif(os.geteuid() != 0 or _nobody() is None, reason="needs root and 'nobody'")
def test_a_shebang_the_run_as_user_may_not_execute_is_refused(jobs: Jobs, tmp_path: Path) -> None:
    private = tmp_path / "sh"
    shutil.copy("/bin/sh", private)
    private.chmod(0o700)  # root may run it; nobody may not
    spec = jobs.spec(script=f"#!{private}\necho x\n", run_as="nobody")

    with pytest.raises(runner.StartError, match="not a program user 'nobody' may run"):
        runner.JobProcess(spec, Captured()).start()


@pytest.mark.skipif(os.geteuid() != 0 or _nobody() is None, reason="needs root and 'nobody'")
def test_run_as_switches_user(jobs: Jobs) -> None:
    nobody = _nobody()
    assert nobody is not None
    script = 'id -u; id -g; id -G; echo "$HOME"; echo "$USER $LOGNAME"; stat -c %u .'

    result = jobs.run(jobs.spec(interpreter="sh", script=script, run_as="nobody"))

    assert result.outcome.exit_code == 0, result.err
    uid, gid, groups, home, names, dir_owner = result.out.decode().splitlines()
    assert int(uid) == nobody.pw_uid
    assert int(gid) == nobody.pw_gid
    assert groups.split() == [str(nobody.pw_gid)]  # root's groups are not kept
    assert home == nobody.pw_dir
    assert names == "nobody nobody"
    assert int(dir_owner) == nobody.pw_uid


@pytest.mark.skipif(not LINUX, reason="subreapers are Linux only")
def test_become_subreaper(subreaper: bool) -> None:
    assert subreaper is True


@pytest.mark.skipif(not LINUX, reason="subreapers are Linux only")
def test_reap_orphans_takes_orphans_but_not_running_jobs(jobs: Jobs) -> None:
    # An orphan re-parented to us (we are a subreaper) and exited: a zombie to reap.
    shell = subprocess.run(["sh", "-c", "sleep 0.1 & echo $!"], capture_output=True, check=True)
    orphan = int(shell.stdout)
    # A job whose main process exited but that wait() has not collected yet.
    job, _ = jobs.start(jobs.spec("exit 7"))
    pid = job.pid
    assert pid is not None
    time.sleep(0.4)
    assert psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE

    runner.reap_orphans()

    assert not psutil.pid_exists(orphan)
    assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert job.wait().exit_code == 7


# --- the cheap check at exit -----------------------------------------------------------


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the runner's walks over all of /proc (one entry per walk)."""
    counted: list[int] = []
    table = runner._process_table

    def counting() -> dict[int, Any]:
        counted.append(1)
        return table()

    monkeypatch.setattr(runner, "_process_table", counting)
    return counted


def survivors(job_id: int) -> list[int]:
    """Live processes that carry the job's id in their environment."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(runner.JOB_ID_VAR) == str(job_id) and not gone(proc.pid):
                found.append(proc.pid)
    return found


def test_short_job_needs_no_walk_in_a_subreaper(
    session_jobs: Jobs, reaper_mode: str, walks: list[int]
) -> None:
    result = session_jobs.run(session_jobs.spec("echo hi"))

    assert result.out == b"hi\n"
    if reaper_mode == "subreaper":
        assert walks == []  # the worker's children showed nothing could be left
    else:
        assert walks != []  # orphans went to init: only a walk can tell


@pytest.mark.parametrize("leftover", ["background", "escapee", "both"])
def test_leftovers_of_a_main_process_that_exited_0_at_once_die(
    session_jobs: Jobs, reaper_mode: str, walks: list[int], leftover: str
) -> None:
    # No waiting: the main process may be gone before its children even ran.
    parts = {"background": [BACKGROUND], "escapee": [ESCAPES], "both": [BACKGROUND, ESCAPES]}
    spec = session_jobs.spec("\n".join([*parts[leftover], "exit 0"]))

    result = session_jobs.run(spec)

    assert result.outcome.exit_code == 0
    assert walks != []  # something was left, so the job was searched for
    time.sleep(0.3)  # a missed escapee would have written its pid by now
    assert [pid for pid in session_jobs.pids(0) if not gone(pid)] == []
    assert survivors(spec.job_id) == []


def test_untrusted_child_lists_fall_back_to_a_walk(
    session_jobs: Jobs, monkeypatch: pytest.MonkeyPatch, walks: list[int]
) -> None:
    monkeypatch.setattr(runner, "_worker_children", lambda: None)
    spec = session_jobs.spec(f"{BACKGROUND}\nexit 0")

    result = session_jobs.run(spec)

    assert result.outcome.exit_code == 0
    assert walks != []
    assert [pid for pid in session_jobs.pids(1) if not gone(pid)] == []


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_worker_children_include_those_of_other_threads() -> None:
    # The thread lives on while the lists are read: when a thread ends, its children
    # move to the main thread, which would hide a runner reading only its own list.
    started: list[subprocess.Popen[bytes]] = []
    done = threading.Event()

    def start_and_stay() -> None:
        started.append(subprocess.Popen(["sleep", "30"]))
        done.wait(10)

    thread = threading.Thread(target=start_and_stay)
    thread.start()
    try:
        while not started:
            time.sleep(0.01)

        children = runner._worker_children()

        assert children is not None
        assert children.get(started[0].pid) is True  # listed, and running
    finally:
        done.set()
        thread.join()
        for child in started:
            child.kill()
            child.wait()


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_young_running_strays_are_seen_old_and_ended_ones_not() -> None:
    old = subprocess.Popen(["sleep", "30"])
    time.sleep(0.05)  # start times count in clock ticks (10 ms)
    young = subprocess.Popen(["sleep", "30"])
    try:
        row = runner._process_row(young.pid)
        assert row is not None
        with runner._owned_lock:
            assert runner._no_young_strays(row.born) is False
        young.kill()
        os.waitid(os.P_PID, young.pid, os.WEXITED | os.WNOWAIT)  # a zombie now, not reaped
        with runner._owned_lock:
            assert runner._no_young_strays(row.born) is True  # ended, and old is too old
    finally:
        for child in (old, young):
            child.kill()
            child.wait()


@pytest.mark.skipif(not LINUX, reason="subreapers are Linux only")
def test_concurrent_jobs_leave_nothing_behind(jobs: Jobs) -> None:
    # Short jobs in parallel, half of them leaving a child behind: each job's exit check
    # runs while other jobs' mains start, end and leave strays.
    commands = ["echo hi", f"{BACKGROUND}\n{IGNORES_TERM}\necho hi"] * 8
    specs = [jobs.spec(command) for command in commands]
    results: dict[int, Result] = {}

    def run_some(part: list[runner.RunSpec]) -> None:
        for spec in part:
            results[spec.job_id] = jobs.run(spec)

    threads = [threading.Thread(target=run_some, args=(specs[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == len(specs)
    assert all(r.outcome.exit_code == 0 and r.out == b"hi\n" for r in results.values())
    assert [pid for pid in jobs.pids(8) if not gone(pid)] == []  # the 8 from BACKGROUND, at least
    assert [pid for spec in specs for pid in survivors(spec.job_id)] == []


def test_clean_up_after_takes_only_what_its_owner_left() -> None:
    # Given a job of worker "node" and one of worker "node-2", both left behind (named
    # apart from any other test run's on the host: the clean-up sweeps the whole host)
    node = f"node{secrets.token_hex(4)}"
    left = [
        runner.JobProcess(
            runner.RunSpec(job_id=90 + i, command="sleep 300", interpreter=None, script=None,
                           owner=owner),
            lambda stream, data: None,
        )
        for i, owner in enumerate((node, f"{node}-2"))
    ]  # fmt: skip
    pids = [job.start() for job in left]
    mine = tempfile.mkdtemp(prefix=f"jobbalancer-{node}@7-")
    other = tempfile.mkdtemp(prefix=f"jobbalancer-{node}-2@8-")
    try:
        # When "node" cleans up after its predecessor
        killed, removed = runner.clean_up_after(node)
        # Then only its own process and directories are gone
        assert killed >= 1  # the shell and its sleep, however many processes that makes
        assert removed == 2  # the stale one, and the live job's own
        assert left[0].wait().signal == signal.SIGKILL
        assert psutil.pid_exists(pids[1])
        assert os.path.isdir(other)
        assert not os.path.exists(mine)
    finally:
        left[1].kill()
        left[1].wait()
        left[0].kill()
        left[0].wait()
        shutil.rmtree(mine, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)


# --- dynamic uids -----------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not LINUX, reason="needs root on Linux")


@pytest.fixture
def pool(tmp_path: Path) -> uids.UidPool:
    """A pool of a few uids, locked in a directory of this test's own."""
    first = random.randrange(70000, 79000)  # another test run on the host picks others
    return uids.UidPool(uids.UidRange(first, first + 7), lock_dir=str(tmp_path / "uids"))


def _busy(pool: uids.UidPool) -> list[int]:
    found = []
    for name in os.listdir(pool.lock_dir):
        with open(os.path.join(pool.lock_dir, name), "rb") as file:
            if file.read().startswith(b"busy"):
                found.append(int(name))
    return found


@needs_root
def test_a_dynamic_uid_is_taken_for_the_job_and_released(jobs: Jobs, pool: uids.UidPool) -> None:
    script = 'id -u; id -g; id -G; echo "$HOME|$TMPDIR|$USER|$LOGNAME"; stat -c "%a %u %g" .'
    spec = jobs.spec(interpreter="sh", script=script, uid_pool=pool)

    job, captured = jobs.start(spec)
    assert len(_busy(pool)) == 1  # held while it runs
    outcome = job.wait()

    assert outcome.exit_code == 0, captured.stream("stderr")
    uid, gid, groups, names, mode = captured.stream("stdout").decode().splitlines()
    assert pool.range.first <= int(uid) <= pool.range.last
    assert gid == uid and groups == uid  # its own group, no supplementary ones
    home, tmpdir, user, logname = names.split("|")
    assert home == tmpdir and os.path.basename(home).startswith(f"jobbalancer-{spec.job_id}-")
    assert user == logname == f"jb-{uid}"
    assert mode == f"700 {uid} {uid}"
    assert _busy(pool) == []  # released


@needs_root
def test_the_least_recently_used_uid_comes_next(jobs: Jobs, pool: uids.UidPool) -> None:
    seen = [jobs.run(jobs.spec("id -u", uid_pool=pool)).out.strip() for _ in range(9)]

    assert len(set(seen[:8])) == 8  # each of the 8 once before any comes again
    assert seen[8] == seen[0]


@needs_root
def test_uids_are_unique_among_concurrent_jobs_and_pools(jobs: Jobs, pool: uids.UidPool) -> None:
    # Two pools on one lock directory: two workers on one host
    other = uids.UidPool(pool.range, lock_dir=pool.lock_dir)
    started = [jobs.start(jobs.spec("id -u; sleep 0.5", uid_pool=p)) for p in [pool, other] * 3]
    for job, _ in started:
        job.wait()

    seen = [captured.stream("stdout").strip() for _, captured in started]
    assert len(set(seen)) == 6


@needs_root
def test_all_uids_busy_is_a_start_error_that_leaves_nothing(jobs: Jobs, pool: uids.UidPool) -> None:
    running = [jobs.start(jobs.spec("sleep 30", uid_pool=pool))[0] for _ in range(8)]
    spec = jobs.spec("true", uid_pool=pool)

    with pytest.raises(runner.StartError, match="dynamic uids are busy"):
        runner.JobProcess(spec, Captured()).start()

    assert leftover_dirs(spec) == []
    for job in running:
        job.kill()
        job.wait()
    assert _busy(pool) == []


@needs_root
def test_what_a_uid_left_in_shared_places_is_removed_on_release(
    jobs: Jobs, pool: uids.UidPool
) -> None:
    # Given a job that leaves files, a read-only tree and a fifo in /tmp and /dev/shm
    # and a System V shared memory segment
    tag = secrets.token_hex(4)
    left = [f"/tmp/jbtest-left-{tag}", f"/tmp/jbtest-tree-{tag}", f"/dev/shm/jbtest-{tag}"]
    command = (
        f"echo secret > {left[0]}; mkdir -p {left[1]}/sub; chmod 500 {left[1]}; "
        f"mkfifo {left[2]}; ipcmk -M 4096 >/dev/null && id -u"
    )

    result = jobs.run(jobs.spec(command, uid_pool=pool))

    # Then none of it is there for the next job with that uid
    assert result.outcome.exit_code == 0, result.err
    assert [path for path in left if os.path.lexists(path)] == []
    uid = result.out.decode().strip()
    with open("/proc/sysvipc/shm") as segments:
        owners = [row.split()[7] for row in segments.read().splitlines()[1:]]
    assert uid not in owners


def test_removing_files_of_a_uid_leaves_others_and_follows_no_link(tmp_path: Path) -> None:
    uid = 79999
    shared = tmp_path / "shared"
    (shared / "open").mkdir(parents=True)
    shared.chmod(0o1777)
    (shared / "open").chmod(0o1777)
    (shared / "closed").mkdir(mode=0o700)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "keep"
    victim.write_text("x")
    os.chown(victim, uid, uid)
    for path in ("mine", "open/mine", "closed/not-searched"):
        (shared / path).write_text("x")
        os.chown(shared / path, uid, uid)
    (shared / "link").symlink_to(outside)
    (shared / "theirs").write_text("x")

    found = uids.remove_files_of(uid, (str(shared),))

    assert found == 2
    assert sorted(p.name for p in shared.iterdir()) == ["closed", "link", "open", "theirs"]
    assert list((shared / "open").iterdir()) == []
    assert (shared / "closed" / "not-searched").exists()  # the uid could not write there
    assert victim.exists()


def _left_busy(pool: uids.UidPool, uid: int) -> subprocess.Popen[bytes]:
    """A process of uid, and its lock file saying busy with no holder: a dead worker's."""
    os.makedirs(pool.lock_dir, exist_ok=True)
    Path(pool.lock_dir, str(uid)).write_text("busy 1\n")
    return subprocess.Popen(["sleep", "300"], user=uid, group=uid, extra_groups=[])


@needs_root
def test_a_uid_left_busy_by_a_dead_worker_is_cleaned_when_a_worker_starts(
    pool: uids.UidPool,
) -> None:
    stray = _left_busy(pool, pool.range.first)
    try:
        uids.UidPool(pool.range, lock_dir=pool.lock_dir)

        assert stray.wait(timeout=10) == -signal.SIGKILL
        assert Path(pool.lock_dir, str(pool.range.first)).read_text() == "free\n"
    finally:
        stray.kill()
        stray.wait()


@needs_root
def test_a_uid_left_busy_by_a_dead_worker_is_cleaned_before_reuse(pool: uids.UidPool) -> None:
    # Given a uid a worker died holding, after this pool started
    stray = _left_busy(pool, pool.range.first)
    try:
        # When that uid is taken again
        leases = [pool.acquire() for _ in range(len(pool.range))]
        # Then the stray was killed first
        assert stray.wait(timeout=10) == -signal.SIGKILL
        for lease in leases:
            lease.release()
    finally:
        stray.kill()
        stray.wait()


def test_the_uid_range_is_checked() -> None:
    assert uids.UidRange.parse(" 70000 - 70010 ") == uids.UidRange(70000, 70010)
    for bad in ("70000", "9-10", "80000-70000", "x-y", "70000-4294967295", ""):
        with pytest.raises(ValueError, match=r"range|give"):
            uids.UidRange.parse(bad)


def test_ids_of_accounts_in_the_range_are_skipped(tmp_path: Path) -> None:
    taken = pwd.getpwuid(os.geteuid()).pw_uid
    if taken < 1000:
        taken = max(e.pw_uid for e in pwd.getpwall() if e.pw_uid < 2**31 - 2)
    if taken < 1000:
        pytest.skip("no account with a uid of 1000 or more here")
    pool = uids.UidPool(uids.UidRange(taken, taken + 1), lock_dir=str(tmp_path / "u"))

    lease = pool.acquire()
    try:
        assert lease.uid == taken + 1
    finally:
        lease.release()


@needs_root
def test_interpreters_are_checked_as_the_jobs_user(
    jobs: Jobs, pool: uids.UidPool, tmp_path: Path
) -> None:
    # Given an interpreter in a directory only root may search (like /root/.pyenv/shims)
    hidden = tmp_path / "private-bin"
    hidden.mkdir(mode=0o700)
    shutil.copy("/bin/sh", hidden / "jbtest-sh")
    spec = jobs.spec(interpreter="jbtest-sh", script="echo x", uid_pool=pool,
                     env={"PATH": f"{hidden}:/usr/bin:/bin"})  # fmt: skip

    # Then a job with a dynamic uid does not pick it; nor an absolute path to it
    with pytest.raises(runner.StartError, match="not executable by user 'dynamic'"):
        runner.JobProcess(spec, Captured()).start()
    absolute = jobs.spec(interpreter=str(hidden / "jbtest-sh"), script="x", uid_pool=pool)
    with pytest.raises(runner.StartError, match="not found or not executable"):
        runner.JobProcess(absolute, Captured()).start()
    assert _busy(pool) == []


# --- a job attacking the removal of its directory ------------------------------------


@pytest.fixture
def victim_tree() -> Iterator[Path]:
    """Root's directories of mode 0755, which no job's removal may touch."""
    top = Path(tempfile.mkdtemp(prefix="jbtest-victim-", dir="/tmp"))
    for sub in ("a", "a/b", "c"):
        (top / sub).mkdir()
    for path in (top, top / "a", top / "a/b", top / "c"):
        path.chmod(0o755)
    (top / "a/b/keep").write_text("kept")
    yield top
    shutil.rmtree(top)


def _modes(top: Path) -> dict[str, int]:
    return {str(p): p.lstat().st_mode & 0o7777 for p in (top, *sorted(top.rglob("*")))}


def test_remove_dir_of_a_directory_swapped_for_a_link_removes_only_the_link(
    victim_tree: Path,
) -> None:
    before = _modes(victim_tree)
    path = tempfile.mkdtemp(prefix="jbtest-jobdir-")
    os.rmdir(path)  # the job: mv "$TMPDIR" elsewhere; ln -s /usr "$TMPDIR"
    os.symlink(victim_tree, path)

    spawn.remove_dir(path)

    assert not os.path.lexists(path)
    assert _modes(victim_tree) == before  # not one chmod through the link


def test_remove_dir_follows_no_link_inside_and_removes_read_only_subdirectories(
    victim_tree: Path,
) -> None:
    before = _modes(victim_tree)
    path = Path(tempfile.mkdtemp(prefix="jbtest-jobdir-"))
    (path / "ro/deeper").mkdir(parents=True)
    (path / "ro/deeper/f").write_text("x")
    (path / "ro/link").symlink_to(victim_tree)
    (path / "link").symlink_to(victim_tree / "a")
    (path / "ro/deeper").chmod(0o500)
    (path / "ro").chmod(0o000)

    spawn.remove_dir(str(path))

    assert not os.path.lexists(path)
    assert _modes(victim_tree) == before and (victim_tree / "a/b/keep").read_text() == "kept"


@needs_root
def test_a_job_that_swaps_its_temp_dir_for_a_link_chmods_nothing(
    jobs: Jobs, pool: uids.UidPool, victim_tree: Path
) -> None:
    before = _modes(victim_tree)
    swap = f'mv "$TMPDIR" "$TMPDIR.moved" && ln -s {victim_tree} "$TMPDIR" && echo swapped'

    result = jobs.run(jobs.spec(swap, uid_pool=pool))

    assert result.out == b"swapped\n", result.err
    assert _modes(victim_tree) == before
    assert leftover_dirs(jobs.spec("true")) == []


@needs_root
def test_the_uid_is_released_before_the_directory_is_removed(
    jobs: Jobs, pool: uids.UidPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    release, remove = uids.Lease.release, spawn.remove_dir

    def releasing(lease: uids.Lease, *, processes_gone: bool = True) -> None:
        order.append("release")
        release(lease, processes_gone=processes_gone)

    def removing(path: str) -> None:
        order.append("remove")
        remove(path)

    monkeypatch.setattr(uids.Lease, "release", releasing)
    monkeypatch.setattr(spawn, "remove_dir", removing)
    assert jobs.run(jobs.spec("true", uid_pool=pool)).outcome.exit_code == 0

    assert order == ["release", "remove"]  # no process of the uid is left to swap links


@needs_root
def test_a_process_forked_by_ld_preload_before_the_gate_cannot_outlive_the_job(
    cgroup_jobs: Jobs, pool: uids.UidPool, tmp_path: Path
) -> None:
    # A job's LD_PRELOAD library runs in every process of the job that loads it: were the
    # gated shell to load it, a process forked before the move into the job's cgroup,
    # in a session of its own, would outlive the job unseen.
    if shutil.which("cc") is None:
        pytest.skip("no C compiler to build the library")
    source = tmp_path / "fork.c"
    source.write_text(
        "#include <stdlib.h>\n#include <unistd.h>\n#include <stdio.h>\n"
        "__attribute__((constructor)) static void stray(void) {\n"
        '  if (getenv("STRAY_DONE")) return;\n  setenv("STRAY_DONE", "1", 1);\n'
        "  pid_t pid = fork();\n"
        '  if (pid == 0) { setsid(); unsetenv("LD_PRELOAD");\n'
        '    execl("/bin/sleep", "sleep", "300", (char *)0); _exit(1); }\n'
        '  FILE *f = fopen(getenv("STRAY_FILE"), "a");\n'
        '  if (f) { fprintf(f, "%d\\n", (int)pid); fclose(f); }\n}\n'
    )
    place = Path(tempfile.mkdtemp(prefix="jbtest-preload-", dir="/var/tmp"))
    try:
        place.chmod(0o755)
        library, pids = place / "fork.so", place / "pids"
        subprocess.run(["cc", "-shared", "-fPIC", "-o", library, source], check=True)
        pids.touch(mode=0o666)
        pids.chmod(0o666)
        env = {"LD_PRELOAD": str(library), "STRAY_FILE": str(pids)}

        result = cgroup_jobs.run(cgroup_jobs.spec("echo ran", env=env, uid_pool=pool))

        assert (result.outcome.exit_code, result.out) == (0, b"ran\n")
        strays = [int(pid) for pid in pids.read_text().split()]
        assert strays == [], "the gated shell loaded the job's LD_PRELOAD"
        # And a program the job starts does load it: the library works
        result = cgroup_jobs.run(cgroup_jobs.spec("/bin/true", env=env, uid_pool=pool))
        strays = [int(pid) for pid in pids.read_text().split()]
        assert len(strays) == 1
        deadline = time.monotonic() + 5
        while not gone(strays[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(strays[0])  # forked inside the cgroup: killed with the job
    finally:
        with contextlib.suppress(OSError, ValueError):
            for pid in (place / "pids").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(place)


# --- no setuid program gives a job another uid ----------------------------------------

_SETUID_RUN = """
import subprocess, sys
from jobbalancer import procsec
if sys.argv[2] == "nnp":
    assert procsec.no_new_privs()
done = subprocess.run([sys.argv[1], "-u"], user=int(sys.argv[3]), group=int(sys.argv[3]),
                      extra_groups=[], capture_output=True, check=True)
sys.stdout.write(done.stdout.decode())
"""


@needs_root
def test_with_no_new_privs_a_setuid_copy_left_by_a_uid_does_not_make_another_job_it(
    pool: uids.UidPool,
) -> None:
    holder, later = pool.range.first, pool.range.first + 1
    place = Path(tempfile.mkdtemp(prefix="jbtest-setuid-", dir="/var/tmp"))
    try:
        place.chmod(0o755)
        planted = place / "id"
        shutil.copy("/usr/bin/id", planted)  # what the earlier holder left, chmod 4755
        os.chown(planted, holder, holder)
        planted.chmod(0o4755)

        def euid(mode: str) -> str:
            argv = [sys.executable, "-c", _SETUID_RUN, str(planted), mode, str(later)]
            return subprocess.run(argv, capture_output=True, check=True, text=True).stdout

        if euid("plain").strip() != str(holder):
            pytest.skip(f"setuid programs do not run on {place}'s file system")
        assert euid("nnp").strip() == str(later)
    finally:
        shutil.rmtree(place)


@pytest.mark.skipif(not LINUX, reason="a Linux prctl")
def test_no_new_privs_is_inherited_by_the_jobs() -> None:
    code = "from jobbalancer import procsec; import os; procsec.no_new_privs(); "
    code += "os.execv('/bin/grep', ['grep', 'NoNewPrivs', '/proc/self/status'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout

    assert out.split() == ["NoNewPrivs:", "1"]

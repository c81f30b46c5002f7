"""The `jobbalancer` command on temporary SQLite databases (Typer's CliRunner, in-process)."""

from __future__ import annotations

import getpass
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from jobbalancer import auth, cli, db, settings
from jobbalancer.cli import submit, up
from jobbalancer.client import Client
from jobbalancer.db import schema


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No JOBBALANCER_* variable of the host, and no ./jobbalancer.toml, leaks in."""
    for key in list(os.environ):
        if key.startswith("JOBBALANCER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    """The test database as the CLI leaves it (the CLI creates the schema itself)."""
    eng = db.connect(url)
    yield eng
    eng.dispose()


def run(runner: CliRunner, *args: str, **kwargs: Any) -> Any:
    return runner.invoke(cli.app, list(args), **kwargs)


def last_line(output: str) -> str:
    return output.rstrip("\n").splitlines()[-1]


# -- users and keys -----------------------------------------------------------------------


def test_users_create_prints_a_working_password_as_the_last_line(
    runner: CliRunner, url: str, engine: sa.Engine
) -> None:
    result = run(runner, "users", "create", "alice", "--role", "submitter", "--database-url", url)

    assert result.exit_code == 0, result.output
    password = last_line(result.output)
    assert "alice" in result.output.splitlines()[0]
    with db.read(engine) as conn:
        user = auth.authenticate_password(conn, "alice", password)
    assert user is not None and user.role == auth.Role.SUBMITTER


def test_users_create_with_limits(runner: CliRunner, url: str, engine: sa.Engine) -> None:
    result = run(
        runner,
        "users",
        "create",
        "bob",
        "--role",
        "operator",
        "--scripts-only",
        "--classes",
        "gpu, default",
        "--database-url",
        url,
    )

    assert result.exit_code == 0, result.output
    with db.read(engine) as conn:
        bob = auth.find_user(conn, "bob")
    assert not bob.commands_allowed
    assert bob.worker_classes == ("gpu", "default")


def test_password_stdin_sets_that_password_and_prints_none(
    runner: CliRunner, url: str, engine: sa.Engine
) -> None:
    result = run(
        runner,
        "users",
        "create",
        "carol",
        "--role",
        "viewer",
        "--password-stdin",
        "--database-url",
        url,
        input="correct horse\n",
    )

    assert result.exit_code == 0, result.output
    assert "correct horse" not in result.output
    with db.read(engine) as conn:
        assert auth.authenticate_password(conn, "carol", "correct horse") is not None


def test_password_stdin_refuses_an_empty_password(runner: CliRunner, url: str) -> None:
    result = run(
        runner,
        "users",
        "create",
        "dan",
        "--role",
        "viewer",
        "--password-stdin",
        "--database-url",
        url,
        input="",
    )

    assert result.exit_code == cli.RET_USAGE
    assert "standard input" in result.output


def test_reset_password_prints_the_new_one_last(
    runner: CliRunner, url: str, engine: sa.Engine
) -> None:
    run(runner, "users", "create", "erin", "--role", "admin", "--database-url", url)

    result = run(runner, "users", "reset-password", "erin", "--database-url", url)

    assert result.exit_code == 0, result.output
    with db.read(engine) as conn:
        assert auth.authenticate_password(conn, "erin", last_line(result.output)) is not None


def test_keys_create_prints_a_key_that_authenticates_as_the_last_line(
    runner: CliRunner, url: str, engine: sa.Engine
) -> None:
    run(runner, "users", "create", "frank", "--role", "operator", "--database-url", url)

    result = run(runner, "keys", "create", "frank", "--name", "ci", "--database-url", url)

    assert result.exit_code == 0, result.output
    key = last_line(result.output)
    assert key.startswith(auth.KEY_PREFIX)
    with db.read(engine) as conn:
        user = auth.authenticate_key(conn, key)
    assert user is not None and user.name == "frank"


def test_keys_create_name_with_user_scope_and_expiry_as_the_issue_writes_it(
    runner: CliRunner, url: str, engine: sa.Engine
) -> None:
    run(runner, "users", "create", "fern", "--role", "operator", "--database-url", url)

    result = run(
        runner, "keys", "create", "ci", "--user", "fern", "--scope", "submit",
        "--expires", "30d", "--database-url", url,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    with db.read(engine) as conn:
        (record,) = auth.list_api_keys(conn, auth.find_user(conn, "fern").id)
        assert auth.authenticate_key(conn, last_line(result.output)) is not None
    assert record.name == "ci" and record.scope.value == "submit"
    assert record.expires_at is not None


def test_keys_create_a_name_that_is_no_user_asks_whose_key_it_is(
    runner: CliRunner, url: str
) -> None:
    result = run(runner, "keys", "create", "pipeline", "--scope", "submit", "--database-url", url)

    assert result.exit_code == cli.RET_NOT_FOUND
    assert "--user" in result.output


def test_keys_create_with_both_user_and_name_is_a_usage_error(runner: CliRunner, url: str) -> None:
    run(runner, "users", "create", "gus", "--role", "viewer", "--database-url", url)

    result = run(
        runner, "keys", "create", "ci", "--user", "gus", "--name", "x", "--database-url", url
    )

    assert result.exit_code == cli.RET_USAGE
    assert "--name" in result.output


def test_local_commands_are_audited_with_who_ran_them_where(
    runner: CliRunner, url: str, engine: sa.Engine
) -> None:
    run(runner, "users", "create", "hedy", "--role", "viewer", "--database-url", url)
    run(runner, "keys", "create", "ci", "--user", "hedy", "--database-url", url)

    with db.read(engine) as conn:
        a = schema.audit_log
        rows = conn.execute(sa.select(a).order_by(a.c.id)).all()
    assert [r.action for r in rows] == ["user.create", "key.create"]
    for row in rows:
        assert (row.actor_id, row.actor_name, row.via) == (None, "local", "cli")
        assert row.address == f"{getpass.getuser()}@{socket.gethostname()}"[:64]


def test_keys_list_and_revoke(runner: CliRunner, url: str, engine: sa.Engine) -> None:
    run(runner, "users", "create", "gina", "--role", "viewer", "--database-url", url)
    key = last_line(run(runner, "keys", "create", "gina", "--database-url", url).output)
    with db.read(engine) as conn:
        key_id = auth.list_api_keys(conn, auth.find_user(conn, "gina").id)[0].id

    listed = run(runner, "keys", "list", "gina", "--json", "--database-url", url)
    revoked = run(runner, "keys", "revoke", "gina", str(key_id), "--database-url", url)
    again = run(runner, "keys", "revoke", "gina", str(key_id), "--database-url", url)

    assert listed.exit_code == 0 and key[:11] in listed.output
    assert key not in listed.output
    assert revoked.exit_code == 0, revoked.output
    with db.read(engine) as conn:
        assert auth.authenticate_key(conn, key) is None
    assert again.exit_code == cli.RET_NOT_FOUND


def test_users_list(runner: CliRunner, url: str) -> None:
    run(runner, "users", "create", "hank", "--role", "viewer", "--database-url", url)

    result = run(runner, "users", "list", "--database-url", url)

    assert result.exit_code == 0, result.output
    assert "hank" in result.output and "viewer" in result.output


def test_bad_role_is_a_clear_error(runner: CliRunner, url: str) -> None:
    result = run(runner, "users", "create", "ivan", "--role", "boss", "--database-url", url)

    assert result.exit_code == cli.RET_USAGE
    assert "role must be one of admin, operator, submitter, viewer" in result.output


def test_duplicate_user_is_a_conflict(runner: CliRunner, url: str) -> None:
    run(runner, "users", "create", "judy", "--role", "viewer", "--database-url", url)

    result = run(runner, "users", "create", "judy", "--role", "viewer", "--database-url", url)

    assert result.exit_code == cli.RET_CONFLICT
    assert "already exists" in result.output


def test_unknown_user_for_a_key(runner: CliRunner, url: str) -> None:
    result = run(runner, "keys", "create", "nobody-here", "--database-url", url)

    assert result.exit_code == cli.RET_NOT_FOUND
    assert "does not exist" in result.output


# -- environment variables ----------------------------------------------------------------


def test_environment_variables_reach_options(
    runner: CliRunner, url: str, engine: sa.Engine
) -> None:
    env = {"JOBBALANCER_DATABASE_URL": url, "JOBBALANCER_USER_ROLE": "operator"}

    result = run(runner, "users", "create", "kate", env=env)

    assert result.exit_code == 0, result.output
    with db.read(engine) as conn:
        assert auth.find_user(conn, "kate").role == auth.Role.OPERATOR


def test_data_dir_from_the_environment(runner: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"

    result = run(runner, "db", "upgrade", env={"JOBBALANCER_DATA_DIR": str(data)})

    assert result.exit_code == 0, result.output
    assert (data / "jobbalancer.db").exists()


def _options(command: Any, path: str = "jobbalancer") -> Iterator[tuple[str, Any]]:
    for param in getattr(command, "params", []):
        if param.param_type_name == "option" and not param.hidden:
            yield path, param
    for name, sub in getattr(command, "commands", {}).items():
        yield from _options(sub, f"{path} {name}")


def test_every_option_has_an_environment_variable_shown_in_help(runner: CliRunner) -> None:
    command = typer.main.get_command(cli.app)
    skip = {"help", "install_completion", "show_completion"}
    helps: dict[str, str] = {}
    checked = 0
    for path, option in _options(command):
        if option.name in skip:
            continue
        assert option.envvar, f"{path} {option.opts[0]} has no environment variable"
        assert str(option.envvar).startswith("JOBBALANCER_")
        if path not in helps:
            words = path.split()[1:]
            helps[path] = run(runner, *words, "--help", env={"COLUMNS": "300"}).output
        assert option.envvar in helps[path], f"{path} --help does not show {option.envvar}"
        checked += 1
    assert checked > 40


def test_option_variables_do_not_trip_the_settings_loader(
    runner: CliRunner, url: str, engine: sa.Engine
) -> None:
    """Command-only variables must not look like JOBBALANCER_<SECTION>_<KEY> settings."""
    command = typer.main.get_command(cli.app)
    env = {str(o.envvar): "x" for _, o in _options(command) if o.envvar}
    settings_like = {k for k in env if k.split("_")[1].lower() in ("database", "server", "worker")}
    allowed = {
        "JOBBALANCER_DATABASE_URL",
        "JOBBALANCER_DATABASE_URL_FILE",
        "JOBBALANCER_SERVER_HOST",
        "JOBBALANCER_SERVER_PORT",
        "JOBBALANCER_SERVER_TLS_CERT",
        "JOBBALANCER_SERVER_TLS_KEY",
        "JOBBALANCER_SERVER_ALLOW_ROOT",
        "JOBBALANCER_WORKER_NAME",
        "JOBBALANCER_WORKER_WORKER_CLASS",
        "JOBBALANCER_WORKER_MAX_JOBS",
        "JOBBALANCER_WORKER_RUN_AS",
        "JOBBALANCER_WORKER_DYNAMIC_UIDS",
        "JOBBALANCER_WORKER_JOB_PATH",
        "JOBBALANCER_WORKER_ID_FILE",
        "JOBBALANCER_WORKER_ALLOW_ROOT",
        "JOBBALANCER_WORKER_CGROUPS",
        "JOBBALANCER_WORKER_CPUS",
        "JOBBALANCER_WORKER_MEMORY",
        "JOBBALANCER_WORKER_GPUS",
        "JOBBALANCER_WORKER_LABELS",
    }
    assert settings_like <= allowed


# -- db -----------------------------------------------------------------------------------


def test_db_upgrade_then_current(runner: CliRunner, url: str, engine: sa.Engine) -> None:
    before = run(runner, "db", "current", "--database-url", url)
    upgraded = run(runner, "db", "upgrade", "--database-url", url)
    after = run(runner, "db", "current", "--database-url", url)
    repeated = run(runner, "db", "upgrade", "--database-url", url)

    assert before.exit_code == cli.RET_SCHEMA
    assert before.output == "none (no schema yet: run `jobbalancer db upgrade`)\n"
    assert upgraded.exit_code == 0, upgraded.output
    revision = db.current_revision(engine)
    assert revision and revision in upgraded.output
    assert after.exit_code == 0
    assert after.output == f"{revision} (up to date)\n"
    assert repeated.exit_code == 0


def _set_revision(engine: sa.Engine, revision: str) -> None:
    with db.write(engine) as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision})


def test_db_current_on_an_older_schema_exits_11(
    runner: CliRunner, url: str, engine: sa.Engine
) -> None:
    db.upgrade(engine, "0006")

    result = run(runner, "db", "current", "--database-url", url)

    assert result.exit_code == cli.RET_SCHEMA == 11
    head = db.head_revision()
    expected = f"0006 (older than this version's {head}: run `jobbalancer db upgrade`)\n"
    assert result.output == expected
    assert db.current_revision(engine) == "0006"  # `db current` changes nothing


def test_db_current_on_a_newer_schema_exits_11(
    runner: CliRunner, url: str, engine: sa.Engine
) -> None:
    db.upgrade(engine)
    _set_revision(engine, "ffff0000")

    result = run(runner, "db", "current", "--database-url", url)

    assert result.exit_code == cli.RET_SCHEMA
    head = db.head_revision()
    assert result.output == (
        f"ffff0000 (newer than this version knows ({head}): upgrade jobbalancer here)\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("db", "upgrade"),
        ("users", "create", "bob", "--role", "viewer"),
        ("users", "list"),
        ("keys", "list", "admin"),
    ],
)
def test_a_newer_schema_is_refused_in_one_line_and_left_alone(
    runner: CliRunner, url: str, engine: sa.Engine, args: tuple[str, ...]
) -> None:
    db.upgrade(engine)
    _set_revision(engine, "ffff0000")

    result = run(runner, *args, "--database-url", url)

    assert result.exit_code == cli.RET_SCHEMA, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "newer than jobbalancer" in lines[0], result.output
    assert "upgrade jobbalancer on this machine" in lines[0]
    assert db.current_revision(engine) == "ffff0000"


def test_admin_commands_do_not_migrate_an_older_schema(
    runner: CliRunner, url: str, engine: sa.Engine
) -> None:
    db.upgrade(engine, "0006")

    result = run(runner, "users", "create", "bob", "--role", "viewer", "--database-url", url)

    assert result.exit_code == cli.RET_SCHEMA, result.output
    assert "older than this version's" in result.output
    assert "jobbalancer db upgrade" in result.output
    assert db.current_revision(engine) == "0006"


def test_admin_commands_create_the_schema_on_an_empty_database(
    runner: CliRunner, url: str, engine: sa.Engine
) -> None:
    result = run(runner, "users", "create", "bob", "--role", "viewer", "--database-url", url)

    assert result.exit_code == 0, result.output
    assert db.current_revision(engine) == db.head_revision()


def test_grant_worker_on_sqlite_is_refused(runner: CliRunner, url: str) -> None:
    result = run(runner, "db", "grant-worker", "jb_worker", "--database-url", url)

    assert result.exit_code == cli.RET_CONFIG
    assert "SQLite has no roles" in result.output
    assert not Path(url.removeprefix("sqlite:///")).exists()  # nothing opened, nothing made


@pytest.mark.parametrize("role", ["Bad", "1abc", "a-b", "x" * 64, "a;drop", "'q'"])
def test_grant_worker_refuses_a_role_name_that_needs_quoting(
    runner: CliRunner, url: str, role: str
) -> None:
    result = run(runner, "db", "grant-worker", role, "--database-url", url)

    assert result.exit_code == cli.RET_USAGE
    assert "role name" in result.output


def test_grant_worker_refuses_a_bad_host_pattern(runner: CliRunner, url: str) -> None:
    args = ("db", "grant-worker", "jb_worker", "--from-host", "a'b", "--database-url", url)
    result = run(runner, *args)

    assert result.exit_code == cli.RET_USAGE
    assert "host pattern" in result.output


def test_bad_database_url_is_a_config_error(runner: CliRunner) -> None:
    result = run(runner, "db", "upgrade", "--database-url", "oracle://x/y")

    assert result.exit_code == cli.RET_CONFIG
    assert "not supported" in result.output


def test_missing_config_file_is_a_config_error(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "db", "upgrade", "--config", str(tmp_path / "nope.toml"))

    assert result.exit_code == cli.RET_CONFIG
    assert "does not exist" in result.output


def test_unreachable_database(runner: CliRunner) -> None:
    result = run(
        runner, "db", "upgrade", "--database-url", "postgresql://u:secret@127.0.0.1:1/jobbalancer"
    )

    assert result.exit_code == cli.RET_DATABASE
    assert "--database-url" in result.output
    assert "secret" not in result.output


# -- client commands without a server -------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_says_what_to_do(runner: CliRunner) -> None:
    server = f"http://127.0.0.1:{_closed_port()}"

    result = run(runner, "jobs", "--url", server, "--api-key", "jb_x")

    assert result.exit_code == cli.RET_CONNECT
    assert server in result.output and "jobbalancer server" in result.output


def test_submit_needs_something_to_run(runner: CliRunner) -> None:
    nothing = run(runner, "submit")
    both = run(runner, "submit", "--script", "s", "--", "echo", "hi")
    bad_env = run(runner, "submit", "--env", "NOEQUALS", "--", "true")

    assert nothing.exit_code == cli.RET_USAGE and "nothing to run" in nothing.output
    assert both.exit_code == cli.RET_USAGE and "not both" in both.output
    assert bad_env.exit_code == cli.RET_USAGE and "KEY=VALUE" in bad_env.output


def test_submit_joins_command_words_with_shell_quoting() -> None:
    one = submit.submit_spec(["echo hi | wc -c"], None, [], [], [])
    many = submit.submit_spec(["printf", "%s\n", "a b"], None, [], ["K=v=w"], ["team=x"])
    script = submit.submit_spec([], "7", ["in file", "-x"], [], [])

    assert one["command"] == "echo hi | wc -c"
    assert many["command"] == "printf '%s\n' 'a b'"
    assert many["env"] == {"K": "v=w"} and many["labels"] == {"team": "x"}
    assert script["script"] == 7 and script["params"] == ["in file", "-x"]
    assert submit.submit_spec([], "²", [], [], [])["script"] == "²"  # a name, not a crash


@pytest.mark.parametrize(
    ("job", "code"),
    [
        ({"state": "done", "exit_code": 0}, 0),
        ({"state": "failed", "exit_code": 3}, 3),
        ({"state": "failed", "exit_code": None}, 1),
        ({"state": "failed", "exit_code": None, "signal": 9}, 137),
        ({"state": "timeout", "exit_code": None}, cli.RET_JOB_TIMEOUT),
        ({"state": "killed"}, cli.RET_JOB_KILLED),
        ({"state": "lost"}, cli.RET_TEMPFAIL),
        ({"state": "occupied"}, cli.RET_TEMPFAIL),
    ],
)
def test_job_exit_codes(job: dict[str, Any], code: int) -> None:
    assert cli.job_exit_code(job) == code


# -- worker -------------------------------------------------------------------------------


def test_worker_as_root_is_refused_with_a_named_code(
    runner: CliRunner, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    result = run(runner, "worker", "--database-url", url)

    assert result.exit_code == cli.RET_ROOT
    assert "--run-as USER" in result.output and "--allow-root" in result.output


# -- real processes -----------------------------------------------------------------------


def _spawn(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / f"{name}.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBBALANCER_")}
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobbalancer", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            env=env,
            start_new_session=True,
        )
    return proc, out


def _wait_for(out: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = out.read_text(errors="replace")
        if text in content:
            return content
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{content}"
        time.sleep(0.05)
    raise AssertionError(f"{text!r} did not appear:\n{out.read_text(errors='replace')}")


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever still runs at the end is killed with its group."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.e2e
def test_server_stops_cleanly_on_sigterm_and_refuses_a_taken_port(
    tmp_path: Path, reaper: list[subprocess.Popen[bytes]]
) -> None:
    port = str(_closed_port())
    server, out = _spawn(tmp_path, "server", "server", "--port", port, "--allow-root")
    reaper.append(server)
    _wait_for(out, "serving on http://127.0.0.1:" + port, server)
    _wait_for(out, "Application startup complete", server)

    second, second_out = _spawn(tmp_path, "second", "server", "--port", port, "--allow-root")
    reaper.append(second)
    assert second.wait(timeout=30) == cli.RET_CONFIG
    assert "pick another port with --port" in second_out.read_text()

    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0


@pytest.mark.e2e
def test_server_on_a_newer_schema_exits_11_in_one_line(
    tmp_path: Path, reaper: list[subprocess.Popen[bytes]]
) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    engine = db.connect(url)
    try:
        db.upgrade(engine)
        _set_revision(engine, "ffff0000")
    finally:
        engine.dispose()
    port = str(_closed_port())
    args = ("server", "--port", port, "--allow-root", "--database-url", url)
    server, out = _spawn(tmp_path, "server", *args)
    reaper.append(server)

    assert server.wait(timeout=60) == cli.RET_SCHEMA
    text = out.read_text()
    assert "Traceback" not in text
    assert "newer than jobbalancer" in text and "upgrade jobbalancer on this machine" in text


@pytest.mark.e2e
def test_up_prints_credentials_once_runs_jobs_and_stops_on_ctrl_c(
    tmp_path: Path, reaper: list[subprocess.Popen[bytes]]
) -> None:
    port = _closed_port()
    up, out = _spawn(tmp_path, "up", "up", "--port", str(port), "--workers", "1")
    reaper.append(up)
    panel = _wait_for(out, "Try it:", up)
    key = re.search(r"API key\s+(jb_[\w-]+)", panel)
    assert key is not None, panel
    assert f'curl -H "Authorization: Bearer {key[1]}"' in panel
    if os.geteuid() == 0:  # as root, `up` gives each job a uid of its own
        assert "a uid of their own" in panel

    with Client(f"http://127.0.0.1:{port}", key[1]) as c:
        job = c.submit(command="echo from-up")
        assert c.wait(job["id"], timeout=30)["state"] == "done"
        assert c.log(job["id"])[0] == "from-up\n"

    up.send_signal(signal.SIGINT)
    assert up.wait(timeout=30) == cli.RET_OK
    assert "stopping" in out.read_text()

    again, again_out = _spawn(tmp_path, "again", "up", "--port", str(port), "--workers", "0")
    reaper.append(again)
    text = _wait_for(again_out, "jobbalancer is running", again)
    assert "printed on the first start" in text and key[1] not in text
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=30) == cli.RET_OK


# -- credentials and the data dir -----------------------------------------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


PASSWORD_URL = "postgresql://u:s3cret@127.0.0.1:1/jobbalancer"


def test_a_password_given_as_a_flag_is_warned_about_in_one_line(runner: CliRunner) -> None:
    result = run(runner, "db", "current", "--database-url", PASSWORD_URL)

    lines = [line for line in result.output.splitlines() if "warning:" in line]
    assert len(lines) == 1, result.output
    assert "/proc/PID/cmdline" in lines[0]
    assert "JOBBALANCER_DATABASE_URL" in lines[0] and "--database-url-file" in lines[0]
    assert "s3cret" not in result.output


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--database-url", "sqlite:///x.db"], {}),  # no password
        ([], {"JOBBALANCER_DATABASE_URL": PASSWORD_URL}),  # by variable: the safe way
    ],
)
def test_no_password_warning_without_a_password_on_the_command_line(
    runner: CliRunner, args: list[str], env: dict[str, str]
) -> None:
    result = run(runner, "db", "current", *args, env=env)

    assert "warning:" not in result.output


def test_database_url_file_option(runner: CliRunner, url: str, tmp_path: Path) -> None:
    name = tmp_path / "db-url"
    name.write_text(url + "\n")
    name.chmod(0o600)

    result = run(runner, "db", "upgrade", "--database-url-file", str(name))

    assert result.exit_code == 0, result.output
    assert "cli.db" in result.output


def test_database_url_file_readable_by_others_is_a_config_error(
    runner: CliRunner, url: str, tmp_path: Path
) -> None:
    name = tmp_path / "db-url"
    name.write_text(url)
    name.chmod(0o644)

    result = run(runner, "users", "list", env={"JOBBALANCER_DATABASE_URL_FILE": str(name)})

    assert result.exit_code == cli.RET_CONFIG
    assert f"chmod 600 {name}" in result.output


def test_up_puts_the_database_url_in_its_childrens_environment_not_their_argv(
    tmp_path: Path,
) -> None:
    loaded = settings.load(**{"database.url": PASSWORD_URL})
    plan = up.UpPlan.make(loaded, 2, tmp_path / "c.toml")

    argvs = [plan.server_argv(), *(plan.worker_argv(n) for n in plan.worker_names())]

    for argv in argvs:
        assert not any("s3cret" in arg or "postgresql" in arg for arg in argv), argv
        assert "--database-url" not in argv
    env = plan.child_env()
    assert env["JOBBALANCER_DATABASE_URL"] == PASSWORD_URL
    assert env["JOBBALANCER_DATABASE_URL_FILE"] == ""


def test_a_new_sqlite_data_dir_is_private(runner: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = os.umask(0o022)  # what an older version created under
    try:
        result = run(runner, "db", "upgrade", "--data-dir", str(data))
    finally:
        os.umask(old)

    assert result.exit_code == 0, result.output
    assert _mode(data) == 0o700
    files = sorted(p.name for p in data.iterdir())
    assert "jobbalancer.db" in files
    assert {p.name: _mode(p) for p in data.iterdir()} == dict.fromkeys(files, 0o600)


def test_an_old_world_readable_data_dir_is_repaired_and_said_once(
    runner: CliRunner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    assert run(runner, "db", "upgrade", "--data-dir", str(data)).exit_code == 0
    data.chmod(0o755)
    names = ["jobbalancer.db", "jobbalancer.db-wal", "jobbalancer.db-shm"]
    for name in names:
        (data / name).touch()
        (data / name).chmod(0o644)

    first = run(runner, "users", "list", "--data-dir", str(data))
    repairs = [r.getMessage() for r in caplog.records if "private" in r.getMessage()]
    caplog.clear()
    second = run(runner, "users", "list", "--data-dir", str(data))

    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert _mode(data) == 0o700
    left = [data / name for name in names if (data / name).exists()]  # SQLite removes -wal
    assert left and all(_mode(path) == 0o600 for path in left)
    assert len(repairs) == 2, repairs  # the dir in one line, its files in another
    assert "0755 -> 0700" in repairs[0] and all(f"{n} 0644 -> 0600" in repairs[1] for n in names)
    assert not [r for r in caplog.records if "private" in r.getMessage()]


def test_an_explicit_sqlite_files_directory_is_left_alone(
    runner: CliRunner, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)

    result = run(runner, "db", "upgrade", "--database-url", f"sqlite:///{shared / 'jb.db'}")

    assert result.exit_code == 0, result.output
    assert _mode(shared) == 0o755  # maybe /tmp, or a home: not ours to close
    assert _mode(shared / "jb.db") == 0o600


def test_a_sqlite_database_that_cannot_be_created_is_a_database_error(
    runner: CliRunner, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")

    result = run(runner, "db", "upgrade", "--database-url", f"sqlite:///{not_a_dir / 'x.db'}")

    assert result.exit_code == cli.RET_DATABASE, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("env", "shown", "hidden_note"),
    [({"TOKEN": "s3cret"}, "TOKEN=s3cret", False), ({"TOKEN": "****"}, "TOKEN=****", True)],
)
def test_show_prints_env_a_line_each_and_says_when_values_are_hidden(
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    shown: str,
    hidden_note: bool,
) -> None:
    # The server masks others' values; show prints what it got and says why.
    monkeypatch.setattr(Client, "job", lambda self, job_id: {"id": job_id, "env": env})
    result = run(runner, "show", "7", "--url", "http://127.0.0.1:9", "--api-key", "jb_x")
    assert result.exit_code == 0, result.output
    assert shown in result.output
    assert ("only the job's owner and admins" in result.output) == hidden_note

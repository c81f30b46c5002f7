"""Settings: defaults, the TOML file, JOBBALANCER_* variables, CLI overrides; Tunables."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from jobbalancer import db, settings
from jobbalancer.errors import ConfigError, InvalidInput


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No JOBBALANCER_* variable from outside, and a working directory without a config."""
    for key in list(os.environ):
        if key.startswith(settings.ENV_PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- defaults -----------------------------------------------------------------------------


def test_defaults_without_file_or_environment() -> None:
    s = settings.load()
    assert s.data_dir == settings.DEFAULT_DATA_DIR
    assert s.log_level == "info"
    assert s.database.url == ""
    assert s.database.pool_size == 10
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8080)
    assert s.server.balance_interval == 1.0
    assert s.worker.worker_class == "default"
    assert s.worker.max_jobs is None
    assert s.worker.allow_root is False
    assert s.worker.heartbeat_interval == 3.0


def test_database_url_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    s = settings.load()
    expected = (tmp_path / settings.DEFAULT_DATA_DIR).resolve() / "jobbalancer.db"
    assert s.database_url == f"sqlite:///{expected}"
    assert db.normalize_url(s.database_url).get_backend_name() == "sqlite"


def test_database_url_follows_a_relative_data_dir(tmp_path: Path) -> None:
    s = settings.load(data_dir="state/here")
    assert s.database_url == f"sqlite:///{(tmp_path / 'state/here').resolve()}/jobbalancer.db"


def test_an_explicit_database_url_wins_over_the_data_dir() -> None:
    url = "postgresql://jb@db.example/jobs"
    s = settings.load(**{"database.url": url, "data_dir": "/elsewhere"})
    assert s.database_url == url


# -- the file -----------------------------------------------------------------------------


def test_values_from_an_explicit_toml_file(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "custom.toml",
        'data_dir = "/var/lib/jb"\n'
        "[database]\n"
        'url = "mysql://jb@db/jobs"\n'
        "pool_size = 3\n"
        "[server]\n"
        "port = 9000\n"
        "[worker]\n"
        'name = "alpha"\n'
        "max_jobs = 12\n",
    )
    s = settings.load(path)
    assert s.data_dir == "/var/lib/jb"
    assert s.database.url == "mysql://jb@db/jobs"
    assert s.database.pool_size == 3
    assert s.server.port == 9000
    assert s.server.host == "127.0.0.1"  # untouched keys keep their defaults
    assert (s.worker.name, s.worker.max_jobs) == ("alpha", 12)


def test_jobbalancer_toml_in_the_working_directory_is_read(tmp_path: Path) -> None:
    write_config(tmp_path / "jobbalancer.toml", "[server]\nport = 7070\n")
    assert settings.load().server.port == 7070


def test_jobbalancer_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path / "jobbalancer.toml", "[server]\nport = 7070\n")
    other = write_config(tmp_path / "other.toml", "[server]\nport = 6060\n")
    monkeypatch.setenv("JOBBALANCER_CONFIG", str(other))
    assert settings.load().server.port == 6060


def test_an_explicit_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        settings.load(tmp_path / "missing.toml")


def test_jobbalancer_config_naming_a_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBBALANCER_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        settings.load()


def test_a_file_that_is_not_toml_is_an_error(tmp_path: Path) -> None:
    path = write_config(tmp_path / "broken.toml", "[server\nport = \n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        settings.load(path)


# -- the environment ----------------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path / "c.toml", '[server]\nport = 9000\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("JOBBALANCER_SERVER_PORT", "9100")
    s = settings.load(path)
    assert s.server.port == 9100
    assert s.server.host == "0.0.0.0"  # noqa: S104 - a value read back, not a bind


@pytest.mark.parametrize(
    ("variable", "value", "key", "expected"),
    [
        ("JOBBALANCER_DATABASE_URL", "sqlite:////tmp/x.db", "database.url", "sqlite:////tmp/x.db"),
        ("JOBBALANCER_DATABASE_POOL_SIZE", "4", "database.pool_size", 4),
        ("JOBBALANCER_SERVER_BALANCE_INTERVAL", "0.5", "server.balance_interval", 0.5),
        ("JOBBALANCER_SERVER_METRICS_PUBLIC", "true", "server.metrics_public", True),
        ("JOBBALANCER_WORKER_WORKER_CLASS", "gpu", "worker.worker_class", "gpu"),
        ("JOBBALANCER_WORKER_MAX_JOBS", "8", "worker.max_jobs", 8),
        ("JOBBALANCER_WORKER_ALLOW_ROOT", "1", "worker.allow_root", True),
        ("JOBBALANCER_DATA_DIR", "/srv/jb", "data_dir", "/srv/jb"),
        ("JOBBALANCER_LOG_LEVEL", "debug", "log_level", "debug"),
    ],
)
def test_each_section_and_key_is_reachable_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, key: str, expected: object
) -> None:
    monkeypatch.setenv(variable, value)
    assert functools.reduce(getattr, key.split("."), settings.load()) == expected


def test_unrelated_jobbalancer_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # e.g. the test suite's own JOBBALANCER_TEST_POSTGRES_URL
    monkeypatch.setenv("JOBBALANCER_TEST_POSTGRES_URL", "postgresql://x@y/z")
    monkeypatch.setenv("JOBBALANCER_SOMETHING", "1")
    assert settings.load() == settings.Settings()


def test_an_unknown_key_in_a_known_section_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBBALANCER_SERVER_PROT", "80")
    with pytest.raises(ConfigError) as info:
        settings.load()
    assert info.value.field == "server.prot"
    assert "server.prot" in info.value.message


def test_a_bad_environment_value_is_an_error_naming_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBBALANCER_WORKER_MAX_JOBS", "lots")
    with pytest.raises(ConfigError) as info:
        settings.load()
    assert info.value.field == "worker.max_jobs"
    assert "worker.max_jobs" in str(info.value)


# -- CLI-style overrides ------------------------------------------------------------------


def test_dotted_overrides_win_over_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "c.toml", '[worker]\nname = "from-file"\nmax_jobs = 2\n')
    monkeypatch.setenv("JOBBALANCER_WORKER_NAME", "from-env")
    s = settings.load(path, **{"worker.name": "from-flag", "server.port": 8181})
    assert s.worker.name == "from-flag"
    assert s.worker.max_jobs == 2
    assert s.server.port == 8181


def test_none_overrides_leave_file_and_environment_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "c.toml", "[server]\nport = 9000\n")
    monkeypatch.setenv("JOBBALANCER_WORKER_NAME", "from-env")
    s = settings.load(path, **{"server.port": None, "worker.name": None, "log_level": None})
    assert (s.server.port, s.worker.name, s.log_level) == (9000, "from-env", "info")


# -- bad values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nport = -1\n", "server.port"),
        ('[server]\nport = "http"\n', "server.port"),
        ("[server]\nbalance_interval = 0\n", "server.balance_interval"),
        ("[database]\npool_size = 0\n", "database.pool_size"),
        ("[worker]\nmax_jobs = 0\n", "worker.max_jobs"),
        ("[worker]\nflush_bytes = 10\n", "worker.flush_bytes"),
        ('[worker]\nallow_root = "maybe"\n', "worker.allow_root"),
        ('[worker]\ncolour = "blue"\n', "worker.colour"),
        ("[nonsense]\nx = 1\n", "nonsense"),
    ],
)
def test_a_bad_value_in_the_file_is_a_config_error_naming_the_key(
    tmp_path: Path, toml: str, key: str
) -> None:
    path = write_config(tmp_path / "bad.toml", toml)
    with pytest.raises(ConfigError) as info:
        settings.load(path)
    assert info.value.field == key
    assert key in info.value.message


def test_a_bad_override_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        settings.load(**{"server.port": 99999})
    assert info.value.field == "server.port"


# -- Tunables -----------------------------------------------------------------------------


def test_tunables_defaults() -> None:
    t = settings.Tunables()
    assert t.algorithm == "round_robin"
    assert t.worker_timeout == 15.0
    assert t.max_log_bytes == 10 * 1024 * 1024
    assert t.retention_days == 30


def test_tunables_algorithm_is_normalised() -> None:
    assert settings.Tunables(algorithm="  Least_Loaded ").algorithm == "least_loaded"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "values",
    [
        {"algorithm": "fastest"},
        {"worker_timeout": 1},
        {"worker_timeout": 3601},
        {"kill_grace": -1},
        {"max_log_bytes": 100},
        {"retention_days": -1},
        {"colour": "blue"},
    ],
)
def test_tunables_reject_bad_values(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        settings.Tunables.model_validate(values)


def test_tunables_validate_on_assignment() -> None:
    t = settings.Tunables()
    with pytest.raises(ValidationError):
        t.algorithm = "fastest"  # type: ignore[assignment]


def test_stored_tunables_default_until_saved(sqlite_engine: sa.Engine) -> None:
    with db.read(sqlite_engine) as conn:
        assert settings.load_tunables(conn) == settings.Tunables()


def test_saved_tunables_are_read_back_by_a_new_connection(sqlite_engine: sa.Engine) -> None:
    with db.write(sqlite_engine) as conn:
        new = settings.save_tunables(conn, {"algorithm": "Fill_First", "worker_timeout": 30})
    assert (new.algorithm, new.worker_timeout) == ("fill_first", 30.0)
    with db.write(sqlite_engine) as conn:  # a second save updates rather than inserts
        settings.save_tunables(conn, {"worker_timeout": 20})
    with db.read(sqlite_engine) as conn:
        stored = settings.load_tunables(conn)
    assert (stored.algorithm, stored.worker_timeout) == ("fill_first", 20.0)
    assert stored.retention_days == 30


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"algorithm": "fastest"}, "algorithm"), ({"colour": "blue"}, "colour")],
)
def test_saving_a_bad_tunable_names_it_and_stores_nothing(
    sqlite_engine: sa.Engine, changes: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as info, db.write(sqlite_engine) as conn:
        settings.save_tunables(conn, {"worker_timeout": 60, **changes})
    assert info.value.field == field
    with db.read(sqlite_engine) as conn:
        assert settings.load_tunables(conn) == settings.Tunables()


def test_a_stored_value_that_no_longer_validates_falls_back_to_its_default(
    sqlite_engine: sa.Engine,
) -> None:
    # Given values stored by some older version, one of them no longer valid
    with db.write(sqlite_engine) as conn:
        settings.put_value(conn, "algorithm", "weighted")
        settings.put_value(conn, "worker_timeout", 40)
    # When they are loaded, then the bad one is its default and the good one is kept
    with db.read(sqlite_engine) as conn:
        t = settings.load_tunables(conn)
    assert (t.algorithm, t.worker_timeout) == ("round_robin", 40.0)


# -- credentials: a URL file, and config files others can read ------------------------------

PG_URL = "postgresql://jb:s3cret@db-host/jobbalancer"


def url_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_database_url_from_a_private_file(tmp_path: Path) -> None:
    name = url_file(tmp_path / "db-url", PG_URL + "\n")

    s = settings.load(**{"database.url_file": str(name)})

    assert s.database.url == PG_URL and s.database_url == PG_URL


def test_database_url_file_from_the_environment_and_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = url_file(tmp_path / "db-url", PG_URL)
    config = write_config(tmp_path / "c.toml", f'[database]\nurl_file = "{name}"\n')
    assert settings.load(config).database_url == PG_URL

    monkeypatch.setenv("JOBBALANCER_DATABASE_URL_FILE", str(name))
    assert settings.load().database_url == PG_URL


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_url_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    name = url_file(tmp_path / "db-url", PG_URL, mode)

    with pytest.raises(ConfigError, match=rf"chmod 600 {name}") as caught:
        settings.load(**{"database.url_file": str(name)})

    assert caught.value.field == "database.url_file"
    assert f"{mode:04o}" in str(caught.value) and "s3cret" not in str(caught.value)


def test_a_missing_or_empty_url_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the database URL file"):
        settings.load(**{"database.url_file": str(tmp_path / "nope")})
    empty = url_file(tmp_path / "empty", "\n")
    with pytest.raises(ConfigError, match="is empty"):
        settings.load(**{"database.url_file": str(empty)})


def test_a_url_file_another_user_owns_is_refused(tmp_path: Path) -> None:
    """Mode 0600 is not enough: whoever owns the file can rewrite it."""
    name = url_file(tmp_path / "db-url", PG_URL)
    os.chown(name, 65534, 65534)  # nobody (the tests run as root)

    with pytest.raises(ConfigError, match="belongs to uid 65534") as caught:
        settings.load(**{"database.url_file": str(name)})

    assert caught.value.field == "database.url_file" and "s3cret" not in str(caught.value)


def test_a_url_file_of_our_own_uid_or_roots_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = url_file(tmp_path / "db-url", PG_URL)
    os.chown(name, 4321, 4321)
    monkeypatch.setattr(os, "geteuid", lambda: 4321)
    assert settings.load(**{"database.url_file": str(name)}).database_url == PG_URL

    os.chown(name, 0, 0)  # root's file, read by an unprivileged server
    assert settings.load(**{"database.url_file": str(name)}).database_url == PG_URL


def test_a_url_file_that_is_a_symlink_or_not_a_file_is_refused(tmp_path: Path) -> None:
    target = url_file(tmp_path / "db-url", PG_URL)
    link = tmp_path / "link"
    link.symlink_to(target)

    with pytest.raises(ConfigError, match="symlink is not followed") as caught:
        settings.load(**{"database.url_file": str(link)})
    assert caught.value.field == "database.url_file"

    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        settings.load(**{"database.url_file": str(folder)})


def test_a_url_and_a_url_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = url_file(tmp_path / "db-url", PG_URL)
    monkeypatch.setenv("JOBBALANCER_DATABASE_URL", "sqlite:///x.db")

    with pytest.raises(ConfigError, match="both set"):
        settings.load(**{"database.url_file": str(name)})


def test_an_empty_url_file_setting_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """`up` passes JOBBALANCER_DATABASE_URL_FILE="" to its children next to the URL."""
    monkeypatch.setenv("JOBBALANCER_DATABASE_URL", PG_URL)
    monkeypatch.setenv("JOBBALANCER_DATABASE_URL_FILE", "")

    assert settings.load().database_url == PG_URL


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (PG_URL, True),
        ("mysql://root@127.0.0.1/jb", False),
        ("sqlite:////var/lib/jb.db", False),
        ("postgresql://u:@h/db", False),
        ("not a url://u:pw@h", True),
    ],
)
def test_has_password(url: str, expected: bool) -> None:
    assert settings.has_password(url) is expected


def test_a_config_file_with_a_password_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path / "c.toml", f'[database]\nurl = "{PG_URL}"\n')
    config.chmod(0o644)

    settings.load(config)

    (record,) = [r for r in caplog.records if r.name == "jobbalancer.settings"]
    assert record.levelname == "WARNING"
    assert f"chmod 600 {config}" in record.getMessage() and "0644" in record.getMessage()
    assert "s3cret" not in record.getMessage()


@pytest.mark.parametrize(
    ("text", "mode", "env"),
    [
        (f'[database]\nurl = "{PG_URL}"\n', 0o600, {}),  # private: fine
        ('[database]\nurl = "mysql://root@h/jb"\n', 0o644, {}),  # no password in it
        (f'[database]\nurl = "{PG_URL}"\n', 0o644, {"JOBBALANCER_DATABASE_URL": "sqlite://"}),
    ],
)
def test_no_config_file_warning_when_there_is_nothing_to_protect(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    mode: int,
    env: dict[str, str],
) -> None:
    """The last: `up`'s children get the URL by variable; `up` itself warned already."""
    config = write_config(tmp_path / "c.toml", text)
    config.chmod(mode)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    settings.load(config)

    assert not [r for r in caplog.records if r.name == "jobbalancer.settings"]


def test_private_data_dir_only_for_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    assert settings.load(data_dir="d").private_data_dir == (tmp_path / "d").resolve()
    assert settings.load(**{"database.url": "sqlite:////tmp/x.db"}).private_data_dir is None
    assert settings.load(**{"database.url": PG_URL}).private_data_dir is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("JOBBALANCER_WORKER_DYNAMIC_UIDS", "70000"),
        ("JOBBALANCER_WORKER_DYNAMIC_UIDS", "100-200"),
        ("JOBBALANCER_WORKER_DYNAMIC_UIDS", "80000-70000"),
        ("JOBBALANCER_WORKER_JOB_PATH", "bin:/usr/bin"),
        ("JOBBALANCER_WORKER_JOB_PATH", ""),
    ],
)
def test_bad_dynamic_uids_or_job_path_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        settings.load()
    assert info.value.field == key.removeprefix("JOBBALANCER_").lower().replace("_", ".", 1)

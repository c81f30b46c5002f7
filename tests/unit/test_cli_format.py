"""What `jobbalancer jobs` and `jobbalancer show` print, without a server: the job table at
terminal widths, and one job in full."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from jobbalancer import cli
from jobbalancer.cli import formatting
from jobbalancer.client import Client

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
FFMPEG = "ffmpeg -i in.mkv -c:v libx264 out.mp4"


def job(**fields: Any) -> dict[str, Any]:
    """A job as the API sends it (the shape of api.models.Job)."""
    base: dict[str, Any] = {
        "id": 1,
        "state": "running",
        "command": FFMPEG,
        "script": None,
        "params": [],
        "interpreter": None,
        "watchdog": None,
        "worker_class": "default",
        "need_realtime": False,
        "priority": 0,
        "retries": 0,
        "attempt": 1,
        "retry_of": None,
        "restarted_from": None,
        "env": {},
        "labels": {},
        "user": "admin",
        "worker": {"id": 3, "name": "render-farm-01"},
        "pid": 4242,
        "exit_code": None,
        "signal": None,
        "error": None,
        "kill_requested": False,
        "output_bytes": 0,
        "created_at": (NOW - timedelta(seconds=90)).isoformat(),
        "assigned_at": (NOW - timedelta(seconds=89)).isoformat(),
        "started_at": (NOW - timedelta(seconds=88)).isoformat(),
        "finished_at": None,
    }
    return base | fields


def rendered(jobs: list[dict[str, Any]], width: int) -> list[str]:
    console = Console(width=width, record=True, highlight=False)
    console.print(formatting.job_table(jobs, width, now=NOW))
    return console.export_text().splitlines()


def header(lines: list[str]) -> list[str]:
    return next(line for line in lines if "id" in line and "state" in line).split()


# -- jobs ---------------------------------------------------------------------------------


def test_at_80_columns_the_command_gets_room() -> None:
    lines = rendered([job(), job(id=2, state="done", exit_code=0)], 80)

    assert any(FFMPEG[:24] in line for line in lines), "\n".join(lines)
    assert all(len(line) <= 80 for line in lines)


def test_at_80_columns_id_state_what_created_exit_always_show() -> None:
    long = job(command="tar czf /tmp/backup.tar.gz /var/lib/" + "x" * 200, user="someone-long")

    shown = header(rendered([long], 80))

    assert {"id", "state", "what", "created", "exit"} <= set(shown)


def test_optional_columns_make_way_in_order_class_user_took_worker() -> None:
    jobs = [job(worker_class="gpu-large", user="a-long-user-name", command="x" * 300)]

    by_width = {w: set(header(rendered(jobs, w))) for w in (200, 110, 100, 90, 80, 60)}

    optional = ["class", "user", "took", "worker"]
    for shown in by_width.values():
        gone = [c for c in optional if c not in shown]
        assert gone == optional[: len(gone)], shown  # always a prefix of the order
    assert by_width[200] >= set(formatting.JOB_COLUMNS)
    assert not {"class", "user", "took", "worker"} & by_width[60]


def test_at_200_columns_every_column_shows_and_nothing_is_cut() -> None:
    lines = rendered([job(worker_class="gpu")], 200)

    assert header(lines) == list(formatting.JOB_COLUMNS)
    assert any(FFMPEG in line for line in lines)
    assert not any("…" in line for line in lines)


def test_a_long_command_is_cut_with_an_ellipsis_never_wrapped() -> None:
    command = "python3 train.py " + " ".join(f"--opt{i}=value{i}" for i in range(40))

    lines = rendered([job(command=command), job(id=2)], 80)
    rows = [line for line in lines if line.strip() and line.split()[0] in {"1", "2"}]

    assert len(rows) == 2  # one line per job
    assert "…" in rows[0] and "python3 train.py" in rows[0]
    assert max(len(line.rstrip("\n")) for line in lines) == 80  # uses the room, no more


def test_a_short_command_column_is_only_as_wide_as_its_widest_command() -> None:
    lines = rendered([job(command="true", worker={"id": 1, "name": "w1"})], 80)

    # "what" needs only 4 characters here, so nothing has to make way.
    assert header(lines) == list(formatting.JOB_COLUMNS)


def test_created_shows_the_time_for_today_and_the_date_otherwise() -> None:
    today = NOW.astimezone().replace(hour=9, minute=5, second=7)
    older = today - timedelta(days=3)

    assert formatting.short_when(today.isoformat(), today.date()) == "09:05:07"
    assert formatting.short_when(older.isoformat(), today.date()) == older.strftime("%m-%d 09:05")
    assert formatting.short_when(None, today.date()) == ""


def test_a_script_job_shows_its_script_and_params_as_what() -> None:
    scripted = job(command=None, script={"id": 2, "name": "encode"}, params=["in file.mkv"])

    assert any("encode 'in file.mkv'" in line for line in rendered([scripted], 200))


# -- show ---------------------------------------------------------------------------------


def test_a_waiting_job_shows_no_empty_fields_and_no_raw_json() -> None:
    waiting = job(state="waiting", worker=None, pid=None, assigned_at=None, started_at=None)

    rows = dict(formatting.show_rows(waiting))

    assert not {"exit_code", "pid", "finished_at", "worker", "signal", "error"} & set(rows)
    assert not {"script", "params", "env", "labels", "retry_of"} & set(rows)
    assert all(text.strip() for text in rows.values())
    assert not [t for t in rows.values() if t in ("[]", "{}") or "None" in t]


def test_show_rows_shapes_each_kind_of_value() -> None:
    scripted = job(
        command=None,
        script={"id": 2, "name": "encode"},
        params=["in file.mkv", "-crf", "23"],
        env={"TOKEN": "s3cret", "MODE": "fast"},
        labels={"team": "video", "id": "x"},
        need_realtime=True,
    )

    rows = dict(formatting.show_rows(scripted))

    assert rows["params"] == "'in file.mkv' -crf 23"
    assert rows["script"] == "encode (id 2)"
    assert rows["worker"] == "render-farm-01 (id 3)"
    assert rows["env"] == "TOKEN=s3cret\nMODE=fast"
    assert rows["labels"] == "team=video\nid=x"
    assert rows["need_realtime"] == "yes" and rows["kill_requested"] == "no"
    assert rows["priority"] == "0" and rows["attempt"] == "1"  # zero is a value
    local = datetime.fromisoformat(scripted["created_at"]).astimezone()
    assert rows["created_at"] == local.strftime("%Y-%m-%d %H:%M:%S")


def test_show_rows_says_when_env_values_are_hidden() -> None:
    rows = dict(formatting.show_rows(job(env={"TOKEN": "****"})))

    assert rows["env"].splitlines() == ["TOKEN=****", formatting.HIDDEN_NOTE]


@pytest.mark.parametrize(
    ("args", "shown", "not_shown"),
    [
        ([], ["encode (id 2)", "team=video"], ["[]", "{}", "exit_code", "None"]),
        (["--json"], ['"created_at": "2026-12-04T11:58:30+00:00"', '"exit_code": null'], []),
    ],
)
def test_the_show_command_prints_rows_and_json_keeps_everything(
    monkeypatch: pytest.MonkeyPatch, args: list[str], shown: list[str], not_shown: list[str]
) -> None:
    one = job(
        state="waiting",
        command=None,
        script={"id": 2, "name": "encode"},
        labels={"team": "video"},
        worker=None,
        pid=None,
        started_at=None,
    )
    monkeypatch.setattr(Client, "job", lambda self, job_id: one)

    result = CliRunner().invoke(
        cli.app, ["show", "1", "--url", "http://127.0.0.1:9", "--api-key", "jb_x", *args]
    )

    assert result.exit_code == 0, result.output
    assert all(s in result.output for s in shown), result.output
    assert not [s for s in not_shown if s in result.output], result.output

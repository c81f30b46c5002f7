"""/metrics: the Prometheus text parses, shows workers' capacity, queues, and counters and
histograms of jobs that ended, the same on every server and never counting a job twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from apihelpers import Api, submit
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from jobbalancer import db, jobs, tally
from jobbalancer.api.routes import metrics
from jobbalancer.app import create_app
from jobbalancer.db import schema
from jobbalancer.settings import ServerSettings, Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    """Every sample of a scrape, by name and labels (the text must parse)."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def second(api: Api) -> Iterator[TestClient]:
    """A second server on the same database, counting jobs as soon as they end."""
    app = create_app(Settings(server=ServerSettings(metrics_settle=0)), api.engine, supervise=False)
    with TestClient(app, headers={"Authorization": f"Bearer {api.admin_key}"}) as client:
        yield client


def test_ended_jobs_are_counted_once_and_every_server_agrees(api: Api, second: TestClient) -> None:
    api.worker("node-1", max_jobs=1)
    scrape(api.admin)  # the first scrape starts the count
    done = submit(api.admin, command="a")["id"]
    api.finish(done)
    failed = submit(api.admin, command="b")["id"]
    api.balance()
    api.finish(failed, jobs.State.FAILED, exit_code=1)
    submit(api.admin, command="c")  # assigned, not started
    submit(api.admin, command="d")  # waits: the only slot is taken

    # The first server waits 15 s (the default) before it counts a job's end.
    first = scrape(api.admin)
    labels = {"class": "default", "state": "done"}
    assert value(first, "jobbalancer_jobs_ended_total", **labels) == 0
    assert value(first, "jobbalancer_job_run_seconds_count", **{"class": "default"}) == 0

    now = scrape(second)
    ended = {
        state: value(now, "jobbalancer_jobs_ended_total", **{"class": "default", "state": state})
        for state in ("done", "failed", "killed", "lost", "timeout", "occupied", "skipped")
    }
    assert ended == {"done": 1, "failed": 1, "killed": 0, "lost": 0, "timeout": 0,
                     "occupied": 0, "skipped": 0}  # fmt: skip
    for histogram in ("jobbalancer_job_run_seconds", "jobbalancer_job_wait_seconds"):
        assert value(now, f"{histogram}_count", **{"class": "default"}) == 2
        assert value(now, f"{histogram}_bucket", **{"class": "default", "le": "+Inf"}) == 2
        assert value(now, f"{histogram}_sum", **{"class": "default"}) >= 0
    # Scraped again, on either server: nothing counted twice, the same figures.
    assert tallies(scrape(second)) == tallies(now) == tallies(scrape(api.admin))


def tallies(samples: Samples) -> Samples:
    return {
        k: v
        for k, v in samples.items()
        if k[0].startswith(("jobbalancer_jobs_ended", "jobbalancer_job_"))
        and not k[0].endswith("_created")
    }


def test_workers_capacity_and_queues(api: Api) -> None:
    api.worker("node-1", max_jobs=1)
    api.worker("node-2", worker_class="gpu", max_jobs=2)
    submit(api.admin, command="a")
    oldest = submit(api.admin, command="b")["id"]
    submit(api.admin, command="c")
    with db.write(api.engine) as conn:  # b was submitted ten minutes ago
        conn.execute(
            sa.update(schema.jobs)
            .where(schema.jobs.c.id == oldest)
            .values(created_at=db.now(conn) - timedelta(minutes=10))
        )
    s = scrape(api.admin)
    gpu = {"class": "gpu"}
    assert value(s, "jobbalancer_worker_info", worker="node-2", state="online", **gpu) == 1
    assert value(s, "jobbalancer_worker_slots", worker="node-1") == 1
    assert value(s, "jobbalancer_worker_slots", worker="node-2") == 2
    assert value(s, "jobbalancer_worker_active_jobs", worker="node-1") == 1
    assert value(s, "jobbalancer_worker_load", worker="node-1") == 0.5
    assert value(s, "jobbalancer_worker_cpus", worker="node-1") == 4
    assert value(s, "jobbalancer_worker_memory_bytes", worker="node-1") == 8 << 30
    assert value(s, "jobbalancer_worker_memory_available_bytes", worker="node-1") == 4 << 30
    assert value(s, "jobbalancer_queue_waiting", **{"class": "default"}) == 2
    assert value(s, "jobbalancer_queue_waiting", **{"class": "gpu"}) == 0
    assert 600 <= value(s, "jobbalancer_queue_oldest_seconds", **{"class": "default"}) < 700
    assert value(s, "jobbalancer_queue_oldest_seconds", **{"class": "gpu"}) == 0
    # What was there before stays as it was.
    assert value(s, "jobbalancer_slots", kind="total") == 3
    assert value(s, "jobbalancer_jobs", state="waiting") == 2
    assert value(s, "jobbalancer_workers", state="online") == 2


def test_metrics_need_a_key_unless_public(api: Api) -> None:
    assert api.client().get("/metrics").status_code == 401
    assert api.client("not-a-key").get("/metrics").status_code == 401
    _, key = api.user("vee", "viewer")
    scrape(api.client(key))
    api.admin.patch("/api/v1/settings", json={"metrics_public": True})
    scrape(api.client())


def test_a_scrape_answers_when_the_tallies_cannot_be_written(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The fold is bookkeeping: a database that refuses the write now (locked, read-only)
    leaves it to a later scrape, and this one answers with the figures as they are."""
    submit(api.admin, command="a")
    scrape(api.admin)  # the first fold: the count starts

    def refuse(conn: sa.Connection, settle: float = 0) -> int:
        raise sa.exc.OperationalError("UPDATE metric_cursors", {}, Exception("database is locked"))

    monkeypatch.setattr(tally, "fold", refuse)
    s = scrape(api.admin)
    assert value(s, "jobbalancer_jobs", state="waiting") == 1
    assert value(s, "jobbalancer_jobs_ended_total", **{"class": "default", "state": "done"}) == 0
    assert "tallies were not brought up to date" in caplog.text


def test_a_scrape_waits_for_sqlites_write_lock_a_bounded_time(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fold's write transaction gives up on SQLite's write lock after its wait (the
    scrape answers anyway, above); on PostgreSQL and MariaDB the wait is not needed (a
    fold in progress elsewhere is skipped, tests/backends/test_tally.py)."""
    if api.engine.dialect.name != "sqlite":
        with db.write(api.engine, wait=0.05) as conn:  # an option SQLite alone reads
            assert db.now(conn) is not None
        return
    monkeypatch.setattr(metrics, "FOLD_WAIT", 0.05)
    url = api.engine.url.render_as_string(hide_password=False)
    other = db.connect(url)
    try:
        with db.write(api.engine) as conn:
            conn.execute(sa.update(schema.metric_cursors).values(job_id=0))  # holds the lock
            with pytest.raises(sa.exc.OperationalError, match="locked"):
                with db.write(other, wait=0.05):
                    pass
            s = scrape(api.admin)  # a scrape now: the fold gives up, the figures answer
            assert value(s, "jobbalancer_jobs", state="waiting") == 0
    finally:
        other.dispose()


def test_a_released_delayed_job_waits_in_the_queue_from_its_not_before(api: Api) -> None:
    """Submitted an hour ago to start 30 s ago: it has waited 30 s, not an hour; the
    histogram of its wait, once it starts, says the same."""
    later = submit(api.admin, command="a", delay=3600)["id"]
    with db.write(api.engine) as conn:  # as if submitted an hour ago, released by the leader
        now = db.now(conn)
        conn.execute(
            sa.update(schema.jobs)
            .where(schema.jobs.c.id == later)
            .values(
                state=jobs.State.WAITING.value,
                created_at=now - timedelta(hours=1),
                not_before=now - timedelta(seconds=30),
            )
        )
    s = scrape(api.admin)
    assert value(s, "jobbalancer_queue_waiting", **{"class": "default"}) == 1
    assert 30 <= value(s, "jobbalancer_queue_oldest_seconds", **{"class": "default"}) < 600
    # A job submitted 100 s ago with no delay has waited longer: it is the oldest.
    plain = submit(api.admin, command="b")["id"]
    with db.write(api.engine) as conn:
        conn.execute(
            sa.update(schema.jobs)
            .where(schema.jobs.c.id == plain)
            .values(created_at=db.now(conn) - timedelta(seconds=100))
        )
    s = scrape(api.admin)
    assert 100 <= value(s, "jobbalancer_queue_oldest_seconds", **{"class": "default"}) < 600


def test_workers_requested_resources_and_what_waiting_jobs_wait_for(api: Api) -> None:
    from jobbalancer import balancer
    from jobbalancer import registry as workers

    gib = 1 << 30
    with db.write(api.engine) as conn:
        workers.register(
            conn, name="render-1", host="test-host", worker_class="default", max_jobs=4,
            pid=4242, version="test", stats=workers.Stats(),
            capacity=workers.Capacity(cpus=8, memory=16 * gib, gpus=1, labels={"ssd": ""}),
        )  # fmt: skip
    # Two jobs placed on it, one too big for what is left, one wanting a label none has
    submit(api.admin, command="a", cpus=2, memory="4G", gpus=1)
    submit(api.admin, command="b", cpus=1.5, memory="8G")
    submit(api.admin, command="c", memory="8G")
    submit(api.admin, command="d", constraints={"ffmpeg": "6"})
    with db.write(api.engine) as conn:
        balancer.assign_waiting(conn)
    s = scrape(api.admin)
    render = {"worker": "render-1"}
    assert value(s, "jobbalancer_worker_capacity_cpus", **render) == 8
    assert value(s, "jobbalancer_worker_capacity_memory_bytes", **render) == 16 * gib
    assert value(s, "jobbalancer_worker_capacity_gpus", **render) == 1
    assert value(s, "jobbalancer_worker_requested_cpus", **render) == 3.5
    assert value(s, "jobbalancer_worker_requested_memory_bytes", **render) == 12 * gib
    assert value(s, "jobbalancer_worker_requested_gpus", **render) == 1
    assert value(s, "jobbalancer_worker_active_jobs", **render) == 2
    default = {"class": "default"}
    assert value(s, "jobbalancer_queue_waiting_for", waits_for="memory", **default) == 1
    assert value(s, "jobbalancer_queue_waiting_for", waits_for="label", **default) == 1
    waiting_for = [k for k in s if k[0] == "jobbalancer_queue_waiting_for"]
    assert len(waiting_for) == 2

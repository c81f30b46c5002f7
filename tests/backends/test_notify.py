"""Notifications on every backend: outbox rows written with the job's move (and only
then), and their delivery: claimed with a lease, retried with backoff, given up after a
day. The clock is injected, never slept on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from jobbalancer import db, jobs, notify, outbox
from jobbalancer.db import schema
from jobbalancer.settings import NotifySettings, Settings
from tests.receivers import Webhook, smtp_server, webhook

N = schema.notifications


@pytest.fixture
def hook() -> Iterator[Webhook]:
    with webhook(secret="s3cret") as h:
        yield h


def target(engine: sa.Engine, name: str, url: str, secret: str | None = "s3cret") -> int:  # noqa: S107
    with db.write(engine) as conn:
        return notify.create_target(conn, name, "webhook", url=url, secret=secret).id


def rule(engine: sa.Engine, on: list[str], target_id: int, class_id: int | None = None) -> None:
    with db.write(engine) as conn:
        notify.create_rule(conn, on, target_id, class_id)


def rows(engine: sa.Engine) -> list[sa.Row[object]]:
    with db.read(engine) as conn:
        return list(conn.execute(sa.select(N).order_by(N.c.id)))


def run_and_end(
    engine: sa.Engine, job_id: int, worker: int, state: jobs.State = jobs.State.FAILED
) -> None:
    with db.write(engine) as conn:
        assert jobs.assign(conn, job_id, worker)
        token = jobs.get(conn, job_id).token
        assert token is not None and jobs.claim(conn, job_id, worker, token)
    with db.write(engine) as conn:
        assert jobs.finish(conn, job_id, token, state, exit_code=1)


def dispatcher(engine: sa.Engine, **kwargs: object) -> notify.Dispatcher:
    config = Settings(notify=NotifySettings(base_url="http://jobs.test"))
    return notify.Dispatcher(engine, config, "test-server", **kwargs)  # type: ignore[arg-type]


def later(seconds: float) -> Callable[[sa.Connection], datetime]:
    return lambda conn: db.now(conn) + timedelta(seconds=seconds)


def test_a_job_end_writes_its_notifications_in_its_own_transaction(
    engine: sa.Engine,
    job_factory: Callable[..., int],
    worker_factory: Callable[..., int],
    hook: Webhook,
) -> None:
    hook_id = target(engine, "ops-hook", hook.url)
    other = target(engine, "other", hook.url)
    rule(engine, ["failed", "timeout"], hook_id)  # global
    rule(engine, ["failed"], other, class_id=1)  # the default class
    own = job_factory(notify=({"on": ["failed"], "target": hook_id},))  # same target: once
    quiet = job_factory()
    worker = worker_factory("w1", max_jobs=5)

    run_and_end(engine, own, worker)
    got = rows(engine)
    assert sorted((r.job_id, r.target_id, r.event, r.state) for r in got) == [
        (own, hook_id, "failed", "pending"),
        (own, other, "failed", "pending"),
    ]
    assert len({r.key for r in got}) == 2

    # A job's end that is rolled back leaves no notification behind.
    with db.write(engine) as conn:
        assert jobs.assign(conn, quiet, worker)
        token = jobs.get(conn, quiet).token
        assert token is not None and jobs.claim(conn, quiet, worker, token)
    with pytest.raises(RuntimeError), db.write(engine) as conn:
        assert jobs.finish(conn, quiet, token, jobs.State.FAILED, exit_code=2)
        raise RuntimeError("the transaction fails after the move")
    assert len(rows(engine)) == 2
    # States no rule names notify nobody.
    with db.write(engine) as conn:
        assert jobs.finish(conn, quiet, token, jobs.State.DONE, exit_code=0)
    assert len(rows(engine)) == 2


def test_kill_lose_occupy_and_start_notify_too(
    engine: sa.Engine,
    job_factory: Callable[..., int],
    worker_factory: Callable[..., int],
    hook: Webhook,
) -> None:
    hook_id = target(engine, "ops-hook", hook.url)
    rule(engine, ["killed", "lost", "occupied", "started"], hook_id)
    killed, lost, occupied = job_factory(), job_factory(), job_factory()
    worker = worker_factory("w1", max_jobs=5)
    with db.write(engine) as conn:
        jobs.request_kill(conn, killed)
        assert jobs.occupy(conn, occupied)
        assert jobs.assign(conn, lost, worker)
        token = jobs.get(conn, lost).token
        assert token is not None and jobs.claim(conn, lost, worker, token)
        assert jobs.lose_worker_jobs(conn, worker, "gone") == [lost]
    events = sorted((r.job_id, r.event) for r in rows(engine))
    assert events == sorted(
        [(killed, "killed"), (occupied, "occupied"), (lost, "started"), (lost, "lost")]
    )


def test_no_target_no_notification_and_no_cost(
    engine: sa.Engine, job_factory: Callable[..., int], worker_factory: Callable[..., int]
) -> None:
    job = job_factory()
    run_and_end(engine, job, worker_factory("w1"))
    assert rows(engine) == []
    with db.read(engine) as conn:
        assert outbox.rules(conn).targets == frozenset()


def test_delivery_is_signed_and_carries_the_job_but_never_its_env(
    engine: sa.Engine,
    job_factory: Callable[..., int],
    worker_factory: Callable[..., int],
    hook: Webhook,
) -> None:
    hook_id = target(engine, "ops-hook", hook.url)
    job = job_factory(
        env={"TOKEN": "very-secret-value"},
        notify=({"on": ["failed"], "target": hook_id},),
    )
    run_and_end(engine, job, worker_factory("w1"))
    d = dispatcher(engine)
    assert d.dispatch() == 1 and d.wait_idle(10)
    [got] = hook.wait(1)
    assert got.signature_ok
    assert got.body["job_id"] == job and got.body["state"] == "failed"
    assert got.body["exit_code"] == 1 and got.body["command"] == "echo hello"
    assert got.body["url"] == f"http://jobs.test/jobs/{job}"
    assert "very-secret-value" not in str(got.body) and "env" not in got.body
    [row] = rows(engine)
    assert (
        row.state == "delivered" and row.attempts == 1 and row.key == got.headers["idempotency-key"]
    )
    with db.read(engine) as conn:
        assert notify.get_target(conn, hook_id).delivered == 1


def test_a_failing_target_is_retried_with_backoff_then_delivered_once_per_key(
    engine: sa.Engine, job_factory: Callable[..., int], worker_factory: Callable[..., int]
) -> None:
    with webhook(secret="s3cret", fail_first=2) as hook:
        hook_id = target(engine, "flaky", hook.url)
        rule(engine, ["failed"], hook_id)
        job = job_factory()
        run_and_end(engine, job, worker_factory("w1"))
        d = dispatcher(engine)
        assert d.dispatch() == 1 and d.wait_idle(10)
        [row] = rows(engine)
        assert row.state == "pending" and row.attempts == 1 and "HTTP 500" in row.last_error
        assert d.dispatch() == 0  # not due yet: backoff
        late = dispatcher(engine, clock=later(11))
        assert late.dispatch() == 1 and late.wait_idle(10)
        assert rows(engine)[0].attempts == 2
        assert late.dispatch() == 0  # 20 s after the second failure
        later_still = dispatcher(engine, clock=later(60))
        assert later_still.dispatch() == 1 and later_still.wait_idle(10)
        [row] = rows(engine)
        assert row.state == "delivered" and row.attempts == 3
        assert hook.posts == 3 and hook.keys() == [row.key]
        with db.read(engine) as conn:
            t = notify.get_target(conn, hook_id)
        assert (t.delivered, t.failures) == (1, 2)


def test_after_a_day_of_failures_a_notification_is_failed(
    engine: sa.Engine, job_factory: Callable[..., int], worker_factory: Callable[..., int]
) -> None:
    with webhook(fail_first=100) as hook:
        rule(engine, ["failed"], target(engine, "dead", hook.url))
        run_and_end(engine, job_factory(), worker_factory("w1"))
        d = dispatcher(engine, clock=later(86400 + 1))
        assert d.dispatch() == 1 and d.wait_idle(10)
        [row] = rows(engine)
        assert row.state == "failed" and row.attempts == 1
        assert d.dispatch() == 0


def test_a_notification_leased_by_one_server_is_not_sent_by_another(
    engine: sa.Engine,
    job_factory: Callable[..., int],
    worker_factory: Callable[..., int],
    hook: Webhook,
) -> None:
    rule(engine, ["failed"], target(engine, "ops-hook", hook.url))
    run_and_end(engine, job_factory(), worker_factory("w1"))
    [row] = rows(engine)
    first = notify.Dispatcher(engine, Settings(), "server-a")
    second = notify.Dispatcher(engine, Settings(), "server-b")
    # server-a dies holding the lease (claimed, never recorded).
    with db.write(engine) as conn:
        until = db.now(conn) + timedelta(seconds=60)
        conn.execute(sa.update(N).values(lease_until=until, leased_by=first.holder))
    assert second.dispatch() == 0
    assert second.deliver(row.id) is None
    # Once the lease has run out, the next leader sends it, with the same key.
    taker = notify.Dispatcher(engine, Settings(), "server-b", clock=later(61))
    assert taker.deliver(row.id) is True
    assert hook.keys() == [row.key]
    assert taker.deliver(row.id) is None  # delivered: nobody sends it again


def test_mail_goes_through_smtp(
    engine: sa.Engine, job_factory: Callable[..., int], worker_factory: Callable[..., int]
) -> None:
    with smtp_server() as box:
        with db.write(engine) as conn:
            mail = notify.create_target(conn, "oncall", "email", recipients=["ops@example.test"])
        rule(engine, ["failed"], mail.id)
        job = job_factory()
        run_and_end(engine, job, worker_factory("w1"))
        config = Settings(
            notify=NotifySettings(
                smtp_host="127.0.0.1", smtp_port=box.port, smtp_security="none",
                smtp_from="jobs@example.test",
            )
        )  # fmt: skip
        d = notify.Dispatcher(engine, config, "server")
        assert d.dispatch() == 1 and d.wait_idle(10)
        [message] = box.wait(1)
        assert message["Subject"] == f"[jobbalancer] job {job} failed (exit 1)"
        assert message["X-Rcpt"] == "ops@example.test"
        assert "echo hello" in message.get_payload()
        assert rows(engine)[0].state == "delivered"


def test_retention_deletes_old_sent_notifications_even_of_deleted_jobs_never_pending(
    engine: sa.Engine, job_factory: Callable[..., int], worker_factory: Callable[..., int]
) -> None:
    """The outbox is bounded: retention deletes delivered and failed notifications older
    than retention_days, also those no job deletion takes (a job deleted while they were
    pending); pending ones stay however old."""
    from jobbalancer import monitor

    hook_id = target(engine, "ops-hook", "http://127.0.0.1:9/x")
    rule(engine, ["failed"], hook_id)
    worker = worker_factory("w1", max_jobs=5)
    ended = [job_factory() for _ in range(4)]
    for job in ended:
        run_and_end(engine, job, worker)
    ids = [r.id for r in rows(engine)]
    with db.write(engine) as conn:
        long_ago = db.now(conn) - timedelta(days=31)
        states = ("delivered", "failed", "pending", "delivered")
        for nid, state in zip(ids, states, strict=True):
            conn.execute(
                sa.update(N)
                .where(N.c.id == nid)
                .values(state=state, created_at=long_ago, next_at=long_ago)
            )
        jobs.delete(conn, ended[0])  # its delivered notification goes with it
        conn.execute(  # a recent one stays
            sa.update(N)
            .where(N.c.id == ids[3])
            .values(created_at=db.now(conn), next_at=db.now(conn))
        )
    monitor.apply_retention(engine)  # the jobs are recent: only notifications go
    assert [(r.id, r.state) for r in rows(engine)] == [(ids[2], "pending"), (ids[3], "delivered")]
    with db.read(engine) as conn:
        assert jobs.get(conn, ended[1]).state == jobs.State.FAILED
    with db.write(engine) as conn:
        assert outbox.delete_sent_before(conn, db.now(conn) + timedelta(seconds=1)) == 1
    assert [r.id for r in rows(engine)] == [ids[2]]


def test_a_jobs_own_target_counts_before_this_process_has_seen_it(
    engine: sa.Engine, job_factory: Callable[..., int], worker_factory: Callable[..., int]
) -> None:
    """A target made in another process is missing from this one's copy for up to TTL: a
    job's own rule naming it (checked at submission) still notifies; an admin's rule
    counts once the copy knows it."""
    import time

    known = target(engine, "known", "http://127.0.0.1:9/a")
    with db.read(engine) as conn:
        outbox.rules(conn)  # this process's copy: only "known"
    stale = outbox._cache[engine]
    fresh = target(engine, "fresh", "http://127.0.0.1:9/b")  # as if made by another server
    rule(engine, ["failed"], fresh)
    outbox._cache[engine] = outbox.Rules(stale.targets, stale.rules, time.monotonic())
    job = job_factory(notify=({"on": ["failed"], "target": fresh},))
    run_and_end(engine, job, worker_factory("w1"))
    assert [(r.job_id, r.target_id) for r in rows(engine)] == [(job, fresh)]  # once
    assert known not in {r.target_id for r in rows(engine)}

"""Schedules on every backend: firing with an injected clock, each overlap and catch-up
policy, the owner's rights at firing time, and exactly one job per occurrence with two
servers firing at once.

Nothing sleeps: the firer's clock is a variable the test moves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import auth, classes, db, jobs, monitor, schedules
from jobbalancer.db import schema
from jobbalancer.service import access, firing, inputs, job_actions
from jobbalancer.service import schedules as service

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
J = schema.jobs


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def step(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@dataclass
class Bench:
    engine: sa.Engine
    clock: Clock
    firer: firing.Firer
    owner: auth.User

    def add(self, name: str = "every-minute", **fields: Any) -> schedules.Schedule:
        body: dict[str, Any] = {"name": name, "cron": "* * * * *", "job": {"command": "true"}}
        spec = inputs.ScheduleIn.model_validate({**body, **fields})
        return service.create(self.engine, self.owner, spec, now=self.clock.now)

    def at(self, when: datetime) -> int:
        """Move the clock to ``when`` and fire what is due."""
        self.clock.now = when
        return self.firer.tick()

    def occurrences(self, schedule_id: int) -> list[schedules.Occurrence]:
        with db.read(self.engine) as conn:
            return list(reversed(schedules.occurrences(conn, schedule_id, limit=100_000)))

    def jobs_of(self, schedule_id: int) -> list[jobs.Job]:
        with db.read(self.engine) as conn:
            rows = conn.execute(
                jobs.select_jobs().where(J.c.schedule_id == schedule_id).order_by(J.c.id)
            )
            return [jobs.Job.from_row(r) for r in rows]

    def user(self, name: str, **options: Any) -> auth.User:
        with db.write(self.engine) as conn:
            return auth.create_user(conn, name, options.pop("role", "submitter"), **options)

    def set_user(self, user_id: int, **changes: Any) -> None:
        with db.write(self.engine) as conn:
            auth.update_user(conn, user_id, changes)

    def finish(self, job_id: int, state: jobs.State = jobs.State.DONE) -> None:
        with db.write(self.engine) as conn:
            conn.execute(sa.update(J).where(J.c.id == job_id).values(state=state.value))


@pytest.fixture
def bench(engine: sa.Engine) -> Iterator[Bench]:
    clock = Clock()
    with db.write(engine) as conn:
        owner = auth.create_user(conn, "alice", "submitter")
    yield Bench(engine, clock, firing.Firer(engine, clock=clock), owner)


def minutes(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


# -- firing -------------------------------------------------------------------------------


def test_each_occurrence_fires_one_job_as_its_owner(bench: Bench) -> None:
    s = bench.add(overlap="allow")
    assert s.next_fire_at == minutes(1)
    assert bench.at(minutes(0) + timedelta(seconds=59)) == 0  # not yet
    for n in range(1, 4):
        assert bench.at(minutes(n)) == 1
        assert bench.at(minutes(n)) == 0  # decided: a second look does nothing
    made = bench.jobs_of(s.id)
    assert [j.user_name for j in made] == ["alice"] * 3
    assert all(j.command == "true" and j.schedule_id == s.id for j in made)
    occ = bench.occurrences(s.id)
    assert [o.fire_at for o in occ] == [minutes(1), minutes(2), minutes(3)]
    assert [o.job_id for o in occ] == [j.id for j in made]
    assert all(o.outcome == schedules.Outcome.FIRED and o.late_ms == 0 for o in occ)


def test_a_late_tick_fires_each_occurrence_and_counts_it_late(bench: Bench) -> None:
    s = bench.add(cron="*/10 * * * * *", overlap="allow")
    bench.at(T0 + timedelta(seconds=25))  # two due, within the missed window
    occ = bench.occurrences(s.id)
    assert [(o.fire_at, o.late_ms) for o in occ] == [
        (T0 + timedelta(seconds=10), 15_000),
        (T0 + timedelta(seconds=20), 5_000),
    ]
    with db.read(bench.engine) as conn:
        counts = schedules.counters(conn)
    assert counts["fired"] == 2 and counts["late"] == 2


def test_start_and_end_bound_the_occurrences(bench: Bench) -> None:
    s = bench.add(start_at=minutes(3).isoformat(), end_at=minutes(5).isoformat(), overlap="allow")
    assert s.next_fire_at == minutes(3)
    for n in range(1, 8):
        bench.at(minutes(n))
    assert [o.fire_at for o in bench.occurrences(s.id)] == [minutes(3), minutes(4), minutes(5)]
    with db.read(bench.engine) as conn:
        assert schedules.get(conn, s.id).next_fire_at is None


def test_a_paused_schedule_does_not_fire_and_resumes_from_now(bench: Bench) -> None:
    s = bench.add(overlap="allow")
    service.pause(bench.engine, bench.owner, s.id, now=T0)
    bench.at(minutes(3))
    assert bench.occurrences(s.id) == []
    service.resume(bench.engine, bench.owner, s.id, now=minutes(3) + timedelta(seconds=1))
    bench.at(minutes(4))
    assert [o.fire_at for o in bench.occurrences(s.id)] == [minutes(4)]


# -- overlap ------------------------------------------------------------------------------


def test_overlap_skip_records_the_running_job(bench: Bench) -> None:
    s = bench.add()  # skip is the default
    bench.at(minutes(1))
    [first] = bench.jobs_of(s.id)
    bench.at(minutes(2))
    occ = bench.occurrences(s.id)
    assert occ[1].outcome == schedules.Outcome.SKIPPED
    assert occ[1].reason == f"previous run {first.id} still waiting"
    assert occ[1].reason_code == "overlap"
    bench.finish(first.id)
    bench.at(minutes(3))
    assert len(bench.jobs_of(s.id)) == 2


def test_overlap_allow_runs_side_by_side(bench: Bench) -> None:
    s = bench.add(overlap="allow")
    for n in range(1, 4):
        bench.at(minutes(n))
    assert [j.state for j in bench.jobs_of(s.id)] == [jobs.State.WAITING] * 3


def test_overlap_queue_keeps_at_most_one_waiting(bench: Bench) -> None:
    s = bench.add(overlap="queue")
    bench.at(minutes(1))
    bench.at(minutes(2))
    first, queued = bench.jobs_of(s.id)
    assert queued.state == jobs.State.HELD
    bench.at(minutes(3))
    occ = bench.occurrences(s.id)
    assert occ[2].reason_code == "queue_full"
    assert occ[2].reason == f"run {queued.id} waits already for the previous one"
    job_actions.kill(bench.engine, access.LOCAL, first.id)  # it ends: the queued one runs
    assert bench.jobs_of(s.id)[1].state == jobs.State.WAITING


def test_overlap_replace_kills_the_previous_run(bench: Bench) -> None:
    s = bench.add(overlap="replace")
    bench.at(minutes(1))
    bench.at(minutes(2))
    first, second = bench.jobs_of(s.id)
    assert first.state == jobs.State.KILLED
    assert second.state == jobs.State.WAITING


def test_a_job_body_with_a_delay_fires_delayed_and_replace_kills_it(bench: Bench) -> None:
    """Each firing starts the job ``delay`` seconds after it (by the database's clock); a
    replaced run that still waits is killed and ended (its finished_at set)."""
    s = bench.add(overlap="replace", job={"command": "true", "delay": 3600})
    bench.at(minutes(1))
    [first] = bench.jobs_of(s.id)
    assert first.state == jobs.State.DELAYED and first.not_before is not None
    with db.read(bench.engine) as conn:
        left = (first.not_before - db.now(conn)).total_seconds()
    assert 3500 < left <= 3600
    bench.at(minutes(2))
    first, second = bench.jobs_of(s.id)
    assert (first.state, first.started_at) == (jobs.State.KILLED, None)
    assert first.finished_at is not None
    assert second.state == jobs.State.DELAYED and second.not_before is not None


# -- catch-up after no server ran ---------------------------------------------------------


@pytest.mark.parametrize(
    ("catch_up", "fired"),
    [("none", []), ("latest", [10]), ("all", [8, 9, 10])],
)
def test_catch_up_after_an_outage(bench: Bench, catch_up: str, fired: list[int]) -> None:
    s = bench.add(catch_up=catch_up, catch_up_max=3, overlap="allow")
    bench.at(minutes(10) + timedelta(seconds=30))  # ten occurrences passed, unseen
    occ = bench.occurrences(s.id)
    assert [o.fire_at for o in occ if o.job_id] == [minutes(n) for n in fired]
    [missed] = [o for o in occ if o.reason_code == "missed"]
    assert missed.fire_at == minutes(1)
    assert missed.reason is not None and missed.reason.startswith("missed while no server ran")
    with db.read(bench.engine) as conn:
        counts = schedules.counters(conn)
        assert schedules.get(conn, s.id).next_fire_at == minutes(11)
    assert counts["skipped:missed"] == 10 - len(fired)
    assert len(bench.jobs_of(s.id)) == len(fired)


@pytest.mark.parametrize("scan", [100_000, 50])
def test_catch_up_of_a_long_outage_records_one_skip(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, scan: int
) -> None:
    """Past SCAN occurrences the latest are found backwards from now."""
    monkeypatch.setattr(firing, "SCAN", scan)
    s = bench.add(cron="* * * * * *", catch_up="all", catch_up_max=2)  # every second
    bench.at(T0 + timedelta(seconds=180, milliseconds=500))
    occ = bench.occurrences(s.id)
    fired = [T0 + timedelta(seconds=179), T0 + timedelta(seconds=180)]
    assert [o.fire_at for o in occ if o.outcome == "fired"] == fired[:1]  # overlap skip
    assert [o.reason_code for o in occ] == ["missed", None, "overlap"]
    assert occ[0].fire_at == T0 + timedelta(seconds=1)
    with db.read(bench.engine) as conn:
        assert schedules.counters(conn)["skipped:missed"] == min(178, scan)
        assert schedules.get(conn, s.id).next_fire_at == T0 + timedelta(seconds=181)


# -- the owner's rights, as they are at firing time ---------------------------------------


def test_a_disabled_owner_gets_a_recorded_skip(bench: Bench) -> None:
    s = bench.add()
    bench.set_user(bench.owner.id, disabled=True)
    bench.at(minutes(1))
    [occ] = bench.occurrences(s.id)
    assert (occ.outcome, occ.reason, occ.reason_code) == (
        "skipped",
        "owner alice disabled",
        "owner",
    )
    assert bench.jobs_of(s.id) == []


def test_an_owner_who_lost_the_class_gets_a_recorded_skip(bench: Bench) -> None:
    s = bench.add()
    bench.set_user(bench.owner.id, worker_classes=["other"])
    bench.at(minutes(1))
    [occ] = bench.occurrences(s.id)
    assert occ.reason_code == "refused"
    assert occ.reason is not None and "worker class 'default'" in occ.reason
    bench.set_user(bench.owner.id, worker_classes=None)
    bench.at(minutes(2))
    assert len(bench.jobs_of(s.id)) == 1


def test_a_scripts_only_owner_cannot_fire_a_command(bench: Bench) -> None:
    s = bench.add()
    bench.set_user(bench.owner.id, commands_allowed=False)
    bench.at(minutes(1))
    [occ] = bench.occurrences(s.id)
    assert occ.reason == "the job is refused: you may run stored scripts only, not commands"


def test_schedules_due_at_once_fire_together_and_each_refusal_stays_its_own(
    bench: Bench,
) -> None:
    """One owner's jobs due at one instant go in one submission; when one of them is
    refused, the others still fire and the refusal is recorded on its occurrence only.
    Another owner's disabled account skips theirs alone."""
    with db.write(bench.engine) as conn:
        classes.create(conn, "gpu")
    bob = bench.user("bob")
    mine = [bench.add(f"s{i}", overlap="allow") for i in range(5)]
    lost = bench.add("on-gpu", overlap="allow", job={"command": "true", "worker_class": "gpu"})
    theirs = service.create(
        bench.engine, bob,
        inputs.ScheduleIn.model_validate({"name": "bobs", "cron": "* * * * *",
                                          "job": {"command": "true"}}),
        now=bench.clock.now,
    )  # fmt: skip
    assert bench.at(minutes(1)) == 7
    assert all(len(bench.jobs_of(s.id)) == 1 for s in [*mine, theirs])
    bench.set_user(bench.owner.id, worker_classes=["default"])
    bench.set_user(bob.id, disabled=True)
    assert bench.at(minutes(2)) == 7
    assert all(len(bench.jobs_of(s.id)) == 2 for s in mine)
    assert all(o.job_id is not None for s in mine for o in bench.occurrences(s.id))
    refused = bench.occurrences(lost.id)[1]
    assert refused.reason_code == "refused" and "'gpu'" in (refused.reason or "")
    assert bench.occurrences(theirs.id)[1].reason == "owner bob disabled"
    with db.read(bench.engine) as conn:
        counted = schedules.counters(conn)
    assert (counted["fired"], counted["skipped:refused"], counted["skipped:owner"]) == (12, 1, 1)


def test_two_occurrences_due_in_one_tick_see_each_other(bench: Bench) -> None:
    """A tick that finds two occurrences of a schedule (and of another) decides them in
    order: under overlap skip the first fires and the second sees it running."""
    s = bench.add("skips")
    other = bench.add("allows", overlap="allow")
    assert bench.at(minutes(2)) == 2
    first, second = bench.occurrences(s.id)
    [job] = bench.jobs_of(s.id)
    assert first.job_id == job.id
    assert second.reason == f"previous run {job.id} still waiting"
    assert len(bench.jobs_of(other.id)) == 2


def test_history_pages_in_its_own_order(bench: Bench) -> None:
    """A run now recorded before an occurrence of an earlier time: the history is by
    fire time, and its pages follow that order, not the ids."""
    s = bench.add(overlap="allow")
    run = service.run_now(bench.engine, access.LOCAL, s.name, now=minutes(10))
    bench.at(minutes(1))
    bench.at(minutes(2))
    newest = service.history(bench.engine, access.LOCAL, s.name, limit=1)
    assert [o.id for o in newest] == [run.id]
    rest = service.history(bench.engine, access.LOCAL, s.name, limit=5, before=run.id)
    assert [o.fire_at for o in rest] == [minutes(2), minutes(1)]
    assert all(o.id > run.id for o in rest)
    last = service.history(bench.engine, access.LOCAL, s.name, before=rest[-1].id)
    assert last == []
    other = bench.add("other")
    assert service.history(bench.engine, access.LOCAL, other.id, before=run.id) == []


def test_upcoming_is_the_soonest_runs_a_user_may_see(bench: Bench) -> None:
    bob = bench.user("bob")
    bench.add("hourly", cron="0 * * * *")
    bench.add("minutely", cron="* * * * *")
    bench.add("paused", cron="* * * * * *", enabled=False)
    bench.add("daily", cron="0 0 * * *")
    service.create(
        bench.engine, bob,
        inputs.ScheduleIn.model_validate({"name": "bobs", "cron": "*/30 * * * * *",
                                          "job": {"command": "true"}}),
        now=bench.clock.now,
    )  # fmt: skip
    names = [s.name for s, _ in service.upcoming(bench.engine, access.LOCAL, limit=3)]
    assert names == ["bobs", "minutely", "hourly"]
    mine = service.upcoming(bench.engine, bench.owner, limit=5)
    assert [(s.name, at) for s, at in mine] == [
        ("minutely", minutes(1)), ("hourly", minutes(60)), ("daily", minutes(12 * 60)),
    ]  # fmt: skip


def test_run_now_fires_as_the_owner_and_is_recorded_manual(bench: Bench) -> None:
    s = bench.add()
    occ = service.run_now(bench.engine, access.LOCAL, s.name, now=T0)
    assert occ.manual and occ.job_id is not None
    [job] = bench.jobs_of(s.id)
    assert job.user_name == "alice"


# -- exactly once -------------------------------------------------------------------------


def test_two_servers_fire_each_occurrence_once(bench: Bench, database_url: str) -> None:
    """Two firers on their own engines look at the same due occurrences at the same
    instants, 200 times: one job each, one row each."""
    s = bench.add(cron="* * * * * *", overlap="allow")
    other = db.connect(database_url)
    try:
        firers = [bench.firer, firing.Firer(other, clock=bench.clock)]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(f: firing.Firer) -> None:
            try:
                for _ in range(200):
                    barrier.wait(timeout=30)
                    if f is firers[0]:
                        bench.clock.step(seconds=1)
                    barrier.wait(timeout=30)
                    f.tick()
            except BaseException as exc:  # reported below
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=run, args=(f,)) for f in firers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
    finally:
        other.dispose()
    occ = bench.occurrences(s.id)
    assert [o.fire_at for o in occ] == [T0 + timedelta(seconds=n) for n in range(1, 201)]
    made = bench.jobs_of(s.id)
    assert len(made) == 200
    assert sorted(o.job_id for o in occ if o.job_id) == [j.id for j in made]


def _never(_: Any) -> Callable[[], bool]:
    return lambda: False


def test_a_schedule_that_fails_to_fire_does_not_hold_up_the_others(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, good = bench.add("bad", overlap="allow"), bench.add("good", overlap="allow")
    real = firing.job_body

    def broken(schedule: schedules.Schedule) -> inputs.JobSubmit:
        if schedule.id == bad.id:
            raise RuntimeError("a bug")
        return real(schedule)

    monkeypatch.setattr(firing, "job_body", broken)
    bench.at(minutes(1))
    assert len(bench.jobs_of(good.id)) == 1
    assert bench.occurrences(bad.id) == []  # rolled back: tried again next tick
    monkeypatch.setattr(firing, "job_body", real)
    bench.at(minutes(1) + timedelta(seconds=1))
    assert [o.fire_at for o in bench.occurrences(bad.id)] == [minutes(1)]


def test_a_retry_is_the_same_run_of_its_schedule(bench: Bench) -> None:
    s = bench.add(job={"command": "false", "retries": 1})
    bench.at(minutes(1))
    [first] = bench.jobs_of(s.id)
    with db.write(bench.engine) as conn:  # it ran and failed: its retry waits
        conn.execute(sa.update(J).where(J.c.id == first.id).values(state="running", token="t"))
        jobs.finish(conn, first.id, "t", jobs.State.FAILED, exit_code=1)
    ended, retry = bench.jobs_of(s.id)
    assert ended.state == jobs.State.FAILED
    assert (retry.retry_of, retry.state) == (first.id, jobs.State.WAITING)
    bench.at(minutes(2))  # overlap skip: the retry is the previous run, still going
    assert bench.occurrences(s.id)[1].reason == f"previous run {retry.id} still waiting"


def test_a_delete_waits_for_a_firing_and_leaves_no_occurrence(bench: Bench) -> None:
    """A schedule deleted while the leader decides it: the delete waits for the firing's
    lock, then takes the occurrence the firing wrote with it (none is left behind)."""
    s = bench.add(overlap="allow")
    done = threading.Event()

    def delete() -> None:
        service.delete(bench.engine, access.LOCAL, s.id)
        done.set()

    with db.write(bench.engine) as conn:  # a firing, holding the schedule's row
        assert schedules.lock(conn, s.id) is not None
        deleting = threading.Thread(target=delete)
        deleting.start()
        done.wait(0.5)  # the delete is under way (or waits to begin)
        assert not done.is_set()
        schedules.record(
            conn, s.id, minutes(1), minutes(1), reason="x", code=schedules.Reason.OVERLAP
        )
    deleting.join(timeout=60)
    assert done.is_set()
    with db.read(bench.engine) as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(schema.schedule_occurrences))
        assert left.scalar() == 0


def test_retention_deletes_occurrences_recorded_long_ago(bench: Bench) -> None:
    """The history follows the jobs' retention_days (30 by default): occurrences recorded
    before then go, the others and the counters stay."""
    s = bench.add(overlap="allow")
    with db.write(bench.engine) as conn:
        now = db.now(conn)
        for days in (40, 31, 29, 1):
            at = now - timedelta(days=days)
            schedules.record(conn, s.id, at, at, reason="x", code=schedules.Reason.OVERLAP)
    monitor.apply_retention(bench.engine)
    with db.read(bench.engine) as conn:
        left = schedules.occurrences(conn, s.id)
        counted = schedules.counters(conn)
    assert [(now - o.fire_at).days for o in left] == [1, 29]
    assert counted["skipped:overlap"] == 4


def test_the_lists_last_result_is_the_newest_by_fire_time(bench: Bench) -> None:
    """A run now recorded before an occurrence of an earlier time stays the last result
    (the history's first row); a schedule that never fired has none."""
    s = bench.add(overlap="allow")
    never = bench.add("never", cron="0 0 1 1 *")
    run = service.run_now(bench.engine, access.LOCAL, s.name, now=minutes(10))
    bench.at(minutes(1))
    listed = {x.schedule.name: x.last for x in service.list_schedules(bench.engine, access.LOCAL)}
    assert listed[s.name] is not None and listed[s.name].id == run.id
    assert listed[never.name] is None
    page = service.list_schedules(bench.engine, access.LOCAL, after="every-minute", limit=5)
    assert [x.schedule.name for x in page] == ["never"]

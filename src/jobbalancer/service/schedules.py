"""What users do with schedules: list, read, create, change, pause, resume, run now,
delete, preview an expression, read the history.

Who may: admins and operators see and change every schedule; a submitter sees and
changes their own (others' do not exist for them); viewers read all. A schedule's job is
validated as its owner would submit it (the same input model and checks as
``POST /api/v1/jobs``) when it is created or changed, and again at every firing, with
the owner's rights as they are then (:mod:`.firing`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from jobbalancer import audit, auth, db, errors, schedules, settings
from jobbalancer.service import access, firing, inputs, submission


@dataclass(frozen=True)
class NextRun:
    """A fire time, in UTC and in the schedule's zone (with its offset that day)."""

    utc: datetime
    local: datetime


@dataclass(frozen=True)
class Detail:
    """One schedule as its page shows it: the next runs, the latest occurrences."""

    schedule: schedules.Schedule
    next_runs: list[NextRun]
    occurrences: list[schedules.Occurrence]


def next_runs(
    schedule: schedules.Schedule, after: datetime, count: int = schedules.NEXT_RUNS
) -> list[NextRun]:
    """The next ``count`` fire times after ``after`` (none while paused or past its end)."""
    return _local(schedule.next_runs(after, count), schedule.timezone)


def _local(times: list[datetime], tz: str) -> list[NextRun]:
    zone = ZoneInfo(tz)
    return [NextRun(utc=t, local=t.astimezone(zone)) for t in times]


# -- reading ------------------------------------------------------------------------------


def _visible(conn: sa.Connection, user: auth.User, ref: str | int) -> schedules.Schedule:
    """The schedule, if ``user`` may see it; NotFound otherwise (ids do not leak)."""
    schedule = schedules.find(conn, ref)
    if not user.can_see_job(schedule.user_id):
        raise errors.NotFound(f"schedule {ref!r} does not exist")
    return schedule


def _manageable(conn: sa.Connection, user: auth.User, ref: str | int) -> schedules.Schedule:
    schedule = _visible(conn, user, ref)
    if not user.can_manage_job(schedule.user_id):
        raise errors.Forbidden(f"your role ({user.role}) does not allow changing schedules")
    return schedule


def list_schedules(
    engine: sa.Engine, user: auth.User, *, after: str | None = None, limit: int | None = None
) -> list[schedules.Listed]:
    """The schedules ``user`` may see, by name, each with its latest occurrence;
    ``after`` (a name) and ``limit``: one page."""
    with db.read(engine) as conn:
        return schedules.list_all(
            conn, owner_id=access.owner_filter(user), after=after, limit=limit
        )


def get(
    engine: sa.Engine,
    user: auth.User,
    ref: str | int,
    *,
    history: int = 20,
    now: datetime | None = None,
) -> Detail:
    """A schedule with its next 5 runs (after ``now``, by default the database's clock)
    and its latest ``history`` occurrences."""
    with db.read(engine) as conn:
        schedule = _visible(conn, user, ref)
        now = now or db.now(conn)
        found = schedules.occurrences(conn, schedule.id, limit=history)
    return Detail(schedule, next_runs(schedule, now), found)


def history(
    engine: sa.Engine,
    user: auth.User,
    ref: str | int,
    *,
    limit: int = 50,
    before: int | None = None,
) -> list[schedules.Occurrence]:
    """A schedule's occurrences, newest first; ``before``: an occurrence id to page from."""
    with db.read(engine) as conn:
        schedule = _visible(conn, user, ref)
        return schedules.occurrences(conn, schedule.id, limit=limit, before=before)


def upcoming(
    engine: sa.Engine, user: auth.User, limit: int = 5
) -> list[tuple[schedules.Schedule, datetime]]:
    """The soonest next runs among the schedules ``user`` may see (the dashboard's,
    every few seconds: one indexed query of ``limit`` rows)."""
    with db.read(engine) as conn:
        found = schedules.upcoming(conn, owner_id=access.owner_filter(user), limit=limit)
    return [(s, s.next_fire_at) for s in found if s.next_fire_at is not None]


def preview(spec: inputs.SchedulePreview, now: datetime) -> list[NextRun]:
    """The next ``spec.count`` fire times after ``now``; nothing is saved."""
    _check_window(spec.start_at, spec.end_at)
    times = schedules.fire_times(
        spec.cron, spec.timezone, now, spec.count, spec.start_at, spec.end_at
    )
    return _local(times, spec.timezone)


# -- changing -----------------------------------------------------------------------------


def create(
    engine: sa.Engine, user: auth.User, spec: inputs.ScheduleIn, *, now: datetime | None = None
) -> schedules.Schedule:
    """A new schedule owned by ``user``, whose job they could submit now (422 naming the
    ``job.…`` field otherwise)."""
    access.require(user, access.SUBMIT)
    _check_window(spec.start_at, spec.end_at)
    values = spec.model_dump(exclude={"job"})
    values["job"] = _stored_job(spec.job)
    with db.write(engine) as conn:
        _check_job(conn, user, spec.job)
        now = now or db.now(conn)
        made = schedules.create(conn, {**values, "user_id": user.id, "user_name": user.name}, now)
        audit.record(conn, user, "schedule.create", "schedule", made.id, made.name,
                     audit.fields(_shown(made)))  # fmt: skip
        return made


def _shown(s: schedules.Schedule) -> dict[str, Any]:
    """What an audit entry says of a schedule: its timing and what its job runs (never
    the job's env)."""
    job = s.job.get("command") or f"script {s.job.get('script')}"
    return {"cron": s.cron, "timezone": s.timezone, "enabled": s.enabled,
            "overlap": s.overlap, "catch_up": s.catch_up, "start_at": s.start_at,
            "end_at": s.end_at, "job": str(job)[:80], "description": s.description}  # fmt: skip


def _job_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """What changed in a schedule's job, field by field (``job.priority: 0 → 5``); of its
    env and secret_env only that they changed (their values never go in the log)."""
    # command and script are the summary's "job" already
    everything = [*after, *(k for k in before if k not in after)]
    keys = [k for k in everything if k not in ("command", "script")]
    old = {f"job.{k}": before.get(k) for k in keys}
    new = {f"job.{k}": after.get(k) for k in keys}
    return audit.changes(old, new, hide=("job.env", "job.secret_env"))


def update(
    engine: sa.Engine,
    user: auth.User,
    ref: str | int,
    patch: inputs.SchedulePatch,
    *,
    now: datetime | None = None,
) -> schedules.Schedule:
    """Change what the patch sends. A new job body is checked with the owner's rights; a
    change of timing (or enabling) starts from now (nothing missed is fired)."""
    changes: dict[str, Any] = patch.model_dump(exclude_unset=True, exclude={"job"})
    with db.write(engine) as conn:
        schedule = _manageable(conn, user, ref)
        _check_window(
            changes.get("start_at", schedule.start_at), changes.get("end_at", schedule.end_at)
        )
        if patch.job is not None:
            _check_job(conn, _owner(conn, schedule), patch.job)
            changes["job"] = _stored_job(patch.job)
        updated = schedules.update(conn, schedule.id, changes, now or db.now(conn))
        summary = audit.changes({"name": schedule.name, **_shown(schedule)},
                                {"name": updated.name, **_shown(updated)})  # fmt: skip
        if "job" in changes and schedule.job != updated.job:
            fields = _job_changes(schedule.job, updated.job)
            if not fields and "job:" not in summary:
                fields = f"job {audit.HIDDEN}"
            summary = "; ".join(s for s in (summary, fields) if s)
        audit.record(conn, user, "schedule.update", "schedule", schedule.id, updated.name,
                     summary or "no change")  # fmt: skip
        return updated


def pause(
    engine: sa.Engine, user: auth.User, ref: str | int, *, now: datetime | None = None
) -> schedules.Schedule:
    """No occurrence fires until resumed (none is made up for then)."""
    return _set_enabled(engine, user, ref, enabled=False, now=now)


def resume(
    engine: sa.Engine, user: auth.User, ref: str | int, *, now: datetime | None = None
) -> schedules.Schedule:
    """Fire again, from the next occurrence after now."""
    return _set_enabled(engine, user, ref, enabled=True, now=now)


def _set_enabled(
    engine: sa.Engine, user: auth.User, ref: str | int, *, enabled: bool, now: datetime | None
) -> schedules.Schedule:
    with db.write(engine) as conn:
        schedule = _manageable(conn, user, ref)
        updated = schedules.update(conn, schedule.id, {"enabled": enabled}, now or db.now(conn))
        action = "schedule.resume" if enabled else "schedule.pause"
        audit.record(conn, user, action, "schedule", schedule.id, schedule.name,
                     audit.changes({"enabled": schedule.enabled}, {"enabled": enabled})
                     or "no change")  # fmt: skip
        return updated


def delete(engine: sa.Engine, user: auth.User, ref: str | int) -> None:
    """Delete a schedule and its history; its jobs stay (with their ``schedule_id``)."""
    with db.write(engine) as conn:
        schedule = _manageable(conn, user, ref)
        # The row first (a firing deciding it now finishes before): none of its
        # occurrences can be written after they are deleted.
        schedules.lock(conn, schedule.id)
        schedules.delete(conn, schedule.id)
        audit.record(conn, user, "schedule.delete", "schedule", schedule.id, schedule.name,
                     audit.fields(_shown(schedule)))  # fmt: skip


def run_now(
    engine: sa.Engine, user: auth.User, ref: str | int, *, now: datetime | None = None
) -> schedules.Occurrence:
    """Submit the schedule's job now, as its owner, whatever the overlap policy and
    whether it is paused; recorded as a manual occurrence. Refused (422, nothing
    recorded) when its owner could not submit it now."""
    with db.write(engine) as conn:
        schedule = _manageable(conn, user, ref)
        schedules.lock(conn, schedule.id)
        try:
            owner = firing.owner_of(conn, schedule)
            job = firing.submit(conn, schedule, owner, firing.job_body(schedule))
        except firing.Refused as refused:
            raise errors.Conflict(refused.reason, field="job") from None
        now = now or db.now(conn)
        schedules.record(conn, schedule.id, now, now, job_id=job.id, manual=True)
        audit.record(conn, user, "schedule.run", "schedule", schedule.id, schedule.name,
                     f"job {job.id}, as {owner.name}")  # fmt: skip
        return schedules.occurrences(conn, schedule.id, limit=1)[0]


# -- checks -------------------------------------------------------------------------------


def _check_window(start_at: datetime | None, end_at: datetime | None) -> None:
    if start_at is not None and end_at is not None and end_at <= start_at:
        raise errors.InvalidInput("end_at: must be after start_at", field="end_at")


def _stored_job(job: inputs.JobSubmit) -> dict[str, Any]:
    """The body as stored: what was given (unset fields take the defaults of the day they
    fire), as JSON."""
    if job.after:
        raise errors.InvalidInput(
            "job.after: a schedule's job cannot wait for given jobs (the overlap policy "
            "'queue' makes a run wait for the previous one)",
            field="job.after",
        )
    if job.not_before is not None:
        raise errors.InvalidInput(
            "job.not_before: a schedule's job starts at each fire time, so a fixed time "
            "would be past at the next one; give 'delay' (seconds after the fire time)",
            field="job.not_before",
        )
    return job.model_dump(mode="json", exclude_unset=True)


def _owner(conn: sa.Connection, schedule: schedules.Schedule) -> auth.User:
    try:
        return auth.get_user(conn, schedule.user_id)
    except errors.NotFound:
        raise errors.InvalidInput(
            f"job: the schedule's owner {schedule.user_name} was deleted", field="job"
        ) from None


def _check_job(conn: sa.Connection, owner: auth.User, job: inputs.JobSubmit) -> None:
    """What a submission of ``job`` by ``owner`` would check (class, script, commands,
    env, workdir, notify targets, priority cap), each refusal a 422 naming ``job.…``."""
    try:
        if not submission.unrestricted(owner):
            cap = settings.load_tunables(conn).max_submitter_priority
            submission.check_priority(owner, job.priority, cap, "job.")
        submission.to_spec(conn, owner, job, "job.")
    except (errors.Forbidden, errors.NotFound, errors.InvalidInput, errors.Conflict) as exc:
        raise errors.InvalidInput(exc.message, field=exc.field or "job") from None

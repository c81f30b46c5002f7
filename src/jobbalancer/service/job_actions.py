"""What a user does with jobs that exist: see one, list them, kill, restart, delete. Each
call opens its own transaction and checks that the user may (:mod:`.access`)."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa

from jobbalancer import audit, auth, balancer, chains, db, jobs, logs
from jobbalancer.service import access, listing, submission

# Jobs whose rows the balancer (or the leader's release of delayed jobs) moves under the
# assign lock: a kill or delete of one takes the lock before the row, as they do.
QUEUED = (jobs.State.HELD, jobs.State.DELAYED, jobs.State.WAITING)


def get(engine: sa.Engine, user: auth.User, job_id: int) -> jobs.Job:
    """The job, if ``user`` may see it (NotFound otherwise)."""
    with db.read(engine) as conn:
        return access.visible_job(conn, user, job_id)


def get_with_links(
    engine: sa.Engine, user: auth.User, job_id: int
) -> tuple[jobs.Job, chains.Links]:
    """The job, if ``user`` may see it, with its parents and children, read together."""
    with db.read(engine) as conn:
        job = balancer.with_current_reason(conn, access.visible_job(conn, user, job_id))
        return job, chains.links(conn, job_id)


def read_log(
    engine: sa.Engine, user: auth.User, job_id: int, view: logs.View, offset: int, limit: int
) -> tuple[jobs.Job, bytes]:
    """The job, if ``user`` may see it, and up to ``limit`` bytes of its output from
    ``offset`` on in ``view``, read together."""
    with db.read(engine) as conn:
        job = access.visible_job(conn, user, job_id)
        data, _ = logs.read(conn, job_id, view, offset, limit)
    return job, data


def list_page(
    engine: sa.Engine,
    user: auth.User,
    filters: listing.Filters,
    limit: int,
    cursor: str | None,
) -> tuple[list[jobs.Job], str | None]:
    """One page of the jobs ``user`` may see (a submitter: their own, whatever the filters
    say), and the cursor of the next."""
    mine = dataclasses.replace(filters, owner_id=access.owner_filter(user))
    with db.read(engine) as conn:
        return listing.page(conn, mine, limit, cursor)


def kill(engine: sa.Engine, user: auth.User, job_id: int) -> jobs.Job:
    """Kill: a held, delayed, waiting or assigned job at once, a running one when its worker stopped
    it; a freed slot, or jobs it released (``after`` it, ``on: any``), are assigned in the
    same transaction. The job as it is now."""
    with db.write(engine) as conn:
        job = access.manageable_job(conn, user, job_id)
        # Lock order, by who else may hold the job's row and want the assign lock: a held
        # or waiting job's row is the balancer's, which takes the lock first (as the kill
        # then must); an assigned or running one's is its worker's (an end: jobs.finish,
        # then chains.ended) or the monitor's (unassign or lose, then the lock), which take
        # the row first. Taking the lock first there deadlocked with them.
        queued = job.state in QUEUED
        if queued:
            db.lock_row(conn, "assign")
        jobs.request_kill(conn, job_id)
        if job.state != jobs.State.RUNNING:  # a slot freed, or held jobs released
            balancer.assign_waiting(conn, locked=queued)
        audit.record(conn, user, "job.kill", "job", job_id, submission.what(job),
                     f"was {job.state}; owner {job.user_name}")  # fmt: skip
        return jobs.get(conn, job_id)


def restart(
    engine: sa.Engine, user: auth.User, job_id: int, *, limiter: submission.RateLimiter
) -> jobs.Job:
    """A new job with the spec of ``job_id``, if ``user`` may manage it and submit it now."""
    with db.read(engine) as conn:
        job = access.manageable_job(conn, user, job_id)
    return submission.restart(engine, user, job_id, job, limiter=limiter)


def delete(engine: sa.Engine, user: auth.User, job_id: int) -> None:
    """Delete a job and its output; an assigned or running one must be killed first. Jobs
    held for it are skipped."""
    with db.write(engine) as conn:
        job = access.manageable_job(conn, user, job_id)
        if job.state in QUEUED:  # the lock first, as kill
            db.lock_row(conn, "assign")
        # Else the row first (chains.ended takes the lock): MariaDB's DELETE waits for a
        # row its worker or the monitor holds, whatever its state, and they want the lock.
        jobs.delete(conn, job_id)
        audit.record(conn, user, "job.delete", "job", job_id, submission.what(job),
                     f"was {job.state}; owner {job.user_name}")  # fmt: skip

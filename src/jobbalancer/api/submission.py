"""Turning submissions into jobs: resolve scripts and classes, check what the user may do,
submit and read the jobs back in one transaction.

Shared by ``POST /api/v1/jobs``, its batch form, restarts and the legacy ``/addJob``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import sqlalchemy as sa

from jobbalancer import auth, balancer, classes, db, errors, jobs, scripts
from jobbalancer.api import models


class _Lookups:
    """Classes and scripts a batch names, each looked up once (a batch of 1000 jobs of
    one class reads the class once, not 1000 times)."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self._classes: dict[str | int, classes.WorkerClass] = {}
        self._scripts: dict[str | int, scripts.Script] = {}

    def wclass(self, ref: str | int, field: str) -> classes.WorkerClass:
        if ref not in self._classes:
            self._classes[ref] = classes.find(self.conn, ref, field=field)
        return self._classes[ref]

    def script(self, ref: str | int, field: str) -> scripts.Script:
        if ref not in self._scripts:
            self._scripts[ref] = scripts.find(self.conn, ref, field=field)
        return self._scripts[ref]


def to_spec(
    conn: sa.Connection,
    user: auth.User,
    job: models.JobSubmit,
    where: str = "",
    lookups: _Lookups | None = None,
) -> jobs.Spec:
    """The job's spec; errors name the field as ``where`` + its name (``jobs.3.script``)."""
    if (job.command is None) == (job.script is None):
        raise errors.InvalidInput(
            "give exactly one of 'command' or 'script'", field=f"{where}command"
        )
    lookups = lookups or _Lookups(conn)
    wclass = lookups.wclass(job.worker_class, f"{where}worker_class")
    if not user.may_use_class(wclass.name):
        raise errors.Forbidden(
            f"you may not submit to worker class {wclass.name!r}", field=f"{where}worker_class"
        )
    base = jobs.Spec(
        worker_class_id=wclass.id,
        params=tuple(job.params),
        env=dict(job.env),
        labels=dict(job.labels),
        watchdog=job.watchdog or None,
        need_realtime=job.need_realtime,
        priority=job.priority,
        retries=job.retries,
    )
    if job.command is not None:
        if not user.commands_allowed:
            raise errors.Forbidden(
                "you may run stored scripts only, not commands", field=f"{where}command"
            )
        if not job.command.strip():
            raise errors.InvalidInput(f"{where}command: must not be empty", field=f"{where}command")
        return dataclasses.replace(base, command=job.command)
    assert job.script is not None
    script = lookups.script(job.script, f"{where}script")
    return dataclasses.replace(
        base,
        script_id=script.id,
        script_name=script.name,
        interpreter=script.interpreter,
        script_content=script.content,
    )


def submit(
    engine: sa.Engine, user: auth.User, batch: Sequence[models.JobSubmit], *, prefix: bool
) -> list[jobs.Job]:
    """Validate every job, then create and assign them all in one transaction.

    ``prefix`` names fields ``jobs.N.…`` as in a batch body. Returns the committed jobs.
    """
    with db.write(engine) as conn:
        lookups = _Lookups(conn)
        specs = [
            to_spec(conn, user, job, f"jobs.{i}." if prefix else "", lookups)
            for i, job in enumerate(batch)
        ]
        ids = balancer.submit(conn, specs, user.id, user.name)
        # Read back in the same transaction: what it commits, without another round.
        return jobs.get_many(conn, ids)


def restart(engine: sa.Engine, user: auth.User, job_id: int, job: jobs.Job) -> jobs.Job:
    """A new job with the spec of ``job``, started at once if a slot is free.

    The restarting user's current limits apply, as to a submission. A need_realtime job
    that finds no free slot ends ``occupied``, as it would on submit.
    """
    with db.write(engine) as conn:
        check_may_rerun(user, job)
        new_id = jobs.restart(conn, job_id, user.id, user.name)
        balancer.assign_waiting(conn, class_ids=[job.worker_class_id])
        if job.need_realtime:
            jobs.occupy(conn, new_id)  # a no-op unless it is still waiting
    with db.read(engine) as conn:
        return jobs.get(conn, new_id)


def check_may_rerun(user: auth.User, job: jobs.Job) -> None:
    if not user.can_submit:
        raise errors.Forbidden(f"your role ({user.role}) does not allow submitting jobs")
    if job.command is not None and not user.commands_allowed:
        raise errors.Forbidden("you may run stored scripts only, not commands")
    if not user.may_use_class(job.worker_class):
        raise errors.Forbidden(f"you may not submit to worker class {job.worker_class!r}")


def occupied(job: jobs.Job) -> errors.Occupied:
    """The 409 for a need_realtime job that found no free slot; it carries the job."""
    return errors.Occupied(
        models.Job.from_job(job).model_dump(mode="json"),
        f"no worker of class {job.worker_class!r} has a free slot; job {job.id} was not run",
    )

"""Changes that the API routes and the web pages both make, each with the follow-up it
needs: a slot that frees up (a killed assigned job, more max_jobs, another class) is
filled in the same transaction, so waiting jobs do not wait for the balancer's next pass.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from jobbalancer import auth, balancer, classes, jobs, registry
from jobbalancer.api import deps


def kill_job(conn: sa.Connection, user: auth.User, job_id: int) -> jobs.Job:
    """Kill: a waiting or assigned job at once, a running one when its worker stopped it.
    The job as it is now."""
    job = deps.manageable_job(conn, user, job_id)
    jobs.request_kill(conn, job_id)
    if job.state == jobs.State.ASSIGNED:  # its slot is free again
        balancer.assign_waiting(conn, class_ids=[job.worker_class_id])
    return jobs.get(conn, job_id)


def update_worker(conn: sa.Connection, worker_id: int, changes: dict[str, Any]) -> registry.Worker:
    """Change max_jobs, worker_class (a name or id) or enabled."""
    if "worker_class" in changes:
        changes = {**changes, "worker_class": classes.find(conn, changes["worker_class"]).id}
    registry.update(conn, worker_id, changes)
    # More slots, another class, or enabled again: waiting jobs may fit now.
    balancer.assign_waiting(conn, worker_id=worker_id)
    return registry.get(conn, worker_id)


def update_class(
    conn: sa.Connection, class_id: int, changes: dict[str, Any]
) -> classes.WorkerClass:
    """Rename, change max_jobs or the description."""
    updated = classes.update(conn, class_id, changes)
    # A higher max_jobs frees slots on the class's workers at once.
    balancer.assign_waiting(conn, class_ids=[class_id])
    return updated

"""Who may see or change what: the role rules, the jobs a user may see or manage, and
whose environment values a user may read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from jobbalancer import auth, chains, errors, jobs


@dataclass(frozen=True)
class Rule:
    """A role check: ``allowed`` says yes or no; ``what`` ends the refusal's sentence."""

    allowed: Callable[[auth.User], bool]
    what: str


def can_operate(user: auth.User) -> bool:
    """Admins and operators: jobs of everyone, workers, classes, scripts."""
    return user.role in (auth.Role.ADMIN, auth.Role.OPERATOR)


SUBMIT = Rule(lambda u: u.can_submit, "submitting jobs")
ACT = Rule(lambda u: u.role != auth.Role.VIEWER, "changing anything; it is read-only")
OPERATE = Rule(can_operate, "this change")
ADMIN = Rule(lambda u: u.is_admin, "this; admins only")


# Whoever holds the database URL (the CLI's local admin commands act as this user): an
# admin with id 0, which no stored user has.
LOCAL = auth.User(
    id=0,
    name="local",
    role=auth.Role.ADMIN,
    commands_allowed=True,
    worker_classes=None,
    disabled=False,
    created_at=datetime(1970, 1, 1, tzinfo=UTC),
    via="cli",
    address="local",
)


def require(user: auth.User, rule: Rule) -> auth.User:
    """``user``, if ``rule`` allows them; Forbidden otherwise."""
    if not rule.allowed(user):
        raise errors.Forbidden(f"{rights(user)} does not allow {rule.what}")
    return user


def rights(user: auth.User) -> str:
    """Whose rights a refusal speaks of: the user's role, or their key's scope."""
    if user.scope is not None:
        return f"this API key (scope {user.scope}: the rights of a {user.role})"
    return f"your role ({user.role})"


def refuse_read_only_key(user: auth.User) -> None:
    """A key scoped ``read`` changes nothing at all (not even its own user's keys)."""
    if user.scope == auth.Scope.READ:
        raise errors.Forbidden(
            "this API key has scope read: it may look, not change anything (use a key of "
            "scope submit, operate or admin)"
        )


def self_or_admin(user: auth.User, user_id: int) -> None:
    """A user sees and changes their own record and keys; admins everyone's."""
    if user.id != user_id and not user.is_admin:
        raise errors.Forbidden("only admins may see or change other users")


def owner_filter(user: auth.User) -> int | None:
    """The owner a job list is limited to for ``user``: None if they may see every job."""
    return None if user.can_see_job(None) else user.id


def visible_job(conn: sa.Connection, user: auth.User, job_id: int) -> jobs.Job:
    """The job, if ``user`` may see it; NotFound otherwise (others' jobs do not exist for
    a submitter, so ids do not leak)."""
    job = jobs.get(conn, job_id)
    if not user.can_see_job(job.user_id):
        raise errors.NotFound(f"job {job_id} does not exist")
    return job


def manageable_job(conn: sa.Connection, user: auth.User, job_id: int) -> jobs.Job:
    """The job, if ``user`` may kill, restart or delete it."""
    job = visible_job(conn, user, job_id)
    if not user.can_manage_job(job.user_id):
        raise errors.Forbidden(f"your role ({user.role}) does not allow changing job {job_id}")
    return job


ENV_MASK = "****"


def may_see_env(job: jobs.Job, viewer: auth.User) -> bool:
    """Env values are the owner's and admins' only: they often hold tokens."""
    return viewer.is_admin or (job.user_id is not None and job.user_id == viewer.id)


def shown_env(job: jobs.Job, viewer: auth.User) -> dict[str, str]:
    """The job's env as ``viewer`` may see it: every name, values masked if not theirs."""
    if may_see_env(job, viewer):
        return dict(job.env)
    return dict.fromkeys(job.env, ENV_MASK)


def shown_links(links: chains.Links, viewer: auth.User) -> chains.Links:
    """A job's parents and children that ``viewer`` may see (a deleted one shows as its
    id: nothing of it is left to hide)."""

    def seen(items: list[chains.Link]) -> list[chains.Link]:
        return [k for k in items if k.state is None or viewer.can_see_job(k.user_id)]

    return chains.Links(parents=seen(links.parents), children=seen(links.children))

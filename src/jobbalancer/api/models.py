"""Response bodies of the JSON API (docs/api.md); the requests are
:mod:`jobbalancer.service.inputs`.

Their docstrings and field descriptions are what ``/docs`` shows. Responses are built from
the core's frozen records with ``from_*`` constructors.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, PlainSerializer

from jobbalancer import (
    audit,
    auth,
    chains,
    classes,
    jobs,
    notify,
    registry,
    schedules,
    scripts,
    stats,
    vault,
)
from jobbalancer.service import access
from jobbalancer.service import schedules as schedule_service


def format_time(value: datetime) -> str:
    """UTC ISO-8601 with milliseconds and ``Z``: ``2026-11-28T10:00:00.000Z``."""
    utc = value.astimezone(UTC) if value.tzinfo else value
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


Time = Annotated[datetime, PlainSerializer(format_time, return_type=str)]


class Ref(BaseModel):
    """Another object, by id and name."""

    id: int
    name: str


class Dependency(BaseModel):
    """A parent or a child of a job (docs/api.md, "Dependencies")."""

    id: int
    on: str = Field(description="success | failure | any: the end of the parent wanted.")
    met: bool = Field(description="The parent ended as wanted.")
    state: str | None = Field(description="The other job's state; null: it was deleted.")

    @classmethod
    def from_links(cls, links: list[chains.Link]) -> list[Dependency]:
        return [cls(id=k.id, on=k.on, met=k.met, state=k.state) for k in links]


class Job(BaseModel):
    """A job and everything known about its run."""

    id: int
    state: jobs.State
    command: str | None
    script: Ref | None = Field(description="The stored script it runs (copied at submit).")
    params: list[str]
    interpreter: str | None
    watchdog: float | None
    worker_class: str
    need_realtime: bool
    priority: int
    retries: int
    workdir: str | None = Field(
        description="The directory on the worker it runs in; null: a private temporary one."
    )
    attempt: int = Field(description="1 for the first run; +1 for each automatic retry.")
    retry_of: int | None = Field(description="The job whose failure this attempt retries.")
    restarted_from: int | None = Field(description="The job this one was restarted from.")
    env: dict[str, str] = Field(
        description="Names and values; the values are `****` except to the job's owner and admins."
    )
    labels: dict[str, str]
    notify: list[dict[str, Any]] = Field(
        description="The job's own notification rules: `on` (states) and `target` (its id)."
    )
    user: str | None
    worker: Ref | None
    pid: int | None
    exit_code: int | None
    signal: int | None
    error: str | None
    kill_requested: bool = Field(description="A kill was asked for; the worker is stopping it.")
    output_bytes: int
    created_at: Time
    assigned_at: Time | None
    started_at: Time | None
    finished_at: Time | None
    parents: list[Dependency] | None = Field(
        None,
        description="The jobs it waits or waited for. Only in the answer about one job "
        "(GET /api/v1/jobs/{id}, POST /api/v1/jobs); null in lists and batches.",
    )
    children: list[Dependency] | None = Field(
        None, description="The jobs that wait or waited for it; as `parents`."
    )
    waiting_for: str | None = Field(
        None, description="A held job: what it waits for (`waits for job 41 to succeed`)."
    )
    schedule_id: int | None = Field(None, description="The schedule that fired it; null: none.")
    not_before: Time | None = Field(
        description="Not started before this time: a `delayed` job starts then (a "
        "submission's `not_before`/`delay`, or a retry's wait); null: at once."
    )
    retry_delay: float | None = Field(description="Seconds before the first retry; null: 0.")
    retry_backoff: float | None = Field(description="Factor of each next wait; null: 1.")
    retry_max_delay: float | None = Field(description="The longest wait; null: no cap.")
    retry_jitter: float | None = Field(description="Random ± fraction of each wait; null: 0.")
    retry_on: list[str | int] | None = Field(
        description='Ends retried: states and exit codes; null: ["failed", "lost"].'
    )
    secret_env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables set from secrets: names of both, never a value.",
    )
    secret_args: dict[str, str] = Field(
        default_factory=dict,
        description="Params (by index) replaced by a secret's value at the start: the names.",
    )
    # Placement (docs/api.md, "Placement").
    cpus: float | None = Field(None, description="CPUs it requested; null: none.")
    memory: int | None = Field(None, description="Memory it requested, bytes; null: none.")
    gpus: int | None = Field(None, description="GPUs it requested; null: none.")
    constraints: dict[str, str | bool] | None = Field(
        None, description="Worker labels it needs; null: none."
    )
    pending_reason: str | None = Field(
        None,
        description="A job that has not started: why it still waits (`all 3 workers of "
        "class default are full (12/12 slots)`, `waits for job 41 to succeed`); null once "
        "it runs.",
    )

    @classmethod
    def from_job(cls, job: jobs.Job, viewer: auth.User, links: chains.Links | None = None) -> Job:
        """The job as ``viewer`` may see it: env values masked unless theirs or an admin;
        with ``links``, its parents and children (those ``viewer`` may see)."""
        script = None
        if job.script_name is not None:
            script = Ref(id=job.script_id or 0, name=job.script_name)
        worker = None
        if job.worker_id is not None:
            worker = Ref(id=job.worker_id, name=job.worker_name or "")
        if links is not None:
            links = access.shown_links(links, viewer)
        return cls(
            **{n: getattr(job, n) for n in _JOB_PLAIN},
            script=script,
            params=list(job.params),
            env=access.shown_env(job, viewer),
            labels=dict(job.labels),
            notify=[dict(rule) for rule in job.notify],
            user=job.user_name,
            worker=worker,
            parents=None if links is None else Dependency.from_links(links.parents),
            children=None if links is None else Dependency.from_links(links.children),
            waiting_for=links.waiting_for() if links and job.state == jobs.State.HELD else None,
            secret_env=dict(job.secret_env),
            secret_args={str(i): name for i, name in job.secret_args.items()},
            constraints=dict(job.constraints) if job.constraints else None,
            pending_reason=pending_reason(job, links),
        )


def pending_reason(job: jobs.Job, links: chains.Links | None = None) -> str | None:
    """Why a job that has not started waits: the balancer's word for a waiting job, what
    a held one waits for."""
    if job.state == jobs.State.HELD:
        return links.waiting_for() if links else "waits for other jobs to end"
    if job.state == jobs.State.WAITING:
        return job.pending_reason or "waiting for the balancer's next pass"
    if job.state == jobs.State.DELAYED and job.not_before is not None:
        when = job.not_before.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        retry = f"attempt {job.attempt} of {job.retries + 1}: " if job.retry_of else ""
        return f"{retry}starts at {when}"
    return None


_JOB_LINKS = ("parents", "children", "waiting_for", "secret_env", "secret_args")
_JOB_PLACEMENT = ("constraints", "pending_reason")
_JOB_PLAIN = [
    n
    for n in Job.model_fields
    if n not in ("script", "params", "env", "labels", "notify", "user", "worker", *_JOB_LINKS)
    and n not in _JOB_PLACEMENT
]


class JobList(BaseModel):
    """One page of jobs, newest first."""

    items: list[Job]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class JobsCreated(BaseModel):
    jobs: list[Job]


# -- workers ------------------------------------------------------------------------------


class Memory(BaseModel):
    total: int | None = Field(description="Bytes.")
    available: int | None = Field(description="Bytes.")


class Resources(BaseModel):
    """Slots and resources: what a worker has, or what its jobs use."""

    slots: int
    cpus: float | None
    memory: int | None = Field(description="Bytes.")
    gpus: int | None


class Worker(BaseModel):
    """A worker process and what its last heartbeat said about its machine."""

    id: int
    name: str
    host: str
    state: str = Field(description="online | draining | offline | disabled")
    enabled: bool
    worker_class: str
    max_jobs: int = Field(description="Effective limit: its own, else its class's.")
    own_max_jobs: int | None = Field(description="Its own limit; null: the class's.")
    active_jobs: int
    load: float | None
    cpu_count: int | None
    memory: Memory | None
    version: str
    pid: int | None
    started_at: Time
    last_heartbeat_at: Time
    # Placement (docs/api.md, "Placement").
    capacity: Resources = Field(
        description="What it offers its jobs (detected or set with --cpus, --memory, --gpus); "
        "a null resource is not limited."
    )
    used: Resources = Field(description="What its assigned and running jobs requested.")
    labels: dict[str, str] = Field(description="Its labels (--label); a bare name has ''.")

    @classmethod
    def from_worker(cls, w: registry.Worker) -> Worker:
        memory = None
        if w.memory_total is not None or w.memory_available is not None:
            memory = Memory(total=w.memory_total, available=w.memory_available)
        return cls(
            **{n: getattr(w, n) for n in _WORKER_PLAIN},
            state=w.display_state,
            memory=memory,
            capacity=Resources(slots=w.max_jobs, cpus=w.cpus, memory=w.memory, gpus=w.gpus),
            used=Resources(
                slots=w.active_jobs, cpus=w.used_cpus, memory=w.used_memory, gpus=w.used_gpus
            ),
            labels=dict(w.labels),
        )


_WORKER_PLAIN = [
    n for n in Worker.model_fields if n not in ("state", "memory", "capacity", "used", "labels")
]


# -- worker classes -----------------------------------------------------------------------


class WorkerClass(BaseModel):
    id: int
    name: str
    max_jobs: int
    description: str
    requests: dict[str, Any] | None = Field(
        None, description="What its jobs request unless they say; null: nothing."
    )

    @classmethod
    def from_class(cls, c: classes.WorkerClass) -> WorkerClass:
        return cls(
            id=c.id, name=c.name, max_jobs=c.max_jobs, description=c.description,
            requests=dict(c.requests) if c.requests else None,
        )  # fmt: skip


# -- scripts ------------------------------------------------------------------------------


class Script(BaseModel):
    id: int
    name: str
    interpreter: str | None
    content: str
    description: str
    created_at: Time
    updated_at: Time
    parameters: list[dict[str, Any]] = Field(
        default_factory=list, description="The typed parameters it declares, in argv order."
    )
    requests: dict[str, Any] | None = Field(
        None, description="What its jobs request unless they say; null: nothing."
    )

    @classmethod
    def from_script(cls, s: scripts.Script) -> Script:
        special = ("parameters", "requests")
        fields = {n: getattr(s, n) for n in cls.model_fields if n not in special}
        return cls(
            **fields,
            parameters=[p.to_json() for p in s.parameters],
            requests=dict(s.requests) if s.requests else None,
        )


# -- users and keys -----------------------------------------------------------------------


class User(BaseModel):
    id: int
    name: str
    role: auth.Role
    commands_allowed: bool
    worker_classes: list[str] | None
    disabled: bool
    created_at: Time

    @classmethod
    def from_user(cls, u: auth.User) -> User:
        classes_ = None if u.worker_classes is None else list(u.worker_classes)
        return cls(
            id=u.id,
            name=u.name,
            role=u.role,
            commands_allowed=u.commands_allowed,
            worker_classes=classes_,
            disabled=u.disabled,
            created_at=u.created_at,
        )


class ApiKey(BaseModel):
    """An API key's record; the key itself is never shown again."""

    id: int
    name: str
    prefix: str
    created_at: Time
    last_used_at: Time | None = Field(
        description="Stamped at most once a minute per key and server."
    )
    scope: auth.Scope = Field(description="read, submit, operate or admin.")
    expires_at: Time | None = Field(description="When it stops working; null: never.")

    @classmethod
    def from_key(cls, k: auth.ApiKey) -> ApiKey:
        return cls(**{n: getattr(k, n) for n in cls.model_fields})


class ApiKeyCreated(BaseModel):
    """A new API key. ``key`` is shown this once: store it now."""

    id: int
    name: str
    key: str
    prefix: str
    created_at: Time
    scope: auth.Scope
    expires_at: Time | None


# -- audit log ----------------------------------------------------------------------------


class AuditEntry(BaseModel):
    """One change: when (the database's clock), who, how (``key jb_…``, ``web``, ``cli``),
    from where, what, on which object, and a short summary."""

    id: int
    at: Time
    actor_id: int | None = Field(description="null: the local command line.")
    actor_name: str
    via: str
    address: str
    action: str
    object_type: str
    object_id: int | None
    object_name: str | None
    count: int | None = Field(description="Jobs of a submission; null for other actions.")
    summary: str

    @classmethod
    def from_entry(cls, e: audit.Entry) -> AuditEntry:
        return cls(**{n: getattr(e, n) for n in cls.model_fields})


class AuditPage(BaseModel):
    """A page of the audit log, newest first."""

    items: list[AuditEntry]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


# -- statistics ---------------------------------------------------------------------------


class WorkerStats(BaseModel):
    id: int
    name: str
    state: str
    max_jobs: int
    active_jobs: int
    jobs: dict[str, int] = Field(description="Jobs it ran or runs, by state.")


class Slots(BaseModel):
    total: int
    used: int
    free: int


class MinuteCount(BaseModel):
    minute: Time
    count: int


class Stats(BaseModel):
    """Jobs per state, per worker, and finished per minute over the last hour."""

    jobs: dict[str, int]
    workers: list[WorkerStats]
    slots: Slots
    finished_per_minute: list[MinuteCount]

    @classmethod
    def from_summary(cls, s: stats.Summary) -> Stats:
        return cls(
            jobs=s.jobs,
            workers=[WorkerStats(**vars(w)) for w in s.workers],
            slots=Slots(total=s.slots.total, used=s.slots.used, free=s.slots.free),
            finished_per_minute=[MinuteCount(minute=m, count=n) for m, n in s.finished_per_minute],
        )


# -- legacy -------------------------------------------------------------------------------


class LegacyJob(BaseModel):
    """The body of the original Job Balancer's ``/addJob`` (ids and numbers may be strings)."""

    command: str | None = None
    scriptId: int | str | None = None  # the original's names
    params: list[str | int | float] | None = None
    watchdog: float | str | None = None
    workerClassId: int | str | None = Field(None, description="1 is the `default` class.")
    need_realtime: bool | int | str | None = None
    userName: str | None = Field(None, description="Accepted and ignored: the key says who.")
    apiKey: str | None = Field(None, description="Or the usual Authorization header.")


class LegacyResult(BaseModel):
    result: bool
    message: str
    jobId: int | None = None


# -- notifications ------------------------------------------------------------------------


class NotificationTarget(BaseModel):
    """Where notifications go. The secret is never shown, only whether one is set; a
    Slack URL only up to its host (its path is the secret)."""

    id: int
    name: str
    kind: str
    url: str | None = Field(description="Admins only (null to others).")
    recipients: list[str] = Field(description="Admins only (empty to others).")
    has_secret: bool
    delivered: int = Field(description="Notifications delivered to it.")
    failures: int = Field(description="Failed delivery attempts.")
    created_at: Time

    @classmethod
    def from_target(cls, target: notify.Target, viewer: auth.User) -> NotificationTarget:
        admin = viewer.is_admin
        return cls(
            id=target.id,
            name=target.name,
            kind=target.kind,
            url=target.shown_url if admin else None,
            recipients=list(target.recipients) if admin else [],
            has_secret=bool(target.secret),
            delivered=target.delivered,
            failures=target.failures,
            created_at=target.created_at,
        )


class NotificationRule(BaseModel):
    id: int
    on: list[str]
    target: Ref
    worker_class: Ref | None = Field(description="null: every job.")

    @classmethod
    def from_rule(cls, rule: notify.Rule) -> NotificationRule:
        wclass = None
        if rule.worker_class_id is not None:
            wclass = Ref(id=rule.worker_class_id, name=rule.worker_class or "")
        return cls(
            id=rule.id,
            on=list(rule.on),
            target=Ref(id=rule.target_id, name=rule.target),
            worker_class=wclass,
        )


class Notification(BaseModel):
    """One notification of one job's state to one target, and how its delivery went."""

    id: int
    job_id: int
    target: str | None = Field(description="null: the target was deleted.")
    event: str = Field(description="The job state it tells of (or `started`).")
    key: str = Field(description="The idempotency key sent with every try.")
    state: str = Field(description="pending, delivered, or failed (gave up after a day).")
    attempts: int
    next_at: Time = Field(description="When a pending one is tried next.")
    last_error: str | None
    created_at: Time
    delivered_at: Time | None

    @classmethod
    def from_notification(cls, n: notify.Notification) -> Notification:
        return cls(**{name: getattr(n, name) for name in cls.model_fields})


class TestResult(BaseModel):
    delivered: bool
    error: str | None = Field(description="Why it did not go through.")


# -- schedules ----------------------------------------------------------------------------


def format_local(value: datetime) -> str:
    """ISO-8601 with the zone's offset that day: ``2026-03-29T03:00:00+02:00``."""
    return value.isoformat(timespec="seconds")


LocalTime = Annotated[datetime, PlainSerializer(format_local, return_type=str)]


class NextRun(BaseModel):
    """A fire time in UTC and in the schedule's zone."""

    utc: Time
    local: LocalTime

    @classmethod
    def from_run(cls, run: schedule_service.NextRun) -> NextRun:
        return cls(utc=run.utc, local=run.local)


class Occurrence(BaseModel):
    """What became of one occurrence: ``fired`` (its job) or ``skipped`` (why)."""

    id: int
    fire_at: Time = Field(description="Its time (for a run-now: when it was asked for).")
    recorded_at: Time = Field(description="When it was decided.")
    outcome: schedules.Outcome
    job_id: int | None
    job_state: str | None = Field(description="The job's state now; null: none, or deleted.")
    reason: str | None = Field(description="Why it was skipped.", examples=["owner disabled"])
    reason_code: str | None = Field(
        description="overlap, queue_full, owner, refused or missed (the metrics' label)."
    )
    late_ms: int = Field(description="How long after its time it was decided.")
    manual: bool = Field(description="A run-now, not a fire time.")

    @classmethod
    def from_occurrence(cls, o: schedules.Occurrence) -> Occurrence:
        return cls(
            id=o.id, fire_at=o.fire_at, recorded_at=o.recorded_at, outcome=o.outcome,
            job_id=o.job_id, job_state=o.job_state, reason=o.reason,
            reason_code=o.reason_code, late_ms=o.late_ms, manual=o.manual,
        )  # fmt: skip


class Schedule(BaseModel):
    """A schedule. In a list, ``last`` is its latest occurrence; ``GET`` of one adds
    ``next_runs`` and ``occurrences`` (the latest, newest first)."""

    id: int
    name: str
    description: str
    job: dict[str, Any] = Field(description="The body of POST /api/v1/jobs it submits.")
    cron: str
    timezone: str
    enabled: bool
    overlap: schedules.Overlap
    catch_up: schedules.CatchUp
    catch_up_max: int
    start_at: Time | None
    end_at: Time | None
    next_fire_at: Time | None = Field(description="The next occurrence; null: paused or ended.")
    user: str = Field(description="Its owner: the jobs run as them, with their rights then.")
    user_id: int
    created_at: Time
    updated_at: Time
    last: Occurrence | None = None
    next_runs: list[NextRun] | None = None
    occurrences: list[Occurrence] | None = None

    @classmethod
    def from_schedule(
        cls, s: schedules.Schedule, viewer: auth.User, last: schedules.Occurrence | None = None
    ) -> Schedule:
        job = dict(s.job)
        if "env" in job and not (viewer.is_admin or viewer.id == s.user_id):
            job["env"] = dict.fromkeys(job["env"], access.ENV_MASK)
        return cls(
            id=s.id, name=s.name, description=s.description, job=job, cron=s.cron,
            timezone=s.timezone, enabled=s.enabled, overlap=s.overlap, catch_up=s.catch_up,
            catch_up_max=s.catch_up_max, start_at=s.start_at, end_at=s.end_at,
            next_fire_at=s.next_fire_at, user=s.user_name, user_id=s.user_id,
            created_at=s.created_at, updated_at=s.updated_at,
            last=None if last is None else Occurrence.from_occurrence(last),
        )  # fmt: skip

    @classmethod
    def from_detail(cls, d: schedule_service.Detail, viewer: auth.User) -> Schedule:
        found = cls.from_schedule(d.schedule, viewer, d.occurrences[0] if d.occurrences else None)
        found.next_runs = [NextRun.from_run(r) for r in d.next_runs]
        found.occurrences = [Occurrence.from_occurrence(o) for o in d.occurrences]
        return found


class SchedulePreview(BaseModel):
    """The next fire times of an expression."""

    next_runs: list[NextRun]


# -- secrets ------------------------------------------------------------------------------


class Secret(BaseModel):
    """A named secret. Its value is never shown, to anyone."""

    id: int
    name: str
    description: str
    worker_classes: list[str] | None = Field(description="Classes that may use it; null: any.")
    users: list[str] | None = Field(
        description="Users whose jobs may use it (admins too); null: anyone. Shown whole to "
        "admins and operators; others, who see only the secrets they may use, see their own "
        "name in it when it is limited."
    )
    created_at: Time
    created_by: str | None
    updated_at: Time
    updated_by: str | None

    @classmethod
    def from_secret(cls, s: vault.Secret, viewer: auth.User) -> Secret:
        sees_users = viewer.role in (auth.Role.ADMIN, auth.Role.OPERATOR)
        return cls(
            id=s.id, name=s.name, description=s.description,
            worker_classes=None if s.worker_classes is None else list(s.worker_classes),
            users=_secret_users(s, viewer, sees_users),
            created_at=s.created_at, created_by=s.created_by,
            updated_at=s.updated_at, updated_by=s.updated_by,
        )  # fmt: skip


def _secret_users(s: vault.Secret, viewer: auth.User, sees_all: bool) -> list[str] | None:
    """A secret's users as ``viewer`` may see them: all (admins, operators), else only
    themselves (a limited secret they may use), so a limit never reads as "anyone"."""
    if s.user_names is None:
        return None
    return list(s.user_names) if sees_all else [viewer.name]

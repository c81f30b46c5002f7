"""Turning submissions into jobs: resolve scripts and classes, check what the user may do,
submit and read the jobs back in one transaction.

Used by ``POST /api/v1/jobs``, its batch form, restarts, the legacy ``/addJob`` and the
web pages. The limits on one submitter live here too (docs/api.md, "Limits"): what a
scripts-only user may put in ``env``, the highest priority, waiting jobs at a time and
submit requests per second. Admins and operators are exempt (they can run anything).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from jobbalancer import (
    audit,
    auth,
    balancer,
    chains,
    classes,
    db,
    errors,
    jobs,
    notify,
    resources,
    scriptparams,
    scripts,
    settings,
)
from jobbalancer.db import schema
from jobbalancer.service import access, inputs
from jobbalancer.service import secrets as secret_checks

# A scripts-only user may set only names in a namespace of our own. An allow-list, not a
# list of dangerous names: BASH_ENV, ENV, SHELLOPTS+PS4, LD_PRELOAD, PYTHONSTARTUP,
# PERL5OPT, NODE_OPTIONS, OPENSSL_CONF, GCONV_PATH, … each run code of the caller's choice
# before the script's first line, and no list of them is ever complete (every interpreter
# and library adds its own). No shell, loader, interpreter or common library reads JOB_*.
SCRIPT_ENV_PREFIX = "JOB_"
_SCRIPT_ENV_NAME = re.compile(r"JOB_[A-Z0-9_]{1,96}")


class RateLimited(errors.JobBalancerError):
    """Too many requests: wait a moment and try again."""

    status = 429
    code = "rate_limited"


class WaitingLimit(errors.Conflict):
    """Too many waiting jobs: wait for some to start, or kill some."""

    code = "waiting_limit"


def unrestricted(user: auth.User) -> bool:
    """Admins and operators: no submitter limits (they may run any command anyway)."""
    return user.role in (auth.Role.ADMIN, auth.Role.OPERATOR)


def full_env(user: auth.User) -> bool:
    """Whether ``user`` may set any environment variable (they can run any command)."""
    return unrestricted(user) or user.commands_allowed


def check_env(user: auth.User, env: Mapping[str, str], where: str = "", name: str = "env") -> None:
    """A scripts-only user's env: only ``JOB_`` + upper-case letters, digits and ``_``."""
    if full_env(user):
        return
    for key in env:
        if not _SCRIPT_ENV_NAME.fullmatch(key):
            raise errors.InvalidInput(
                f"{key!r} is not allowed: you may run stored scripts only, so the environment "
                f"you set is limited to names {SCRIPT_ENV_PREFIX} followed by upper-case "
                "letters, digits or '_' (other names can change how the shell, the "
                "interpreter or the loader behave)",
                field=f"{where}{name}",
            )


def check_workdir(user: auth.User, workdir: str | None, where: str = "") -> None:
    """A scripts-only user runs stored scripts where their author expects: no workdir."""
    if workdir is not None and not full_env(user):
        raise errors.Forbidden(
            "you may run stored scripts only, so not in a directory of your choice "
            "(a script run elsewhere than its author expects may do what it should not)",
            field=f"{where}workdir",
        )


def check_priority(user: auth.User, priority: int, cap: int, where: str = "") -> None:
    if not unrestricted(user) and priority > cap:
        raise errors.InvalidInput(
            f"at most {cap} for your role ({user.role}); ask an operator for more",
            field=f"{where}priority",
        )


class RateLimiter:
    """Submit requests per user as token buckets, in this server process only (with N
    servers a user may submit up to N times the rate: the waiting cap, kept in the
    database, bounds what that can pile up)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # user id: tokens, when
        self._lock = threading.Lock()

    def take(self, user_id: int, rate: float, burst: int) -> None:
        """Take one token of ``user_id``'s bucket; RateLimited if it is empty."""
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(user_id, (float(burst), now))
            tokens = min(float(burst), tokens + (now - then) * rate)
            if tokens < 1.0:
                self._buckets[user_id] = (tokens, now)
                wait = (1.0 - tokens) / rate
                raise RateLimited(
                    f"more than {rate:g} submissions a second (burst {burst}); "
                    f"try again in {wait:.1f} s"
                )
            if len(self._buckets) > 100_000:  # forget idle users rather than grow unbounded
                self._buckets.clear()
            self._buckets[user_id] = (tokens - 1.0, now)


def rate_limiter(state: Any) -> RateLimiter:
    """The app's limiter (``app.state``), made on first use; tests may set their own."""
    limiter: RateLimiter | None = getattr(state, "submit_limiter", None)
    if limiter is None:
        limiter = state.submit_limiter = RateLimiter()
    return limiter


def _limits(
    conn: sa.Connection, user: auth.User, limiter: RateLimiter | None
) -> settings.Tunables | None:
    """The settings that limit ``user``, after taking a token of their submit rate (none
    without a limiter: a schedule's firing is not a request); None for admins and
    operators (no limits, and no query: the benchmarks submit as admin)."""
    if unrestricted(user):
        return None
    limits = settings.load_tunables(conn)
    if limiter is not None:
        limiter.take(user.id, limits.submit_rate, limits.submit_burst)
    return limits


# What counts as waiting towards a submitter's cap: held and delayed jobs wait too.
_WAITING_STATES = [s.value for s in (jobs.State.WAITING, jobs.State.HELD, jobs.State.DELAYED)]


def _check_waiting(conn: sa.Connection, user: auth.User, adding: int, cap: int) -> None:
    """WaitingLimit if ``adding`` more jobs would leave ``user`` over ``cap`` waiting jobs
    (held and delayed jobs count: they wait too).

    Counted in the submit's transaction; two batches submitted at the same instant on
    PostgreSQL or MariaDB may both pass, so the cap can be overshot by one batch."""
    J = db.schema.jobs
    # "user_id + 0" keeps the planner off the (user_id, id) index, which walks all of a
    # user's history (68 ms a submit for 200k finished jobs on SQLite), and on the state
    # index, which walks the waiting jobs only (0.8 ms with 5k waiting, 15 ms with 100k).
    # An index on (user_id, state) would make both cheap; that is a schema change.
    mine = (
        sa.select(J.c.id)
        .where(
            J.c.user_id + 0 == user.id,
            J.c.state.in_(_WAITING_STATES),
        )
        .limit(cap + 1)
        .subquery()
    )
    waiting = conn.execute(sa.select(sa.func.count()).select_from(mine)).scalar_one()
    if waiting + adding > cap:
        raise WaitingLimit(
            f"you have {waiting} waiting jobs; at most {cap} may wait at a time, so these "
            f"{adding} were not submitted (wait for some to start, or kill some)"
        )


class _Lookups:
    """Classes and scripts a batch names, each looked up once (a batch of 1000 jobs of
    one class reads the class once, not 1000 times)."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self._classes: dict[str | int, classes.WorkerClass] = {}
        self._scripts: dict[str | int, scripts.Script] = {}
        self.secrets = secret_checks.Checker(conn)
        self._capacities: dict[int, list[resources.Capacity]] = {}

    def wclass(self, ref: str | int, field: str) -> classes.WorkerClass:
        if ref not in self._classes:
            self._classes[ref] = classes.find(self.conn, ref, field=field)
        return self._classes[ref]

    def capacities(self, class_id: int) -> list[resources.Capacity]:
        """What each worker of the class (online or known) has, to refuse what none has."""
        if class_id not in self._capacities:
            w = schema.workers
            rows = self.conn.execute(
                sa.select(w.c.cpus, w.c.memory, w.c.gpus).where(w.c.worker_class_id == class_id)
            )
            self._capacities[class_id] = [
                resources.Capacity(r.cpus, r.memory, r.gpus) for r in rows
            ]
        return self._capacities[class_id]

    def script(self, ref: str | int, field: str) -> scripts.Script:
        if ref not in self._scripts:
            self._scripts[ref] = scripts.find(self.conn, ref, field=field)
        return self._scripts[ref]


def to_spec(
    conn: sa.Connection,
    user: auth.User,
    job: inputs.JobSubmit,
    where: str = "",
    lookups: _Lookups | None = None,
) -> jobs.Spec:
    """The job's spec; errors name the field as ``where`` + its name (``jobs.3.script``)."""
    if (job.command is None) == (job.script is None):
        raise errors.InvalidInput(
            "give exactly one of 'command' or 'script'", field=f"{where}command"
        )
    lookups = lookups or _Lookups(conn)
    wclass = _class_for(user, lookups, job.worker_class, f"{where}worker_class")
    check_env(user, job.env, where)
    check_workdir(user, job.workdir, where)
    base = jobs.Spec(
        worker_class_id=wclass.id,
        params=tuple(job.params) if isinstance(job.params, list) else (),
        env=dict(job.env),
        labels=dict(job.labels),
        watchdog=job.watchdog or None,
        need_realtime=job.need_realtime,
        priority=job.priority,
        retries=job.retries,
        workdir=job.workdir,
        notify=notify.job_rules(conn, [(r.on, r.target) for r in job.notify], where),
        cpus=job.cpus or None,
        memory=job.memory or None,
        gpus=job.gpus or None,
        constraints=job.constraints or None,
        **_timing(job, where),
    )
    base = _with_defaults(base, job, wclass.requests)
    base = _with_secret_env(user, job, wclass, where, lookups, base)
    if job.command is not None:
        _check_fits(lookups, wclass, base.request, where)
        if not user.commands_allowed:
            raise errors.Forbidden(
                "you may run stored scripts only, not commands", field=f"{where}command"
            )
        if not job.command.strip():
            raise errors.InvalidInput(f"{where}command: must not be empty", field=f"{where}command")
        if isinstance(job.params, dict):
            raise errors.InvalidInput(
                f"{where}params: a command takes its params as a list ($1, $2, …); by name "
                "only for a script that declares its parameters",
                field=f"{where}params",
            )
        return dataclasses.replace(base, command=job.command)
    assert job.script is not None
    script = lookups.script(job.script, f"{where}script")
    # A script's default requests come before its class's.
    base = _with_defaults(base, job, {**(wclass.requests or {}), **(script.requests or {})})
    _check_fits(lookups, wclass, base.request, where)
    argv, secret_args = script_argv(script, job.params, where)
    spec = dataclasses.replace(
        base,
        script_id=script.id,
        script_name=script.name,
        interpreter=script.interpreter,
        script_content=script.content,
        params=tuple(argv),
        secret_args=secret_args,
    )
    # Typed `secret` parameters, each named as the other params errors name it.
    check_secret_args(user, spec, wclass, where, lookups, _secret_arg_fields(script, job, where))
    return spec


def _secret_arg_fields(
    script: scripts.Script, job: inputs.JobSubmit, where: str
) -> dict[int, tuple[str, str]]:
    """The field and label of each ``secret_args`` index, for messages: ``params.token``
    when given by name, ``params.1`` (label ``params.1 (token)``) by position, as
    ``scriptparams.resolve_params`` names them."""
    if isinstance(job.params, dict):
        return {i: (f"{where}params.{p.name}",) * 2 for i, p in enumerate(script.parameters)}
    return {
        i: (f"{where}params.{i}", f"{where}params.{i} ({p.name})")
        for i, p in enumerate(script.parameters)
    }


def script_argv(
    script: scripts.Script, given: list[str] | dict[str, Any], where: str = ""
) -> tuple[list[str], dict[int, str]]:
    """The script's argv and secret_args ({argv index: secret name}) for ``given``:
    checked against its declaration, in declared order, defaults filled in; a script
    that declares nothing takes a list as it is (docs/api.md, "Typed parameters")."""
    if script.parameters:
        return scriptparams.resolve_params(script.parameters, given, where)
    if isinstance(given, dict):
        raise errors.InvalidInput(
            f"{where}params: script {script.name!r} declares no parameters, so it takes "
            "them as a list, not by name",
            field=f"{where}params",
        )
    return list(given), {}


def _timing(job: inputs.JobSubmit, where: str) -> dict[str, Any]:
    """The spec's start time and retry policy (docs/api.md, "Starting later, retrying
    later"): ``not_before`` or ``delay``, not both, and neither with ``need_realtime``."""
    if job.not_before is not None and job.delay is not None:
        raise errors.InvalidInput("give 'not_before' or 'delay', not both", field=f"{where}delay")
    later = "not_before" if job.not_before is not None else "delay"
    if job.need_realtime and (job.not_before is not None or job.delay is not None):
        raise errors.InvalidInput(
            f"a job with '{later}' starts later, so it cannot need a slot at once "
            "(need_realtime): give one or the other",
            field=f"{where}{later}",
        )
    retry = jobs.RetryPolicy(
        delay=job.retry_delay or 0.0,
        backoff=job.retry_backoff or 1.0,
        max_delay=job.retry_max_delay,
        jitter=job.retry_jitter or 0.0,
        on=tuple(job.retry_on or ()),
    )
    return {"not_before": job.not_before, "delay": job.delay or None, "retry": retry}


def _with_secret_env(
    user: auth.User,
    job: inputs.JobSubmit,
    wclass: classes.WorkerClass,
    where: str,
    lookups: _Lookups,
    base: jobs.Spec,
) -> jobs.Spec:
    """``base`` with the job's ``secret_env``, checked: names as for ``env``, none set
    twice, each secret usable by ``user`` in ``wclass`` (docs/api.md, "Secrets")."""
    if not job.secret_env:
        return base
    check_env(user, job.secret_env, where, "secret_env")
    secret_checks.check_env_names(job.env, job.secret_env, where)
    lookups.secrets.check(user, wclass, secret_checks.fields_of(job.secret_env, {}, where))
    return dataclasses.replace(base, secret_env=dict(job.secret_env))


def check_secret_args(
    user: auth.User,
    spec: jobs.Spec,
    wclass: classes.WorkerClass,
    where: str,
    lookups: _Lookups,
    fields: Mapping[int, tuple[str, str]] | None = None,
) -> None:
    """A spec's ``secret_args`` (typed ``secret`` parameters): each usable as above, an
    error naming the (field, label) ``fields`` gives its index (else ``params.<index>``)."""
    if not spec.secret_args:
        return
    if not fields:
        lookups.secrets.check(user, wclass, secret_checks.fields_of({}, spec.secret_args, where))
        return
    named = {fields[i][0]: name for i, name in spec.secret_args.items()}
    labels = {fields[i][0]: fields[i][1] for i in spec.secret_args}
    lookups.secrets.check(user, wclass, named, labels)


def _with_defaults(
    spec: jobs.Spec, job: inputs.JobSubmit, defaults: Mapping[str, Any] | None
) -> jobs.Spec:
    """The spec with the default requests (a class's, a script's) for what the job does
    not ask itself (a field it leaves out or null)."""
    if not defaults:
        return spec
    given = {
        "cpus": job.cpus,
        "memory": job.memory,
        "gpus": job.gpus,
        "constraints": job.constraints,
    }
    taken = {k: v for k, v in defaults.items() if k in given and given[k] is None and v}
    return dataclasses.replace(spec, **taken) if taken else spec


def _check_fits(
    lookups: _Lookups, wclass: classes.WorkerClass, request: resources.Request, where: str
) -> None:
    """InvalidInput when no worker of the class, online or known, could ever run the
    request; while some could, the job waits for room."""
    if not (request.cpus or request.memory or request.gpus):
        return
    why = resources.too_big(request, lookups.capacities(wclass.id))
    if why is not None:
        field = next(n for n in ("memory", "cpus", "gpus") if getattr(request, n))
        for name in ("cpus", "memory", "gpus"):
            if name in why.split(";")[0]:
                field = name
        raise errors.InvalidInput(
            f"{where}{field}: {why} in class {wclass.name}", field=f"{where}{field}"
        )


def _class_for(
    user: auth.User, lookups: _Lookups, ref: str | int, field: str
) -> classes.WorkerClass:
    wclass = lookups.wclass(ref, field)
    if not user.may_use_class(wclass.name):
        raise errors.Forbidden(f"you may not submit to worker class {wclass.name!r}", field=field)
    return wclass


def submit(
    engine: sa.Engine | sa.Connection,
    user: auth.User,
    batch: Sequence[inputs.JobSubmit],
    *,
    prefix: bool,
    limiter: RateLimiter | None,
    schedule_id: int | None = None,
    schedule_ids: Sequence[int] | None = None,
) -> list[jobs.Job]:
    """Check the user's limits and every job, then create and assign them all in one
    transaction: all are submitted, or none.

    ``prefix`` names fields ``jobs.N.…`` as in a batch body. Returns the committed jobs.
    A schedule's firing passes its own transaction (a connection: the occurrence's row
    commits with the jobs), no limiter, and ``schedule_id``, which the jobs carry (or
    ``schedule_ids``, one a job: one owner's jobs of several schedules due at once). Every
    check comes before the first write: a refused batch has written nothing.
    """
    access.require(user, access.SUBMIT)
    with _transaction(engine) as conn:
        limits = _limits(conn, user, limiter)
        lookups = _Lookups(conn)
        specs = []
        for i, job in enumerate(batch):
            where = f"jobs.{i}." if prefix else ""
            if limits is not None:
                check_priority(user, job.priority, limits.max_submitter_priority, where)
            specs.append(to_spec(conn, user, job, where, lookups))
        if schedule_id is not None:
            specs = [dataclasses.replace(s, schedule_id=schedule_id) for s in specs]
        if schedule_ids is not None:
            specs = [
                dataclasses.replace(s, schedule_id=i)
                for s, i in zip(specs, schedule_ids, strict=True)
            ]
        afters = _afters(conn, user, batch, prefix=prefix)
        specs = [
            dataclasses.replace(s, held=True) if a else s
            for s, a in zip(specs, afters, strict=True)
        ]
        if limits is not None:
            _check_waiting(conn, user, len(specs), limits.max_waiting_per_user)
        assigned: dict[int, jobs.Job] = {}
        ids = balancer.submit(conn, specs, user.id, user.name, assigned=assigned)
        if any(afters):
            _chain(conn, ids, specs, afters)  # on held jobs: none of them is in assigned
        if schedule_id is None:  # a schedule's firing: its history (or schedule.run) says so
            _record_submit(conn, user, ids, specs)
        if all(i in assigned for i in ids):  # as the assignment returned them: nothing since
            return [assigned[i] for i in ids]
        # Read back in the same transaction: what it commits, without another round.
        return jobs.get_many(conn, ids)


def what(job: jobs.Job | jobs.Spec) -> str:
    """A job's name in the audit log: its script's name, or its command, shortened."""
    if job.script_name is not None:
        return f"script {job.script_name}"
    command = " ".join((job.command or "").split())
    return command if len(command) <= 60 else command[:59] + "…"


def _record_submit(
    conn: sa.Connection, user: auth.User, ids: Sequence[int], specs: Sequence[jobs.Spec]
) -> None:
    """One entry for the whole submission (a batch too), with its count."""
    if len(ids) == 1:
        audit.record(conn, user, "job.submit", "job", ids[0], what(specs[0]), count=1)
        return
    names = sorted({what(s) for s in specs})
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    audit.record(conn, user, "job.submit", "job", ids[0], f"{len(ids)} jobs",
                 f"jobs {ids[0]} to {ids[-1]}: {shown}", count=len(ids))  # fmt: skip


def _transaction(
    engine: sa.Engine | sa.Connection,
) -> contextlib.AbstractContextManager[sa.Connection]:
    """A write transaction of its own, or the caller's (a connection in one)."""
    if isinstance(engine, sa.Connection):
        return contextlib.nullcontext(engine)
    return db.write(engine)


def _afters(
    conn: sa.Connection, user: auth.User, batch: Sequence[inputs.JobSubmit], *, prefix: bool
) -> list[list[tuple[int | None, int | None, str]]]:
    """Each job's parents as (job id, batch index, on), checked: a parent the user may not
    see does not exist (404), a ref names an earlier job of the batch, nothing twice, no
    ``need_realtime``. Their states are read again, under the balancer's lock, when the
    jobs get them (chains.add)."""
    found: list[list[tuple[int | None, int | None, str]]] = []
    named: list[tuple[int, str]] = []
    for i, job in enumerate(batch):
        where = f"jobs.{i}." if prefix else ""
        if job.after and job.need_realtime:
            raise errors.InvalidInput(
                "a job with 'after' waits for other jobs, so it cannot need a slot at once "
                "(need_realtime)",
                field=f"{where}after",
            )
        seen: set[tuple[str, int]] = set()
        mine: list[tuple[int | None, int | None, str]] = []
        for k, a in enumerate(job.after):
            field = f"{where}after.{k}"
            key = ("ref", a.ref) if a.ref is not None else ("job", a.job or 0)
            if key in seen:
                raise errors.InvalidInput(f"{key[0]} {key[1]} is named twice", field=field)
            seen.add(key)
            if a.ref is not None:
                _check_ref(a.ref, i, prefix=prefix, field=f"{field}.ref")
            else:
                named.append((a.job or 0, f"{field}.job"))
            mine.append((a.job, a.ref, a.on))
        found.append(mine)
    parents = chains.states(conn, [job_id for job_id, _ in named])
    for job_id, field in named:
        if job_id not in parents or not user.can_see_job(parents[job_id][1]):
            raise errors.NotFound(f"job {job_id} does not exist", field=field)
    return found


def _check_ref(ref: int, index: int, *, prefix: bool, field: str) -> None:
    if not prefix:
        raise errors.InvalidInput(
            "'ref' names a job of the same batch: use it in POST /api/v1/jobs/batch, or "
            "give the parent's id as 'job'",
            field=field,
        )
    if ref >= index:
        raise errors.InvalidInput(
            f"must be the index of an earlier job of the batch (0 to {index - 1})"
            if index
            else "the first job of a batch has no earlier job to wait for",
            field=field,
        )


def _chain(
    conn: sa.Connection,
    ids: Sequence[int],
    specs: Sequence[jobs.Spec],
    afters: Sequence[Sequence[tuple[int | None, int | None, str]]],
) -> None:
    """Give each new held job its parents, in batch order (a ref names an earlier job,
    decided by then), then assign those released at once."""
    for job_id, after in zip(ids, afters, strict=True):
        if after:
            parents = [
                chains.After(job if job is not None else ids[ref or 0], on)
                for job, ref, on in after
            ]
            jobs.add_parents(conn, job_id, parents)
    balancer.assign_waiting(
        conn, class_ids={s.worker_class_id for s in specs if s.held}, locked=True
    )


def restart(
    engine: sa.Engine, user: auth.User, job_id: int, job: jobs.Job, *, limiter: RateLimiter
) -> jobs.Job:
    """A new job with the spec of ``job``, started at once if a slot is free.

    The restarting user's current limits apply, as to a submission. A need_realtime job
    that finds no free slot ends ``occupied``, as it would on submit. The new job is the
    old one's owner's; its env is copied in the database, so an operator's restart of
    another's job runs with the real values without showing them to the operator.
    """
    with db.write(engine) as conn:
        limits = _limits(conn, user, limiter)
        check_may_rerun(conn, user, job)
        if limits is not None:
            check_priority(user, job.priority, limits.max_submitter_priority)
            _check_waiting(conn, user, 1, limits.max_waiting_per_user)
        # The re-run stays the owner's: its env values are theirs, and an operator who
        # restarts it must not become their owner (and see them) by doing so.
        new_id = jobs.restart(conn, job_id, job.user_id, job.user_name)
        balancer.assign_waiting(conn, class_ids=[job.worker_class_id])
        if job.need_realtime:
            jobs.occupy(conn, new_id)  # a no-op unless it is still waiting
        audit.record(conn, user, "job.restart", "job", job_id, what(job),
                     f"as job {new_id}; owner {job.user_name}")  # fmt: skip
    with db.read(engine) as conn:
        return jobs.get(conn, new_id)


def check_may_rerun(conn: sa.Connection, user: auth.User, job: jobs.Job) -> None:
    """What a submission of the same job would check, plus: a scripts-only user may run
    only the scripts that exist now, not the copy kept in a job of a deleted one."""
    if not user.can_submit:
        raise errors.Forbidden(f"your role ({user.role}) does not allow submitting jobs")
    if job.command is not None and not user.commands_allowed:
        raise errors.Forbidden("you may run stored scripts only, not commands")
    if not user.may_use_class(job.worker_class):
        raise errors.Forbidden(f"you may not submit to worker class {job.worker_class!r}")
    check_env(user, job.env)
    check_env(user, job.secret_env, name="secret_env")
    secret_checks.check_rerun(conn, job)
    check_workdir(user, job.workdir)
    if not full_env(user) and job.script_id is not None and not _script_exists(conn, job):
        raise errors.Conflict(
            f"job {job.id} ran script {job.script_name!r}, which was deleted; you may run "
            "stored scripts only, so it cannot be restarted (an operator can)"
        )


def _script_exists(conn: sa.Connection, job: jobs.Job) -> bool:
    assert job.script_id is not None
    try:
        scripts.get(conn, job.script_id)
    except errors.NotFound:
        return False
    return True

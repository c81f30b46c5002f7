"""``/api/v1/jobs``: submit, list, read, log, kill, restart, delete."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from jobbalancer import auth, chains, db, errors, jobs, logs, settings
from jobbalancer.api import models, sse
from jobbalancer.api.deps import (
    CurrentUser,
    EngineDep,
    Submitter,
    key_from_headers,
)
from jobbalancer.refs import MAX_ID
from jobbalancer.service import access, inputs, job_actions, listing, submission

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="The job's id.")]
Offset = Annotated[int, Query(ge=0, le=2**62, description="Byte offset in the chosen view.")]
View = Annotated[logs.View, Query(description="stdout, stderr, or all (both, as written).")]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "`need_realtime` and no free slot (`occupied`), or too many "
        "waiting jobs (`waiting_limit`)."
    },
    429: {"description": "More submissions a second than the `submit_rate` setting allows."},
}


@router.post("", status_code=201, responses=_RESPONSES, response_model=models.Job)
async def submit_job(
    request: Request, spec: inputs.JobSubmit, user: Submitter, engine: EngineDep
) -> Response:
    """Submit one job; it is assigned at once if a worker of its class has a free slot."""
    # The whole call in one thread hop (a sync route costs three: the route, its response
    # model's validation, its serialisation), the answer serialised once.
    body = await run_in_threadpool(_submit_one, engine, user, spec, limiter(request))
    return Response(body, status_code=201, media_type="application/json")


def _submit_one(
    engine: sa.Engine, user: auth.User, spec: inputs.JobSubmit, limiter: submission.RateLimiter
) -> bytes:
    [job] = submission.submit(engine, user, [spec], prefix=False, limiter=limiter)
    if job.state == jobs.State.OCCUPIED:
        raise _occupied(job, user)
    links = chains.Links(parents=[], children=[])  # a new job has no children yet
    if spec.after:
        job, links = job_actions.get_with_links(engine, user, job.id)
    return models.Job.from_job(job, user, links).model_dump_json().encode()


@router.post("/batch", status_code=201, responses=_RESPONSES)
def submit_batch(
    request: Request, batch: inputs.JobBatch, user: Submitter, engine: EngineDep
) -> models.JobsCreated:
    """Submit up to 1000 jobs: all are accepted or none. need_realtime jobs that found no
    slot are in the answer with state ``occupied``."""
    created = submission.submit(engine, user, batch.jobs, prefix=True, limiter=limiter(request))
    return models.JobsCreated(jobs=[models.Job.from_job(j, user) for j in created])


@router.get("")
def list_jobs(
    user: CurrentUser,
    engine: EngineDep,
    state: Annotated[inputs.QueryText, Query(description="Comma list: running,waiting")] = None,
    worker: Annotated[inputs.QueryText, Query(max_length=200, description="Name or id.")] = None,
    worker_class: Annotated[inputs.QueryText, Query(max_length=200)] = None,
    user_: Annotated[inputs.QueryText, Query(alias="user", max_length=200)] = None,
    q: Annotated[
        inputs.QueryText, Query(max_length=1000, description="In the command or script name.")
    ] = None,
    label: Annotated[
        list[inputs.Text] | None, Query(description="NAME=VALUE; repeat to require several.")
    ] = None,
    id_: Annotated[
        inputs.QueryText,
        Query(alias="id", max_length=10_000, description="Comma list of job ids (≤ 500)."),
    ] = None,
    retry_of: Annotated[
        inputs.QueryText,
        Query(max_length=10_000, description="The retries of these jobs (comma list, ≤ 500)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[inputs.QueryText, Query(max_length=100)] = None,
    schedule_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="The jobs this schedule fired.")
    ] = None,
) -> models.JobList:
    """Jobs, newest first; a submitter sees only their own."""
    filters = listing.Filters(
        states=listing.parse_states(state),
        worker=worker,
        worker_class=worker_class,
        user=user_,
        q=q,
        labels=listing.parse_labels(label or []),
        ids=listing.parse_ids(id_, "id"),
        retry_of=listing.parse_ids(retry_of, "retry_of"),
        schedule_id=schedule_id,
    )
    found, next_cursor = job_actions.list_page(engine, user, filters, limit, cursor)
    return models.JobList(
        items=[models.Job.from_job(j, user) for j in found], next_cursor=next_cursor
    )


@router.get("/{job_id}")
def get_job(job_id: JobId, user: CurrentUser, engine: EngineDep) -> models.Job:
    """One job, with its parents and children and, if held, what it waits for."""
    job, links = job_actions.get_with_links(engine, user, job_id)
    return models.Job.from_job(job, user, links)


@router.get(
    "/{job_id}/log",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "The output, UTF-8."}},
)
def get_log(
    job_id: JobId,
    user: CurrentUser,
    engine: EngineDep,
    stream: View = "all",
    offset: Offset = 0,
    limit: Annotated[int | None, Query(ge=1, le=logs.DEFAULT_LIMIT_BYTES)] = None,
) -> Response:
    """The output from byte ``offset`` on. ``X-Log-Offset`` is the offset to ask for next,
    ``X-Job-State`` the job's state (poll until it is final and the offset stops moving)."""
    limit_bytes = limit or logs.DEFAULT_LIMIT_BYTES
    job, data = job_actions.read_log(engine, user, job_id, stream, offset, limit_bytes)
    if not job.finished or len(data) == limit_bytes:
        # More may follow: keep a character cut at the end for the next read.
        data = logs.complete_utf8(data)
    return Response(
        data.decode("utf-8", errors="replace"),
        media_type="text/plain; charset=utf-8",
        headers={"X-Log-Offset": str(offset + len(data)), "X-Job-State": job.state.value},
    )


@router.get(
    "/{job_id}/log/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        429: {"description": "The caller has `max_streams_per_user` streams open already."},
    },
)
def stream_log(
    request: Request,
    job_id: JobId,
    user: CurrentUser,
    engine: EngineDep,
    stream: View = "all",
    offset: Offset = 0,
    last_event_id: Annotated[int | None, Header(ge=0, le=2**62)] = None,
) -> StreamingResponse:
    """Server-sent events: ``output`` ({"stream", "data"}) as it is written, then one
    ``end`` with the final job. A reconnect resumes after ``Last-Event-ID``. Access is
    checked again every few seconds; at most ``max_streams_per_user`` open (429)."""
    with db.read(engine) as conn:
        access.visible_job(conn, user, job_id)
        cap = settings.load_tunables(conn).max_streams_per_user
    release = sse.stream_slots(request.app.state).acquire(user.id, cap)
    watch = sse.Watch(
        engine,
        job_id,
        stream,
        user,
        _recheck(request, engine, job_id),
        getattr(request.app.state, "sse_recheck_seconds", sse.RECHECK_SECONDS),
    )
    start = last_event_id if last_event_id is not None else offset
    return StreamingResponse(
        sse.job_events(request, watch, start, release),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(release),  # also if the stream never started
    )


def _recheck(request: Request, engine: sa.Engine, job_id: int) -> Callable[[], auth.User]:
    """Who the stream's caller is now, by the same key or session cookie; Unauthorized
    or NotFound once they may no longer read the job."""
    key = key_from_headers(request)
    token = request.cookies.get(auth.SESSION_COOKIE, "") if key is None else None

    def recheck() -> auth.User:
        with db.read(engine) as conn:
            if token is not None:
                session = auth.find_session(conn, token)
                if session is None:
                    raise errors.Unauthorized("the web session ended (signed out or expired)")
                user = session.user
            else:
                found = auth.authenticate_key(conn, key or "")
                if found is None:
                    raise errors.Unauthorized("the API key was revoked, or its user disabled")
                user = found
            access.visible_job(conn, user, job_id)
        return user

    return recheck


def limiter(request: Request) -> submission.RateLimiter:
    return submission.rate_limiter(request.app.state)


@router.post("/{job_id}/kill", status_code=202)
def kill_job(job_id: JobId, user: CurrentUser, engine: EngineDep) -> models.Job:
    """Kill: a waiting or assigned job at once, a running one when its worker stopped it."""
    return models.Job.from_job(job_actions.kill(engine, user, job_id), user)


@router.post("/{job_id}/restart", status_code=201, responses=_RESPONSES)
def restart_job(
    request: Request, job_id: JobId, user: CurrentUser, engine: EngineDep
) -> models.Job:
    """A new job with the same spec, ``restarted_from`` this one."""
    new = job_actions.restart(engine, user, job_id, limiter=limiter(request))
    if new.state == jobs.State.OCCUPIED:
        raise _occupied(new, user)
    return models.Job.from_job(new, user)


@router.delete("/{job_id}", status_code=204)
def delete_job(job_id: JobId, user: CurrentUser, engine: EngineDep) -> Response:
    """Delete a job and its output; an assigned or running one must be killed first."""
    job_actions.delete(engine, user, job_id)
    return Response(status_code=204)


def _occupied(job: jobs.Job, viewer: auth.User) -> errors.Occupied:
    """The 409 for a need_realtime job that found no free slot; it carries the job."""
    return errors.Occupied(
        models.Job.from_job(job, viewer).model_dump(mode="json"),
        f"no worker of class {job.worker_class!r} has a free slot; job {job.id} was not run",
    )

"""``/jobs``: the job list (filters, cursor pages, self-refreshing table, kill/delete of a
selection), the submit form, and ``/jobs/{id}``: a job with its live log and actions.

Reads use the service's listing; every change goes through the service layer, as the
API's do (jobbalancer.service: submission, job_actions), never to the tables.
"""

from __future__ import annotations

import codecs
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import pydantic
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from jobbalancer import (
    auth,
    balancer,
    chains,
    classes,
    db,
    errors,
    jobs,
    logs,
    notify,
    refs,
    resources,
    scripts,
)
from jobbalancer.refs import MAX_ID
from jobbalancer.service import access, inputs, job_actions, listing, submission
from jobbalancer.service import schedules as schedule_service
from jobbalancer.web import deps, pages

if TYPE_CHECKING:
    from jobbalancer.schedules import Schedule

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
LOG_PAGE_BYTES = 4 * 1024 * 1024  # shown in the page; the download has it all
JobId = Annotated[int, Path(ge=1, le=MAX_ID)]
Text = Annotated[str, Query(max_length=1000)]


# -- the list -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    """The list's filters as the page's form sends them (empty: any)."""

    state: str = ""
    worker: str = ""
    worker_class: str = ""
    user: str = ""
    q: str = ""
    cursor: str = ""

    def filters(self, viewer: auth.User) -> listing.Filters:
        return listing.Filters(
            states=listing.parse_states(self.state),
            worker=self.worker.strip() or None,
            worker_class=self.worker_class.strip() or None,
            user=self.user.strip() or None,
            q=self.q.strip() or None,
            owner_id=access.owner_filter(viewer),
        )

    def url(self, path: str = "/jobs", **changes: str) -> str:
        values = {**self.__dict__, **changes}
        query = urllib.parse.urlencode({k: v for k, v in values.items() if v})
        return f"{path}?{query}" if query else path


def _list_query(
    state: Text = "",
    worker: Text = "",
    worker_class: Annotated[str, Query(alias="class", max_length=1000)] = "",
    user: Text = "",
    q: Text = "",
    cursor: Annotated[str, Query(max_length=100)] = "",
) -> ListQuery:
    return ListQuery(state, worker, worker_class, user, q, cursor)


def _table(page: deps.Page, query: ListQuery) -> dict[str, Any]:
    """What the table partial shows; a bad filter becomes a message, not an error page."""
    try:
        filters = query.filters(page.user)
        found, next_cursor = job_actions.list_page(
            page.engine, page.user, filters, PAGE_SIZE, query.cursor or None
        )
        with db.read(page.engine) as conn:
            now = db.now(conn)
    except errors.InvalidInput as exc:
        return {"jobs": [], "next_url": None, "filter_error": exc.message, "query": query}
    return {
        "jobs": found,
        "now": now,
        "query": query,
        "next_url": query.url(cursor=next_cursor) if next_cursor else None,
        "first_url": query.url(cursor="") if query.cursor else None,
        "filter_error": None,
        "can_manage": lambda job: page.user.can_manage_job(job.user_id),
    }


def _form_choices(page: deps.Page) -> dict[str, Any]:
    with db.read(page.engine) as conn:
        return {
            "classes": classes.list_all(conn),
            "scripts": scripts.list_all(conn),
            "worker_names": conn.execute(
                sa.select(db.schema.workers.c.name).order_by(db.schema.workers.c.name)
            ).scalars().all(),
        }  # fmt: skip


@router.get("/jobs")
def jobs_page(page: deps.Viewer, query: Annotated[ListQuery, Depends(_list_query)]) -> Response:
    return _render_jobs(page, query)


def _render_jobs(
    page: deps.Page,
    query: ListQuery,
    *,
    form: dict[str, str] | None = None,
    form_error: str | None = None,
    status: int = 200,
) -> Response:
    return page.render(
        "jobs.html",
        active="jobs",
        status=status,
        states=[s.value for s in jobs.State],
        form=form or {"kind": "command", "worker_class": "default"},
        form_error=form_error,
        **_form_choices(page),
        **_table(page, query),
    )


@router.get("/jobs/table")
def jobs_table(page: deps.Viewer, query: Annotated[ListQuery, Depends(_list_query)]) -> Response:
    """The table alone, for the page's refresh and its filters (htmx)."""
    response = page.render("_jobs_table.html", **_table(page, query))
    response.headers["HX-Replace-Url"] = query.url()
    return response


# -- acting on a selection -----------------------------------------------------------------


@router.post("/jobs/bulk")
def bulk_action(page: deps.Actor) -> Response:
    """Kill or delete the selected jobs; says what happened to each that could not be."""
    action = page.field("action")
    if action not in ("kill", "delete"):
        raise errors.InvalidInput("choose Kill or Delete", field="action")
    ids = sorted({i for v in page.fields("ids") if (i := refs.parse_id(v)) is not None})
    back = pages.safe_next(page.field("back") or "/jobs")
    if not ids:
        return pages.redirect(back, "Select jobs first (the boxes on the left).", error=True)
    done, refused = [], []
    for job_id in ids[:500]:
        try:
            (kill if action == "kill" else delete)(page, job_id)
            done.append(job_id)
        except errors.JobBalancerError as exc:
            refused.append(f"#{job_id}: {exc.message}")
    verb = "Kill requested for" if action == "kill" else "Deleted"
    message = f"{verb} {len(done)} job{'s' if len(done) != 1 else ''}." if done else ""
    if refused:
        message = "\n".join([message, "Not done:", *refused[:10]]).strip()
    return pages.redirect(back, message, error=bool(refused))


def kill(page: deps.Page, job_id: int) -> jobs.Job:
    """As ``POST /api/v1/jobs/{id}/kill``."""
    return job_actions.kill(page.engine, page.user, job_id)


def delete(page: deps.Page, job_id: int) -> None:
    """As ``DELETE /api/v1/jobs/{id}``."""
    job_actions.delete(page.engine, page.user, job_id)


# -- submitting -----------------------------------------------------------------------------

_FORM_FIELDS = ("kind", "command", "script", "params", "watchdog", "worker_class",
                "priority", "retries", "need_realtime", "workdir",
                "start", "retry_delay", "cpus", "memory", "gpus", "constraints")  # fmt: skip


@router.post("/jobs")
def submit(page: deps.Submitter) -> Response:
    form = {name: page.field(name) for name in _FORM_FIELDS}
    try:
        spec = _spec_from_form(form)
        [job] = submission.submit(
            page.engine,
            page.user,
            [spec],
            prefix=False,
            limiter=submission.rate_limiter(page.request.app.state),
        )
    except pydantic.ValidationError as exc:
        message = inputs.first_message(exc)
        return _render_jobs(page, ListQuery(), form=form, form_error=message, status=422)
    except errors.JobBalancerError as exc:
        message = errors.with_field(exc.message, exc.field)
        return _render_jobs(page, ListQuery(), form=form, form_error=message, status=exc.status)
    if job.state == jobs.State.OCCUPIED:
        return pages.redirect(
            f"/jobs/{job.id}",
            f"No worker of class {job.worker_class!r} had a free slot: job {job.id} was not run "
            "(need_realtime).",
            error=True,
        )
    return pages.redirect(f"/jobs/{job.id}", f"Job {job.id} submitted.")


def _spec_from_form(form: dict[str, str]) -> inputs.JobSubmit:
    """The form as the API's submit body, so the API's validation (and messages) apply."""
    body: dict[str, Any] = {
        "params": [line for line in form["params"].replace("\r\n", "\n").split("\n") if line],
        "worker_class": form["worker_class"].strip() or "default",
        "need_realtime": form["need_realtime"] in ("on", "true", "1"),
    }
    if form["kind"] == "script":
        body["script"] = form["script"].strip() or None
        if body["script"] is None:
            raise errors.InvalidInput("choose a script", field="script")
    else:
        body["command"] = form["command"]
    for name in ("watchdog", "priority", "retries", "workdir", "cpus", "memory", "gpus"):
        if form[name].strip():
            body[name] = form[name].strip()
    body.update(_later_from_form(form))
    if form["constraints"].strip():
        body["constraints"] = _constraints(form["constraints"])
    return inputs.JobSubmit.model_validate(body)


def _later_from_form(form: dict[str, str]) -> dict[str, Any]:
    """ "Start in or at": a duration (``10m``) is a ``delay``, anything else a
    ``not_before`` (the API's checks name it); "Retry delay": a duration."""
    body: dict[str, Any] = {}
    start = form["start"].strip()
    if start:
        delay = inputs.parse_duration(start)
        body["delay" if delay is not None else "not_before"] = start if delay is None else delay
    retry_delay = form["retry_delay"].strip()
    if retry_delay:
        seconds = inputs.parse_duration(retry_delay)
        if seconds is None:
            raise errors.InvalidInput(
                "retry delay: give a number with s, m, h or d (30s, 5m)", field="retry_delay"
            )
        body["retry_delay"] = seconds
    return body


def _constraints(text: str) -> dict[str, str | bool]:
    """The Run form's constraints: ``ffmpeg=6, os!=windows, ssd, !spinning`` (commas or
    lines), as ``--constraint`` reads them."""
    try:
        parts = [p for p in text.replace("\n", ",").split(",") if p.strip()]
        return dict(resources.parse_constraint(p) for p in parts)
    except ValueError as exc:
        raise errors.InvalidInput(f"constraints: {exc}", field="constraints") from None


# -- one job --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogPart:
    stream: str
    text: str


def _log_parts(conn: sa.Connection, job_id: int) -> tuple[list[LogPart], int, bool]:
    """The log as (stream, text) runs, the offset after them, and whether it was cut."""
    decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in ("stdout", "stderr")}
    parts: list[LogPart] = []
    offset, size, after_seq = 0, 0, -1
    while True:
        batch = logs.chunks(conn, job_id, after_seq=after_seq)
        for chunk in batch:
            text = decoders[chunk.stream].decode(chunk.data) if chunk.stream in decoders else ""
            if parts and parts[-1].stream == chunk.stream:
                parts[-1] = LogPart(chunk.stream, parts[-1].text + text)
            elif text:
                parts.append(LogPart(chunk.stream, text))
            offset, size, after_seq = chunk.end, size + len(chunk.data), chunk.seq
            if size >= LOG_PAGE_BYTES:
                return parts, offset, True
        if len(batch) < logs.BATCH:
            return parts, offset, False


@router.get("/jobs/{job_id}")
def job_page(job_id: JobId, page: deps.Viewer) -> Response:
    with db.read(page.engine) as conn:
        job = balancer.with_current_reason(conn, access.visible_job(conn, page.user, job_id))
        parts, offset, cut = _log_parts(conn, job_id)
        now = db.now(conn)
        restarts = conn.execute(
            sa.select(jobs.J.c.id).where(jobs.J.c.restarted_from == job_id).order_by(jobs.J.c.id)
        ).scalars().all()  # fmt: skip
        sent = notify.list_notifications(conn, job_id=job_id, limit=50)
        links = access.shown_links(chains.links(conn, job_id), page.user)
    schedule = _schedule_of(page, job)
    may_manage = page.user.can_manage_job(job.user_id)
    return page.render(
        "job.html",
        active="jobs",
        job=job,
        env=access.shown_env(job, page.user),
        now=now,
        parts=parts,
        log_offset=offset,
        log_cut=cut,
        restarts=restarts,
        notifications=sent,
        links=links,
        waiting_for=links.waiting_for() if job.state == jobs.State.HELD else None,
        schedule=schedule,
        can_kill=may_manage and not job.finished,
        can_restart=may_manage and page.user.can_submit,
        can_delete=may_manage and job.state not in jobs.ACTIVE,
    )


def _schedule_of(page: deps.Page, job: jobs.Job) -> Schedule | None:
    """The schedule that fired the job; None if none did, or it was deleted since."""
    if job.schedule_id is None:
        return None
    try:
        return schedule_service.get(page.engine, page.user, job.schedule_id, history=0).schedule
    except errors.NotFound:
        return None


@router.get("/jobs/{job_id}/run")
def job_run(job_id: JobId, page: deps.Viewer) -> Response:
    """The "How it ran" card, refreshed while the job is not over (the log's stream reloads
    the whole page when it ends)."""
    with db.read(page.engine) as conn:
        job = balancer.with_current_reason(conn, access.visible_job(conn, page.user, job_id))
        now = db.now(conn)
    # 286: htmx stops polling once the job is over.
    return page.render("_job_run.html", job=job, now=now, status=286 if job.finished else 200)


@router.get("/jobs/{job_id}/log.txt")
def download_log(job_id: JobId, page: deps.Viewer) -> Response:
    with db.read(page.engine) as conn:
        access.visible_job(conn, page.user, job_id)
        data, _ = logs.read(conn, job_id, "all")
    return Response(
        data,
        media_type="text/plain; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="job-{job_id}.log"'},
    )


@router.post("/jobs/{job_id}/kill")
def kill_job(job_id: JobId, page: deps.Actor) -> Response:
    job = kill(page, job_id)
    said = "killed" if job.state == jobs.State.KILLED else "asked to stop; its worker kills it now"
    return pages.redirect(f"/jobs/{job_id}", f"Job {job_id} {said}.")


@router.post("/jobs/{job_id}/restart")
def restart_job(job_id: JobId, page: deps.Actor) -> Response:
    limiter = submission.rate_limiter(page.request.app.state)
    new = job_actions.restart(page.engine, page.user, job_id, limiter=limiter)
    if new.state == jobs.State.OCCUPIED:
        return pages.redirect(
            f"/jobs/{new.id}", f"Job {new.id} found no free slot (need_realtime).", error=True
        )
    return pages.redirect(f"/jobs/{new.id}", f"Job {new.id} restarted from job {job_id}.")


@router.post("/jobs/{job_id}/delete")
def delete_job(job_id: JobId, page: deps.Actor) -> Response:
    delete(page, job_id)
    return pages.redirect("/jobs", f"Job {job_id} deleted, with its output.")

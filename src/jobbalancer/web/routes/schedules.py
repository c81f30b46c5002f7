"""``/schedules``: the schedules (next run, last result, pause/resume/run now/delete), a
form to create or change one whose cron field previews the next runs as it is typed
(``/schedules/preview``, a fragment), and ``/schedules/{id}``: one schedule with its next
runs and its occurrence history (paged; the first page refreshes itself).

The form is read as the API's body (``inputs.ScheduleIn``, its ``job`` as
``inputs.JobSubmit``), and every change goes through ``service.schedules``, as
``/api/v1/schedules`` does: the rules and the messages are the API's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import available_timezones

import pydantic
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from jobbalancer import auth, classes, cron, db, errors, schedules, scripts
from jobbalancer.refs import MAX_ID
from jobbalancer.service import access, inputs
from jobbalancer.service import schedules as schedule_service
from jobbalancer.web import deps, pages

router = APIRouter(include_in_schema=False)

ScheduleId = Annotated[int, Path(ge=1, le=MAX_ID)]
Text = Annotated[str, Query(max_length=1000)]
HISTORY_PAGE = 50
LIST_PAGE = 100
PREVIEW_RUNS = 5
# The job fields the form shows; any other field of a stored job (env, labels, notify …,
# set through the API) is kept as it is when the form saves.
JOB_FIELDS = ("command", "script", "params", "worker_class", "watchdog", "priority",
              "retries", "need_realtime", "workdir", "delay", "retry_delay")  # fmt: skip
_ZONES: list[str] = []


def zone_names() -> list[str]:
    """The IANA zones, sorted, UTC first (the form's choices)."""
    if not _ZONES:
        _ZONES.extend(["UTC", *sorted(z for z in available_timezones() if z != "UTC")])
    return _ZONES


# -- the form -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleForm:
    """The form's fields as text, as the page sends them back (and shows them again)."""

    name: str = ""
    description: str = ""
    cron: str = ""
    timezone: str = "UTC"
    overlap: str = "skip"
    catch_up: str = "latest"
    catch_up_max: str = "10"
    start_at: str = ""
    end_at: str = ""
    enabled: bool = True
    kind: str = "command"
    command: str = ""
    script: str = ""
    params: str = ""
    worker_class: str = "default"
    watchdog: str = ""
    priority: str = ""
    retries: str = ""
    need_realtime: bool = False
    workdir: str = ""
    delay: str = ""  # a duration after each fire time (10m): the job's ``delay``
    retry_delay: str = ""  # a duration (30s)
    # The stored params are by name (a script that declares its parameters): the lines
    # are ``name=value``.
    params_named: bool = False

    @classmethod
    def of(cls, s: schedules.Schedule) -> ScheduleForm:
        """A saved schedule, to edit."""
        job = s.job

        def text(key: str) -> str:
            value = job.get(key)
            return "" if value is None else str(value)

        params = job.get("params") or []
        named = isinstance(params, dict)
        if isinstance(params, dict):
            lines = [f"{k}={v}" for k, v in params.items()]
        else:
            lines = [str(p) for p in params]
        return cls(
            name=s.name, description=s.description, cron=s.cron, timezone=s.timezone,
            overlap=s.overlap.value, catch_up=s.catch_up.value,
            catch_up_max=str(s.catch_up_max), start_at=_local_input(s.start_at, s.timezone),
            end_at=_local_input(s.end_at, s.timezone), enabled=s.enabled,
            kind="script" if job.get("script") is not None else "command",
            command=text("command"), script=text("script"),
            params="\n".join(lines), params_named=named,
            worker_class=text("worker_class") or "default", watchdog=text("watchdog"),
            priority=text("priority"), retries=text("retries"),
            need_realtime=bool(job.get("need_realtime")), workdir=text("workdir"),
            delay=_duration_text(job.get("delay")),
            retry_delay=_duration_text(job.get("retry_delay")),
        )  # fmt: skip

    @classmethod
    def read(cls, page: deps.Page) -> ScheduleForm:
        flags = ("enabled", "need_realtime", "params_named")
        values: dict[str, Any] = {
            name: page.field(name) for name in cls.__dataclass_fields__ if name not in flags
        }
        values["kind"] = "script" if values["kind"] == "script" else "command"
        # Browsers send CRLF line ends from a textarea.
        values["params"] = values["params"].replace("\r\n", "\n")
        for name in flags:
            values[name] = page.field(name) in ("on", "true", "1")
        return cls(**values)

    def body(self, kept_job: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The API's body for these fields (``kept_job``: the stored job, whose fields the
        form does not show stay), and the errors found reading them (field: message)."""
        problems: dict[str, str] = {}
        zone_name = self.timezone.strip()
        body: dict[str, Any] = {
            "name": self.name.strip(),
            "description": self.description,
            "cron": self.cron,
            "timezone": zone_name,
            "enabled": self.enabled,
            "overlap": self.overlap,
            "catch_up": self.catch_up,
            "catch_up_max": self.catch_up_max.strip() or "10",
        }
        for key in ("start_at", "end_at"):
            text = getattr(self, key).strip()
            try:
                body[key] = parse_local(text, zone_name) if text else None
            except ValueError as exc:
                problems[key] = f"{key}: {exc}"
        job: dict[str, Any] = {k: v for k, v in kept_job.items() if k not in JOB_FIELDS}
        if self.kind == "script":
            job["script"] = self.script.strip()
            if not job["script"]:
                problems["script"] = "job.script: choose a script"
        else:
            job["command"] = self.command
        lines = [line for line in self.params.split("\n") if line]
        job["params"] = lines
        if self.params_named:
            pairs = [line.partition("=") for line in lines]
            if any(not sep or not name.strip() for name, sep, _ in pairs):
                problems["params"] = "job.params: one name=value a line"
            job["params"] = {name.strip(): value for name, _, value in pairs}
        job["worker_class"] = self.worker_class.strip() or "default"
        for key in ("watchdog", "priority", "retries", "workdir"):
            if getattr(self, key).strip():
                job[key] = getattr(self, key).strip()
        if self.need_realtime:
            job["need_realtime"] = True
        for key in ("delay", "retry_delay"):
            text = getattr(self, key).strip()
            if text:
                seconds = inputs.parse_duration(text)
                if seconds is None:
                    problems[key] = f"job.{key}: give a number with s, m, h or d (30s, 10m, 2h)"
                else:
                    job[key] = seconds
        body["job"] = job
        return body, problems


def _duration_text(seconds: Any) -> str:
    """Stored seconds as the form shows them: ``600`` → ``10m``."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not seconds:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size:g}{unit}"
    return f"{seconds:g}s"


def parse_local(text: str, zone_name: str) -> datetime:
    """A ``datetime-local`` value (``2026-12-24T18:00``) read in the schedule's zone (UTC
    if that zone is unknown: its own error says so); an offset typed in is kept."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    if value.tzinfo is not None:
        return value
    try:
        zone = cron.zone(zone_name)
    except ValueError:
        zone = cron.zone("UTC")
    return value.replace(tzinfo=zone)


def _local_input(value: datetime | None, tz: str) -> str:
    """A time as a ``datetime-local`` value in the schedule's zone."""
    if value is None:
        return ""
    local = value.astimezone(cron.zone(tz))
    return local.strftime("%Y-%m-%dT%H:%M:%S" if local.second else "%Y-%m-%dT%H:%M")


def form_field(api_field: str | None) -> str:
    """The form field an API field's error belongs next to: ``job.params.2`` → ``params``;
    "" for none the form shows."""
    if not api_field:
        return ""
    parts = api_field.split(".")
    if parts[0] == "job":
        parts = parts[1:]
    key = parts[0] if parts else ""
    return key if key in ScheduleForm.__dataclass_fields__ else ""


def _validated(
    form: ScheduleForm, kept_job: Mapping[str, Any]
) -> tuple[inputs.ScheduleIn | None, list[tuple[str, str]]]:
    """The form as ``ScheduleIn``, or every error found in it as (form field, message)."""
    body, problems = form.body(kept_job)
    found = [(key, message) for key, message in problems.items()]
    for key in problems:
        body.pop(key, None)  # checked above: its own message says what is wrong
    try:
        spec = inputs.ScheduleIn.model_validate(body)
    except pydantic.ValidationError as exc:
        for error in exc.errors():
            field, message = inputs.describe(error)
            if field == "job" and "script" in problems:
                continue  # "choose a script" says it already
            found.append((form_field(field), message))
        return None, found
    return (None, found) if found else (spec, [])


# -- the list -------------------------------------------------------------------------------


@router.get("/schedules")
def schedules_page(
    page: deps.Viewer, after: Annotated[str, Query(max_length=200)] = ""
) -> Response:
    """The schedules by name, LIST_PAGE at a time (``after``: the last name shown)."""
    found = schedule_service.list_schedules(
        page.engine, page.user, after=after or None, limit=LIST_PAGE + 1
    )
    more = None
    if len(found) > LIST_PAGE:
        found = found[:LIST_PAGE]
        more = "/schedules?" + urlencode({"after": found[-1].schedule.name})
    with db.read(page.engine) as conn:
        now = db.now(conn)
    return page.render(
        "schedules.html",
        active="schedules",
        listed=found,
        more=more,
        paged=bool(after),
        now=now,
        can_manage=lambda s: page.user.can_manage_job(s.user_id),
    )


# -- the preview ----------------------------------------------------------------------------


@router.get("/schedules/preview")
def preview(
    page: deps.Viewer,
    cron_expr: Annotated[str, Query(alias="cron", max_length=1000)] = "",
    timezone: Text = "UTC",
    start_at: Text = "",
    end_at: Text = "",
) -> Response:
    """The next runs of the form's expression, as a fragment (the form asks as it is
    typed); an expression or zone that is not one gets its message instead."""
    if not cron_expr.strip():
        return page.render("_schedule_preview.html", runs=[], error=None, empty=True)
    body: dict[str, Any] = {"cron": cron_expr, "timezone": timezone.strip() or "UTC",
                            "count": PREVIEW_RUNS}  # fmt: skip
    try:
        for key, text in (("start_at", start_at), ("end_at", end_at)):
            if text.strip():
                try:
                    body[key] = parse_local(text.strip(), body["timezone"])
                except ValueError as exc:
                    raise errors.InvalidInput(f"{key}: {exc}", field=key) from None
        spec = inputs.SchedulePreview.model_validate(body)
        with db.read(page.engine) as conn:
            now = db.now(conn)
        runs = schedule_service.preview(spec, now)
    except pydantic.ValidationError as exc:
        error = inputs.first_message(exc)
    except errors.InvalidInput as exc:
        error = errors.with_field(exc.message, exc.field)
    else:
        return page.render(
            "_schedule_preview.html", runs=runs, error=None, empty=False, now=now,
            timezone=spec.timezone, seconds=cron.has_seconds(spec.cron),
        )  # fmt: skip
    return page.render("_schedule_preview.html", runs=[], error=error, empty=False)


# -- creating and changing ------------------------------------------------------------------


def _form_choices(page: deps.Page, form: ScheduleForm) -> dict[str, Any]:
    with db.read(page.engine) as conn:
        found_classes = classes.list_all(conn)
        found_scripts = scripts.list_all(conn)
    return {
        "classes": found_classes,
        "scripts": found_scripts,
        "zones": zone_names(),
        "overlaps": [o.value for o in schedules.Overlap],
        "catch_ups": [c.value for c in schedules.CatchUp],
        # A command already in the schedule stays editable by whoever may change it.
        "commands_ok": page.user.commands_allowed or bool(form.kind == "command" and form.command),
    }


def _render_form(
    page: deps.Page,
    form: ScheduleForm,
    *,
    schedule: schedules.Schedule | None = None,
    problems: list[tuple[str, str]] | None = None,
    status: int = 200,
) -> Response:
    problems = problems or []
    field_errors: dict[str, str] = {}
    for key, message in problems:
        if key:
            field_errors.setdefault(key, message)
    kept = sorted(k for k in (schedule.job if schedule else {}) if k not in JOB_FIELDS)
    return page.render(
        "schedule_form.html",
        active="schedules",
        status=status,
        form=form,
        schedule=schedule,
        error=problems[0][1] if problems else None,
        field_errors=field_errors,
        other_errors=[m for k, m in problems if not k][1:] if problems else [],
        kept_fields=kept,
        **_form_choices(page, form),
    )


@router.get("/schedules/new")
def new_schedule(page: deps.Submitter) -> Response:
    return _render_form(page, ScheduleForm())


@router.post("/schedules")
def create_schedule(page: deps.Submitter) -> Response:
    form = ScheduleForm.read(page)
    spec, problems = _validated(form, {})
    if spec is None:
        return _render_form(page, form, problems=problems, status=422)
    try:
        created = schedule_service.create(page.engine, page.user, spec)
    except errors.JobBalancerError as exc:
        problem = (form_field(exc.field), errors.with_field(exc.message, exc.field))
        return _render_form(page, form, problems=[problem], status=exc.status)
    return pages.redirect(f"/schedules/{created.id}", f"Schedule {created.name} created.")


@router.get("/schedules/{schedule_id}/edit")
def edit_schedule(schedule_id: ScheduleId, page: deps.Actor) -> Response:
    schedule = schedule_service.get(page.engine, page.user, schedule_id, history=0).schedule
    if not page.user.can_manage_job(schedule.user_id):
        raise errors.Forbidden(f"your role ({page.user.role}) does not allow changing schedules")
    return _render_form(page, ScheduleForm.of(schedule), schedule=schedule)


@router.post("/schedules/{schedule_id}")
def update_schedule(schedule_id: ScheduleId, page: deps.Actor) -> Response:
    schedule = schedule_service.get(page.engine, page.user, schedule_id, history=0).schedule
    form = ScheduleForm.read(page)
    spec, problems = _validated(form, schedule.job)
    if spec is None:
        return _render_form(page, form, schedule=schedule, problems=problems, status=422)
    # Every field is sent: the service changes what differs (a new timing starts from now).
    fields = spec.model_dump(exclude={"job"})
    patch = inputs.SchedulePatch.model_validate({**fields, "job": spec.job})
    try:
        updated = schedule_service.update(page.engine, page.user, schedule_id, patch)
    except errors.JobBalancerError as exc:
        problem = (form_field(exc.field), errors.with_field(exc.message, exc.field))
        return _render_form(page, form, schedule=schedule, problems=[problem], status=exc.status)
    return pages.redirect(f"/schedules/{updated.id}", f"Schedule {updated.name} saved.")


# -- one schedule ---------------------------------------------------------------------------


def _history(
    page: deps.Page, schedule_id: int, before: int | None
) -> tuple[list[schedules.Occurrence], str | None]:
    found = schedule_service.history(
        page.engine, page.user, schedule_id, limit=HISTORY_PAGE + 1, before=before
    )
    older = None
    if len(found) > HISTORY_PAGE:
        found = found[:HISTORY_PAGE]
        older = f"/schedules/{schedule_id}?before={found[-1].id}#history"
    return found, older


@router.get("/schedules/{schedule_id}")
def schedule_page(
    schedule_id: ScheduleId,
    page: deps.Viewer,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    with db.read(page.engine) as conn:
        now = db.now(conn)
    detail = schedule_service.get(page.engine, page.user, schedule_id, history=0, now=now)
    occurrences, older = _history(page, schedule_id, before)
    schedule = detail.schedule
    return page.render(
        "schedule.html",
        active="schedules",
        s=schedule,
        job=_shown_job(schedule, page.user),
        next_runs=detail.next_runs,
        occurrences=occurrences,
        older=older,
        paged=before is not None,
        now=now,
        can_manage=page.user.can_manage_job(schedule.user_id),
    )


@router.get("/schedules/{schedule_id}/history")
def schedule_history(schedule_id: ScheduleId, page: deps.Viewer) -> Response:
    """The history's first page alone (the page refreshes it, htmx)."""
    with db.read(page.engine) as conn:
        now = db.now(conn)
    occurrences, older = _history(page, schedule_id, None)
    return page.render(
        "_schedule_history.html", s_id=schedule_id, occurrences=occurrences, older=older,
        paged=False, now=now,
    )  # fmt: skip


def _shown_job(schedule: schedules.Schedule, viewer: auth.User) -> dict[str, Any]:
    """The stored job as ``viewer`` may see it: env values are the owner's and admins'."""
    job = dict(schedule.job)
    if job.get("env") and not (viewer.is_admin or viewer.id == schedule.user_id):
        job["env"] = dict.fromkeys(job["env"], access.ENV_MASK)
    return job


# -- actions --------------------------------------------------------------------------------


def _back(page: deps.Page, schedule_id: int) -> str:
    return pages.safe_next(page.field("back") or f"/schedules/{schedule_id}")


@router.post("/schedules/{schedule_id}/pause")
def pause_schedule(schedule_id: ScheduleId, page: deps.Actor) -> Response:
    s = schedule_service.pause(page.engine, page.user, schedule_id)
    return pages.redirect(_back(page, schedule_id), f"Schedule {s.name} paused.")


@router.post("/schedules/{schedule_id}/resume")
def resume_schedule(schedule_id: ScheduleId, page: deps.Actor) -> Response:
    s = schedule_service.resume(page.engine, page.user, schedule_id)
    said = "fires next" if s.next_fire_at else "has no run left (past its end)"
    when = f" at {pages.fmt_dt(s.next_fire_at)} UTC" if s.next_fire_at else ""
    return pages.redirect(_back(page, schedule_id), f"Schedule {s.name} resumed: {said}{when}.")


@router.post("/schedules/{schedule_id}/run")
def run_schedule(schedule_id: ScheduleId, page: deps.Actor) -> Response:
    try:
        occurrence = schedule_service.run_now(page.engine, page.user, schedule_id)
    except (errors.Conflict, errors.InvalidInput) as exc:
        return pages.redirect(
            _back(page, schedule_id), f"Not run: {errors.with_field(exc.message, exc.field)}",
            error=True,
        )  # fmt: skip
    return pages.redirect(_back(page, schedule_id), f"Job {occurrence.job_id} submitted (run now).")


@router.post("/schedules/{schedule_id}/delete")
def delete_schedule(schedule_id: ScheduleId, page: deps.Actor) -> Response:
    schedule = schedule_service.get(page.engine, page.user, schedule_id, history=0).schedule
    schedule_service.delete(page.engine, page.user, schedule_id)
    return pages.redirect(
        "/schedules", f"Schedule {schedule.name} deleted, with its history (its jobs stay)."
    )

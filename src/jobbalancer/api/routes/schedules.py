"""``/api/v1/schedules``: list, create, read (with the next runs and the latest
occurrences), change, delete, pause, resume, run now, history; and a preview of an
expression's fire times."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from jobbalancer import db
from jobbalancer.api import models
from jobbalancer.api.deps import CurrentUser, EngineDep, Submitter
from jobbalancer.service import inputs
from jobbalancer.service import schedules as service

router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"])

ScheduleRef = Annotated[str, Path(max_length=200, description="The schedule's name or id.")]


@router.get("")
def list_schedules(user: CurrentUser, engine: EngineDep) -> list[models.Schedule]:
    """Schedules by name, each with its latest occurrence (``last``); a submitter sees
    only their own."""
    found = service.list_schedules(engine, user)
    return [models.Schedule.from_schedule(s.schedule, user, s.last) for s in found]


@router.post("", status_code=201)
def create_schedule(spec: inputs.ScheduleIn, user: Submitter, engine: EngineDep) -> models.Schedule:
    """A new schedule, owned by the caller: its job runs as them."""
    schedule = service.create(engine, user, spec)
    return models.Schedule.from_detail(service.get(engine, user, schedule.id), user)


@router.post("/preview")
def preview(
    spec: inputs.SchedulePreview, user: CurrentUser, engine: EngineDep
) -> models.SchedulePreview:
    """The next fire times of ``cron`` in ``timezone``; nothing is saved."""
    with db.read(engine) as conn:
        now = db.now(conn)
    return models.SchedulePreview(
        next_runs=[models.NextRun.from_run(r) for r in service.preview(spec, now)]
    )


@router.get("/{ref}")
def get_schedule(ref: ScheduleRef, user: CurrentUser, engine: EngineDep) -> models.Schedule:
    """One schedule with ``next_runs`` (the next 5) and its latest 20 occurrences."""
    return models.Schedule.from_detail(service.get(engine, user, ref), user)


@router.patch("/{ref}")
def update_schedule(
    ref: ScheduleRef, patch: inputs.SchedulePatch, user: CurrentUser, engine: EngineDep
) -> models.Schedule:
    """Change what the body sends; a change of timing starts from now."""
    schedule = service.update(engine, user, ref, patch)
    return models.Schedule.from_detail(service.get(engine, user, schedule.id), user)


@router.delete("/{ref}", status_code=204)
def delete_schedule(ref: ScheduleRef, user: CurrentUser, engine: EngineDep) -> Response:
    """Delete a schedule and its history; the jobs it fired stay."""
    service.delete(engine, user, ref)
    return Response(status_code=204)


@router.post("/{ref}/pause")
def pause_schedule(ref: ScheduleRef, user: CurrentUser, engine: EngineDep) -> models.Schedule:
    schedule = service.pause(engine, user, ref)
    return models.Schedule.from_detail(service.get(engine, user, schedule.id), user)


@router.post("/{ref}/resume")
def resume_schedule(ref: ScheduleRef, user: CurrentUser, engine: EngineDep) -> models.Schedule:
    """Fire again from the next occurrence after now."""
    schedule = service.resume(engine, user, ref)
    return models.Schedule.from_detail(service.get(engine, user, schedule.id), user)


@router.post("/{ref}/run", status_code=201)
def run_schedule(ref: ScheduleRef, user: CurrentUser, engine: EngineDep) -> models.Occurrence:
    """Submit its job now, as its owner (paused or not, whatever the overlap policy)."""
    return models.Occurrence.from_occurrence(service.run_now(engine, user, ref))


@router.get("/{ref}/history")
def schedule_history(
    ref: ScheduleRef,
    user: CurrentUser,
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=2**62, description="An occurrence id: older ones.")
    ] = None,
) -> list[models.Occurrence]:
    """Occurrences, newest first."""
    found = service.history(engine, user, ref, limit=limit, before=before)
    return [models.Occurrence.from_occurrence(o) for o in found]

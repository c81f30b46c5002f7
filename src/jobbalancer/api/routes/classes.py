"""``/api/v1/worker-classes``: everyone reads; admins and operators change."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from jobbalancer import classes, db
from jobbalancer.api import models
from jobbalancer.api.deps import CurrentUser, EngineDep, Operator
from jobbalancer.refs import MAX_ID
from jobbalancer.service import fleet, inputs

router = APIRouter(prefix="/api/v1/worker-classes", tags=["worker classes"])

ClassId = Annotated[int, Path(ge=1, le=MAX_ID, description="The class's id.")]


@router.get("")
def list_classes(user: CurrentUser, engine: EngineDep) -> list[models.WorkerClass]:
    """Every worker class, by name; ``default`` always exists."""
    with db.read(engine) as conn:
        return [models.WorkerClass.from_class(c) for c in classes.list_all(conn)]


@router.post("", status_code=201)
def create_class(
    spec: inputs.WorkerClassIn, user: Operator, engine: EngineDep
) -> models.WorkerClass:
    return models.WorkerClass.from_class(fleet.create_class(engine, user, spec))


@router.get("/{class_id}")
def get_class(class_id: ClassId, user: CurrentUser, engine: EngineDep) -> models.WorkerClass:
    with db.read(engine) as conn:
        return models.WorkerClass.from_class(classes.get(conn, class_id))


@router.patch("/{class_id}")
def update_class(
    class_id: ClassId,
    patch: inputs.WorkerClassPatch,
    user: Operator,
    engine: EngineDep,
) -> models.WorkerClass:
    """Rename (not ``default``), change max_jobs or the description."""
    _, updated = fleet.update_class(engine, user, class_id, patch.model_dump(exclude_unset=True))
    return models.WorkerClass.from_class(updated)


@router.delete("/{class_id}", status_code=204)
def delete_class(class_id: ClassId, user: Operator, engine: EngineDep) -> Response:
    """Delete a class without workers and without waiting or running jobs (else 409)."""
    fleet.delete_class(engine, user, class_id)
    return Response(status_code=204)

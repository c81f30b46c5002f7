"""``/api/v1/workers``: list, change, remove."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from jobbalancer import db, registry
from jobbalancer.api import models
from jobbalancer.api.deps import CurrentUser, EngineDep, Operator
from jobbalancer.refs import MAX_ID
from jobbalancer.service import fleet, inputs

router = APIRouter(prefix="/api/v1/workers", tags=["workers"])

WorkerId = Annotated[int, Path(ge=1, le=MAX_ID, description="The worker's id.")]


@router.get("")
def list_workers(user: CurrentUser, engine: EngineDep) -> list[models.Worker]:
    """Every registered worker, by name."""
    with db.read(engine) as conn:
        return [models.Worker.from_worker(w) for w in registry.list_all(conn)]


@router.get("/{worker_id}")
def get_worker(worker_id: WorkerId, user: CurrentUser, engine: EngineDep) -> models.Worker:
    with db.read(engine) as conn:
        return models.Worker.from_worker(registry.get(conn, worker_id))


@router.patch("/{worker_id}")
def update_worker(
    worker_id: WorkerId,
    patch: inputs.WorkerPatch,
    user: Operator,
    engine: EngineDep,
) -> models.Worker:
    """Change max_jobs (null: the class's), worker_class, or enabled. A disabled worker
    takes no new jobs and finishes those it has."""
    changes: dict[str, Any] = patch.model_dump(exclude_unset=True)
    return models.Worker.from_worker(fleet.update_worker(engine, user, worker_id, changes))


@router.delete("/{worker_id}", status_code=204)
def delete_worker(worker_id: WorkerId, user: Operator, engine: EngineDep) -> Response:
    """Remove an offline worker from the list (409 while it is online or draining)."""
    fleet.remove_worker(engine, user, worker_id)
    return Response(status_code=204)

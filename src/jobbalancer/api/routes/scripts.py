"""``/api/v1/scripts``: everyone reads; admins and operators change."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from jobbalancer import db, scripts
from jobbalancer.api import models
from jobbalancer.api.deps import CurrentUser, EngineDep, Operator
from jobbalancer.refs import MAX_ID
from jobbalancer.service import fleet, inputs

router = APIRouter(prefix="/api/v1/scripts", tags=["scripts"])

ScriptId = Annotated[int, Path(ge=1, le=MAX_ID, description="The script's id.")]
ScriptRef = Annotated[str, Path(max_length=200, description="The script's name or id.")]


@router.get("")
def list_scripts(user: CurrentUser, engine: EngineDep) -> list[models.Script]:
    """Every stored script, by name."""
    with db.read(engine) as conn:
        return [models.Script.from_script(s) for s in scripts.list_all(conn)]


@router.post("", status_code=201)
def create_script(spec: inputs.ScriptIn, user: Operator, engine: EngineDep) -> models.Script:
    """Store a script. Jobs copy it when submitted, so later edits never change them."""
    return models.Script.from_script(fleet.create_script(engine, user, spec))


@router.get("/{script}")
def get_script(script: ScriptRef, user: CurrentUser, engine: EngineDep) -> models.Script:
    """One script, by id or by name (with its declared ``parameters``)."""
    with db.read(engine) as conn:
        return models.Script.from_script(scripts.lookup(conn, script))


@router.patch("/{script_id}")
def update_script(
    script_id: ScriptId, patch: inputs.ScriptPatch, user: Operator, engine: EngineDep
) -> models.Script:
    changes = patch.model_dump(exclude_unset=True)
    return models.Script.from_script(fleet.update_script(engine, user, script_id, changes))


@router.delete("/{script_id}", status_code=204)
def delete_script(script_id: ScriptId, user: Operator, engine: EngineDep) -> Response:
    """Delete a script; jobs that ran it keep their copy."""
    fleet.delete_script(engine, user, script_id)
    return Response(status_code=204)

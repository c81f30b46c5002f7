"""``/api/v1/users`` and their API keys: admins manage everyone; a user sees themself and
manages their own keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Path, Response

from jobbalancer import auth, classes, db, errors
from jobbalancer.api import models
from jobbalancer.api.deps import Admin, CurrentUser, EngineDep
from jobbalancer.refs import MAX_ID

router = APIRouter(prefix="/api/v1", tags=["users"])

UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="The user's id.")]
KeyId = Annotated[int, Path(ge=1, le=MAX_ID, description="The key's id.")]


def _self_or_admin(user: auth.User, user_id: int) -> None:
    if user.id != user_id and not user.is_admin:
        raise errors.Forbidden("only admins may see or change other users")


def _class_names(conn: sa.Connection, refs: Sequence[str | int] | None) -> list[str] | None:
    if refs is None:
        return None
    return [classes.find(conn, r, field=f"worker_classes.{i}").name for i, r in enumerate(refs)]


def _keep_an_admin(conn: sa.Connection, target: auth.User, changes: Mapping[str, Any]) -> None:
    """Refuse to demote, disable or delete the last enabled admin: nobody could undo it."""
    if not target.is_admin or target.disabled:
        return
    demoted = changes.get("role", auth.Role.ADMIN) != auth.Role.ADMIN
    if not (demoted or changes.get("disabled") or changes.get("deleted")):
        return
    others = [
        u for u in auth.list_users(conn) if u.is_admin and not u.disabled and u.id != target.id
    ]
    if not others:
        raise errors.Conflict(f"{target.name} is the last enabled admin: make another admin first")


@router.get("/me")
def me(user: CurrentUser) -> models.User:
    """The user the API key belongs to."""
    return models.User.from_user(user)


@router.get("/users")
def list_users(user: Admin, engine: EngineDep) -> list[models.User]:
    """Every user, by name (admins only)."""
    with db.read(engine) as conn:
        return [models.User.from_user(u) for u in auth.list_users(conn)]


@router.post("/users", status_code=201)
def create_user(spec: models.UserIn, user: Admin, engine: EngineDep) -> models.User:
    """Create a user; without a password it can only use API keys."""
    with db.write(engine) as conn:
        created = auth.create_user(
            conn,
            spec.name,
            spec.role,
            spec.password,
            commands_allowed=spec.commands_allowed,
            worker_classes=_class_names(conn, spec.worker_classes),
        )
        if spec.disabled:
            created = auth.update_user(conn, created.id, {"disabled": True})
    return models.User.from_user(created)


@router.get("/users/{user_id}")
def get_user(user_id: UserId, user: CurrentUser, engine: EngineDep) -> models.User:
    _self_or_admin(user, user_id)
    with db.read(engine) as conn:
        return models.User.from_user(auth.get_user(conn, user_id))


@router.patch("/users/{user_id}")
def update_user(
    user_id: UserId, patch: models.UserPatch, user: Admin, engine: EngineDep
) -> models.User:
    """Change name, role, password, commands_allowed, worker_classes (null: all) or disabled."""
    changes: dict[str, Any] = patch.model_dump(exclude_unset=True)
    with db.write(engine) as conn:
        target = auth.get_user(conn, user_id)
        _keep_an_admin(conn, target, changes)
        if "worker_classes" in changes:
            changes["worker_classes"] = _class_names(conn, changes["worker_classes"])
        updated = auth.update_user(conn, user_id, changes)
    return models.User.from_user(updated)


@router.delete("/users/{user_id}", status_code=204)
def delete_user(user_id: UserId, user: Admin, engine: EngineDep) -> Response:
    """Delete a user and their API keys; their jobs stay."""
    with db.write(engine) as conn:
        _keep_an_admin(conn, auth.get_user(conn, user_id), {"deleted": True})
        auth.delete_user(conn, user_id)
    return Response(status_code=204)


@router.get("/users/{user_id}/api-keys")
def list_keys(user_id: UserId, user: CurrentUser, engine: EngineDep) -> list[models.ApiKey]:
    """The user's keys: names and prefixes, never the keys."""
    _self_or_admin(user, user_id)
    with db.read(engine) as conn:
        auth.get_user(conn, user_id)  # 404 for an unknown user, not an empty list
        return [models.ApiKey.from_key(k) for k in auth.list_api_keys(conn, user_id)]


@router.post("/users/{user_id}/api-keys", status_code=201)
def create_key(
    user_id: UserId, spec: models.ApiKeyIn, user: CurrentUser, engine: EngineDep
) -> models.ApiKeyCreated:
    """A new key; ``key`` is in this answer only, so store it now."""
    _self_or_admin(user, user_id)
    with db.write(engine) as conn:
        record, key = auth.create_api_key(conn, user_id, spec.name)
    return models.ApiKeyCreated(
        id=record.id, name=record.name, key=key, prefix=record.prefix, created_at=record.created_at
    )


@router.delete("/users/{user_id}/api-keys/{key_id}", status_code=204)
def revoke_key(user_id: UserId, key_id: KeyId, user: CurrentUser, engine: EngineDep) -> Response:
    """Revoke a key: it stops working at once."""
    _self_or_admin(user, user_id)
    with db.write(engine) as conn:
        auth.revoke_api_key(conn, user_id, key_id)
    return Response(status_code=204)

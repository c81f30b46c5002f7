"""``/api/v1/users`` and their API keys: admins manage everyone; a user sees themself and
manages their own keys."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from jobbalancer.api import models
from jobbalancer.api.deps import Admin, CurrentUser, EngineDep
from jobbalancer.refs import MAX_ID
from jobbalancer.service import inputs, users

router = APIRouter(prefix="/api/v1", tags=["users"])

UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="The user's id.")]
KeyId = Annotated[int, Path(ge=1, le=MAX_ID, description="The key's id.")]


@router.get("/me")
def me(user: CurrentUser) -> models.User:
    """The user the API key belongs to."""
    return models.User.from_user(user)


@router.get("/users")
def list_users(user: Admin, engine: EngineDep) -> list[models.User]:
    """Every user, by name (admins only)."""
    return [models.User.from_user(u) for u in users.list_all(engine, user)]


@router.post("/users", status_code=201)
def create_user(spec: inputs.UserIn, user: Admin, engine: EngineDep) -> models.User:
    """Create a user; without a password it can only use API keys."""
    return models.User.from_user(users.create(engine, user, spec))


@router.get("/users/{user_id}")
def get_user(user_id: UserId, user: CurrentUser, engine: EngineDep) -> models.User:
    return models.User.from_user(users.get(engine, user, user_id))


@router.patch("/users/{user_id}")
def update_user(
    user_id: UserId, patch: inputs.UserPatch, user: Admin, engine: EngineDep
) -> models.User:
    """Change name, role, password, commands_allowed, worker_classes (null: all) or disabled."""
    changes: dict[str, Any] = patch.model_dump(exclude_unset=True)
    return models.User.from_user(users.update(engine, user, user_id, changes))


@router.delete("/users/{user_id}", status_code=204)
def delete_user(user_id: UserId, user: Admin, engine: EngineDep) -> Response:
    """Delete a user and their API keys; their jobs stay."""
    users.delete(engine, user, user_id)
    return Response(status_code=204)


@router.get("/users/{user_id}/api-keys")
def list_keys(user_id: UserId, user: CurrentUser, engine: EngineDep) -> list[models.ApiKey]:
    """The user's keys: names and prefixes, never the keys."""
    return [models.ApiKey.from_key(k) for k in users.list_keys(engine, user, user_id)]


@router.post("/users/{user_id}/api-keys", status_code=201)
def create_key(
    user_id: UserId, spec: inputs.ApiKeyIn, user: CurrentUser, engine: EngineDep
) -> models.ApiKeyCreated:
    """A new key; ``key`` is in this answer only, so store it now. ``scope`` (default:
    the user's role's) is never above the user's role (422); ``expires_at`` null: never."""
    record, key = users.create_key(
        engine, user, user_id, spec.name, scope=spec.scope, expires_at=spec.expires_at
    )
    return models.ApiKeyCreated(
        id=record.id, name=record.name, key=key, prefix=record.prefix,
        created_at=record.created_at, scope=record.scope, expires_at=record.expires_at,
    )  # fmt: skip


@router.delete("/users/{user_id}/api-keys/{key_id}", status_code=204)
def revoke_key(user_id: UserId, key_id: KeyId, user: CurrentUser, engine: EngineDep) -> Response:
    """Revoke a key: it stops working at once."""
    users.revoke_key(engine, user, user_id, key_id)
    return Response(status_code=204)

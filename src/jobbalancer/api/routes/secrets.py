"""``/api/v1/secrets``: named secrets for jobs (admins manage; values are write-only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from jobbalancer import vault
from jobbalancer.api import models
from jobbalancer.api.deps import Admin, CurrentUser, EngineDep
from jobbalancer.service import inputs
from jobbalancer.service import secrets as service

router = APIRouter(tags=["secrets"])

SecretRef = Annotated[str, Path(max_length=200, description="The secret's name or id.")]
SECRETS = "/api/v1/secrets"


def _key(request: Request) -> vault.Key | None:
    key: vault.Key | None = request.app.state.secret_key
    return key


@router.get(SECRETS)
def list_secrets(user: CurrentUser, engine: EngineDep) -> list[models.Secret]:
    """Admins and operators: every secret; others: those they may use. Never a value."""
    return [models.Secret.from_secret(s, user) for s in service.list_secrets(engine, user)]


@router.post(SECRETS, status_code=201)
def create_secret(
    spec: inputs.SecretIn, request: Request, user: Admin, engine: EngineDep
) -> models.Secret:
    """A new secret; a name in use is 409 (replace it with PUT)."""
    found = service.create(engine, user, spec, _key(request))
    return models.Secret.from_secret(found, user)


@router.get(SECRETS + "/{ref}")
def get_secret(ref: SecretRef, user: CurrentUser, engine: EngineDep) -> models.Secret:
    return models.Secret.from_secret(service.get(engine, user, ref), user)


@router.put(SECRETS + "/{ref}")
def put_secret(
    ref: SecretRef,
    spec: inputs.SecretPut,
    request: Request,
    response: Response,
    user: Admin,
    engine: EngineDep,
) -> models.Secret:
    """Create the secret ``ref`` names, or replace it whole (value, description, limits);
    201 when made, 200 when replaced."""
    found, created = service.put(engine, user, ref, spec, _key(request))
    response.status_code = 201 if created else 200
    return models.Secret.from_secret(found, user)


@router.patch(SECRETS + "/{ref}")
def patch_secret(
    ref: SecretRef, spec: inputs.SecretPatch, request: Request, user: Admin, engine: EngineDep
) -> models.Secret:
    """Change what is given: ``value``, ``description``, ``worker_classes``, ``users``."""
    found = service.patch(engine, user, ref, spec, _key(request))
    return models.Secret.from_secret(found, user)


@router.delete(SECRETS + "/{ref}", status_code=204)
def delete_secret(ref: SecretRef, user: Admin, engine: EngineDep) -> Response:
    """Delete a secret; jobs that name it and have not started fail when they would."""
    service.delete(engine, user, ref)
    return Response(status_code=204)

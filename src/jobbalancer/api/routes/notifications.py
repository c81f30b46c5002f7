"""``/api/v1/notification-targets``, ``/api/v1/notification-rules`` (admins change; everyone
lists targets to name one in a job) and ``/api/v1/notifications`` (deliveries)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from jobbalancer.api import models
from jobbalancer.api.deps import Admin, CurrentUser, EngineDep, SettingsDep
from jobbalancer.refs import MAX_ID
from jobbalancer.service import inputs, notifications

router = APIRouter(tags=["notifications"])

TargetRef = Annotated[str, Path(max_length=200, description="The target's name or id.")]
RuleId = Annotated[int, Path(ge=1, le=MAX_ID)]
TARGETS = "/api/v1/notification-targets"


@router.get(TARGETS)
def list_targets(user: CurrentUser, engine: EngineDep) -> list[models.NotificationTarget]:
    """Every target; secrets never, URLs and recipients to admins only."""
    found = notifications.list_targets(engine, user)
    return [models.NotificationTarget.from_target(t, user) for t in found]


@router.post(TARGETS, status_code=201)
def create_target(
    spec: inputs.NotificationTargetIn, request: Request, user: Admin, engine: EngineDep
) -> models.NotificationTarget:
    target = notifications.create_target(engine, user, spec, request.app.state.secret_key)
    return models.NotificationTarget.from_target(target, user)


@router.get(TARGETS + "/{ref}")
def get_target(ref: TargetRef, user: CurrentUser, engine: EngineDep) -> models.NotificationTarget:
    target = notifications.get_target(engine, user, ref)
    return models.NotificationTarget.from_target(target, user)


@router.patch(TARGETS + "/{ref}")
def update_target(
    ref: TargetRef,
    patch: inputs.NotificationTargetPatch,
    request: Request,
    user: Admin,
    engine: EngineDep,
) -> models.NotificationTarget:
    target = notifications.update_target(engine, user, ref, patch, request.app.state.secret_key)
    return models.NotificationTarget.from_target(target, user)


@router.delete(TARGETS + "/{ref}", status_code=204)
def delete_target(ref: TargetRef, user: Admin, engine: EngineDep) -> Response:
    """Delete a target and its rules; its undelivered notifications are marked failed."""
    notifications.delete_target(engine, user, ref)
    return Response(status_code=204)


@router.post(TARGETS + "/{ref}/test")
async def test_target(
    ref: TargetRef, user: Admin, engine: EngineDep, config: SettingsDep
) -> models.TestResult:
    """Send a test notification now (up to 15 s); ``error`` says why it did not go through."""
    error = await run_in_threadpool(notifications.test_target, engine, user, ref, config)
    return models.TestResult(delivered=error is None, error=error)


@router.get("/api/v1/notification-rules")
def list_rules(user: CurrentUser, engine: EngineDep) -> list[models.NotificationRule]:
    return [models.NotificationRule.from_rule(r) for r in notifications.list_rules(engine, user)]


@router.post("/api/v1/notification-rules", status_code=201)
def create_rule(
    spec: inputs.NotificationRuleIn, user: Admin, engine: EngineDep
) -> models.NotificationRule:
    """Jobs of a worker class (null: every job) reaching one of ``on`` notify a target."""
    return models.NotificationRule.from_rule(notifications.create_rule(engine, user, spec))


@router.delete("/api/v1/notification-rules/{rule_id}", status_code=204)
def delete_rule(rule_id: RuleId, user: Admin, engine: EngineDep) -> Response:
    notifications.delete_rule(engine, user, rule_id)
    return Response(status_code=204)


@router.get("/api/v1/notifications")
def list_notifications(
    user: CurrentUser,
    engine: EngineDep,
    job: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="One job's (anyone who sees it).")
    ] = None,
    target: Annotated[inputs.QueryText, Query(max_length=200)] = None,
    state: Annotated[
        inputs.QueryText, Query(max_length=20, description="pending, delivered, failed")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[models.Notification]:
    """Notifications, newest first: a job's, or (admins) everyone's."""
    found = notifications.list_notifications(
        engine, user, job_id=job, target=target, state=state, limit=limit
    )
    return [models.Notification.from_notification(n) for n in found]

"""``/notifications`` (admins): notification targets (create, test, delete), the rules of
worker classes and of every job, the mail server as configured, and recent deliveries.

The forms are read as the API's bodies (``inputs.NotificationTargetIn`` and
``NotificationRuleIn``) and go through the same service as ``/api/v1/notification-*``.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Path
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from jobbalancer import classes, db, errors, notify, settings
from jobbalancer.refs import MAX_ID
from jobbalancer.service import inputs, notifications
from jobbalancer.web import deps, pages

router = APIRouter(include_in_schema=False)

Id = Annotated[int, Path(ge=1, le=MAX_ID)]
_EMPTY = {"name": "", "kind": "webhook", "url": "", "recipients": ""}


@router.get("/notifications")
def notifications_page(page: deps.Admin) -> Response:
    return _render(page)


def _render(
    page: deps.Page, *, form: dict[str, str] | None = None, error: str | None = None,
    status: int = 200,
) -> Response:  # fmt: skip
    with db.read(page.engine) as conn:
        targets = notify.list_targets(conn)
        rules = notify.list_rules(conn)
        recent = notify.list_notifications(conn, limit=50)
        all_classes = classes.list_all(conn)
    return page.render(
        "notifications.html",
        active="notifications",
        status=status,
        targets=targets,
        rules=rules,
        recent=recent,
        classes=all_classes,
        events=notify.EVENTS,
        kinds=notify.KINDS,
        smtp=page.request.app.state.settings.notify,
        form=form or dict(_EMPTY),
        error=error,
    )


@router.post("/notifications/targets")
def create_target(page: deps.Admin) -> Response:
    form = {name: page.field(name).strip() for name in ("name", "kind", "url", "recipients")}
    body: dict[str, Any] = {"name": form["name"], "kind": form["kind"]}
    if form["url"]:
        body["url"] = form["url"]
    if page.field("secret"):
        body["secret"] = page.field("secret")  # never sent back to the page
    recipients = [r.strip() for r in form["recipients"].replace(";", ",").split(",") if r.strip()]
    if recipients:
        body["recipients"] = recipients
    try:
        spec = inputs.NotificationTargetIn.model_validate(body)
        created = notifications.create_target(page.engine, page.user, spec, page.secret_key)
    except pydantic.ValidationError as exc:
        return _render(page, form=form, error=inputs.first_message(exc), status=422)
    except errors.JobBalancerError as exc:
        return _render(page, form=form, error=exc.message, status=exc.status)
    return pages.redirect("/notifications", f"Notification target {created.name} created.")


@router.post("/notifications/targets/{target_id}/test")
async def test_target(target_id: Id, page: deps.Admin) -> Response:
    """Send a test notification now and say how it went."""
    config = page.request.app.state.settings
    name, error = await run_in_threadpool(_test_target, page, target_id, config)
    if error is None:
        return pages.redirect("/notifications", f"Test notification delivered to {name}.")
    return pages.redirect("/notifications", f"Test to {name} failed: {error}", error=True)


def _test_target(
    page: deps.Page, target_id: int, config: settings.Settings
) -> tuple[str, str | None]:
    """The target's name and why its test failed (None: delivered), in a thread: the
    route is async (the test waits up to 15 s), a read on the event loop stalls them all."""
    error = notifications.test_target(page.engine, page.user, target_id, config)
    with db.read(page.engine) as conn:
        return notify.get_target(conn, target_id).name, error


@router.post("/notifications/targets/{target_id}/delete")
def delete_target(target_id: Id, page: deps.Admin) -> Response:
    name = notifications.delete_target(page.engine, page.user, target_id).name
    return pages.redirect("/notifications", f"Notification target {name} deleted.")


@router.post("/notifications/rules")
def create_rule(page: deps.Admin) -> Response:
    body: dict[str, Any] = {"on": page.fields("on"), "target": page.field("target")}
    if page.field("worker_class"):
        body["worker_class"] = page.field("worker_class")
    try:
        spec = inputs.NotificationRuleIn.model_validate(body)
        notifications.create_rule(page.engine, page.user, spec)
    except pydantic.ValidationError as exc:
        return pages.redirect("/notifications", inputs.first_message(exc), error=True)
    except errors.JobBalancerError as exc:
        return pages.redirect("/notifications", exc.message, error=True)
    return pages.redirect("/notifications", "Rule added.")


@router.post("/notifications/rules/{rule_id}/delete")
def delete_rule(rule_id: Id, page: deps.Admin) -> Response:
    notifications.delete_rule(page.engine, page.user, rule_id)
    return pages.redirect("/notifications", "Rule deleted.")

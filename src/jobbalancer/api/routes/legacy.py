"""``POST /addJob``: the original Job Balancer's endpoint, so existing callers keep working.

Its callers send ids and numbers as JSON strings as often as numbers (``"scriptId": "1"``,
``"watchdog": "10"``), the key in the body, and sometimes a form instead of JSON; all of
that is accepted. Answers keep the original shape, ``{"result", "message", "jobId"}``,
with ``result: false`` and a 4xx status on rejection (``error``/``field`` are extra).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from jobbalancer import auth, errors, jobs
from jobbalancer.api import models
from jobbalancer.api.deps import EngineDep, authenticate, client_address, key_from_headers
from jobbalancer.service import inputs, submission

router = APIRouter(tags=["legacy"])

# The original's field names for ours, to name them in messages as the caller wrote them.
_LEGACY_NAMES = {"script": "scriptId", "worker_class": "workerClassId"}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _ref(value: Any, field: str) -> int | str:
    """An id given as a number or a digit string (a name is passed through)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else text
    raise errors.InvalidInput(f"{field} must be an id", field=field)


def _number(value: Any, field: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise errors.InvalidInput(f"{field} must be a number of seconds", field=field)


def _flag(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, int | str) else ""
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise errors.InvalidInput(f"{field} must be true or false", field=field)


def to_submit(data: dict[str, Any]) -> inputs.JobSubmit:
    """The original body as a submission; errors name the original's fields."""
    fields: dict[str, Any] = {}
    if not _blank(data.get("command")):
        fields["command"] = data["command"]
    if not _blank(data.get("scriptId")):
        fields["script"] = _ref(data["scriptId"], "scriptId")
    if not _blank(data.get("params")):
        params = data["params"]
        fields["params"] = params if isinstance(params, list) else [params]
    if not _blank(data.get("watchdog")):
        fields["watchdog"] = _number(data["watchdog"], "watchdog")
    if not _blank(data.get("workerClassId")):
        fields["worker_class"] = _ref(data["workerClassId"], "workerClassId")
    if not _blank(data.get("need_realtime")):
        fields["need_realtime"] = _flag(data["need_realtime"], "need_realtime")
    try:
        return inputs.JobSubmit.model_validate(fields)
    except ValidationError as exc:
        field, message = inputs.describe(exc.errors()[0])
        name = field.split(".")[0]
        legacy = _LEGACY_NAMES.get(name, name)
        raise errors.InvalidInput(message.replace(name, legacy, 1), field=legacy) from None


async def _read_body(request: Request) -> dict[str, Any]:
    """The body as a dict, from JSON or a form."""
    if "form" in request.headers.get("content-type", ""):
        try:
            form = await request.form()
        except Exception as exc:  # whatever the multipart parser disliked
            raise errors.BadRequest("the form could not be read") from exc
        data: Any = {k: v for k, v in form.items() if isinstance(v, str)}
        params = [p for p in form.getlist("params") if isinstance(p, str)]
        if params:
            data["params"] = params
    else:
        raw = await request.body()
        try:
            data = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError):
            raise errors.BadRequest("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise errors.BadRequest("the body must be a JSON object")
    return data


def _submit(
    engine: sa.Engine,
    key: str | None,
    cache: auth.KeyCache | None,
    data: dict[str, Any],
    limiter: submission.RateLimiter,
    address: str,
) -> jobs.Job:
    """Who asks (first), then their job: one thread hop for both."""
    user = dataclasses.replace(authenticate(engine, key, cache), address=address)
    [job] = submission.submit(engine, user, [to_submit(data)], prefix=False, limiter=limiter)
    return job


def _answer(status: int, result: bool, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"result": result, "message": message, **extra}, status_code=status)


def _accepted(job: jobs.Job) -> JSONResponse:
    if job.state == jobs.State.OCCUPIED:
        message = f"no worker has a free slot; job {job.id} was not run"
        return _answer(409, False, message, jobId=job.id, error="occupied")
    where = f"assigned to {job.worker_name}" if job.worker_name else "waiting for a free worker"
    return _answer(200, True, f"job {job.id} submitted, {where}", jobId=job.id)


@router.post(
    "/addJob",
    response_model=models.LegacyResult,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": models.LegacyJob.model_json_schema()}}
        }
    },
)
async def add_job(request: Request, engine: EngineDep) -> JSONResponse:
    """Submit a job the way the original Job Balancer took it."""
    try:
        data = await _read_body(request)
        key = data.get("apiKey") if isinstance(data.get("apiKey"), str) else None
        key = key or key_from_headers(request)
        limiter = submission.rate_limiter(request.app.state)
        cache = getattr(request.app.state, "key_cache", None)
        address = client_address(request)
        job = await run_in_threadpool(_submit, engine, key, cache, data, limiter, address)
    except errors.JobBalancerError as exc:
        field = _LEGACY_NAMES.get(exc.field or "", exc.field)
        extra = {"error": exc.code} | ({"field": field} if field else {})
        return _answer(exc.status, False, exc.message, **extra)
    return _accepted(job)

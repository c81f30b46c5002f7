"""Every error the API answers, as JSON ``{"error", "message"[, "field"]}``, mapped in one place.

The core raises :mod:`jobbalancer.errors` types; request parsing raises FastAPI's
validation errors; routing raises Starlette's HTTP exceptions. Database errors a client
could provoke despite validation are mapped to 4xx/503 as a safety net; anything else is
a bug: logged with its traceback and answered 500 without one.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from jobbalancer import errors
from jobbalancer.service import inputs

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """An error body as every API error has it."""
    out: dict[str, Any] = {"error": code, "message": message}
    if field is not None:
        out["field"] = field
    return {**out, **extra}


def validation_response(exc: RequestValidationError) -> JSONResponse:
    errs = list(exc.errors())
    first = errs[0] if errs else {}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return JSONResponse(
            body("bad_request", f"the request body is not valid JSON: {detail}".rstrip(": ")),
            status_code=400,
        )
    field, message = inputs.describe(first)
    return JSONResponse(body("invalid", message, field or None), status_code=422)


def error_response(exc: errors.JobBalancerError) -> JSONResponse:
    content = exc.to_dict()
    content["message"] = errors.with_field(exc.message, exc.field)
    if isinstance(exc, errors.Occupied) and exc.job is not None:
        content["job"] = exc.job
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if isinstance(exc, errors.LoginThrottled):
        headers = {"Retry-After": str(exc.retry_after)}
    return JSONResponse(content, status_code=exc.status, headers=headers)


def _http_response(request: Request, exc: HTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"there is no {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return JSONResponse(body(code, message), status_code=exc.status_code, headers=exc.headers)


def _database_response(exc: sa.exc.DBAPIError) -> JSONResponse:
    # Validation should have caught whatever a client sent; if it did not, the client
    # still gets a 4xx and we get a log line to fix the validation.
    if isinstance(exc, sa.exc.IntegrityError):
        log.warning("database refused a write: %s", exc.orig)
        return JSONResponse(body("conflict", "this conflicts with existing data"), 409)
    if isinstance(exc, sa.exc.DataError):
        log.warning("database refused a value: %s", exc.orig)
        return JSONResponse(body("invalid", "a value is out of range or too long"), 422)
    # A deadlock or lock timeout (retrying helps), or a bug: the traceback tells which.
    log.error("database error", exc_info=exc)
    return JSONResponse(body("database_busy", "the database could not do this now; try again"), 503)


def _internal_response(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        body("internal", "internal server error; the server log has the details"), 500
    )


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(errors.JobBalancerError)
    async def _jobbalancer(request: Request, exc: errors.JobBalancerError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return _http_response(request, exc)

    @app.exception_handler(sa.exc.IntegrityError)
    @app.exception_handler(sa.exc.DataError)
    @app.exception_handler(sa.exc.OperationalError)
    async def _database(request: Request, exc: sa.exc.DBAPIError) -> JSONResponse:
        return _database_response(exc)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return _internal_response(request, exc)

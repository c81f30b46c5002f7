"""The HTTP application, assembled in this one place by :func:`create_app`: the body limit
and security headers, the JSON API (:mod:`jobbalancer.api`), the web UI
(:mod:`jobbalancer.web`, whose error pages wrap the API's handlers), the server's
background supervisor, and the first admin."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobbalancer import __version__, api, db, monitor, notify, vault, web
from jobbalancer.api import errors
from jobbalancer.errors import ConfigError
from jobbalancer.service import firing, users
from jobbalancer.settings import Settings
from jobbalancer.web import security

log = logging.getLogger(__name__)

# Larger than any sane job or script (scripts stop at 10 MiB), small enough to refuse
# before a client fills the server's memory.
MAX_BODY_BYTES = 20 * 1024 * 1024


def create_app(
    settings: Settings, engine: sa.Engine | None = None, *, supervise: bool = True
) -> FastAPI:
    """The API server for ``settings``.

    Without ``engine`` one is made from ``settings.database_url`` (and disposed of at
    shutdown). The schema is brought up to date, and on an empty user table an admin is
    created and printed once. ``supervise`` runs the balancer/monitor loop while the app
    is served (tests turn it off and drive the balancer themselves).
    """
    owns_engine = engine is None
    if engine is None:
        engine = db.connect(settings.database_url, pool_size=settings.database.pool_size)
    db.upgrade(engine)
    secret_key = _secret_key(engine, settings)
    first_admin = users.ensure_first_admin(engine)
    if first_admin is not None:
        print_first_admin(first_admin)

    app = FastAPI(
        title="jobbalancer",
        version=__version__,
        summary="Spread shell commands and stored scripts over a cluster of workers.",
        description="Authenticate with `Authorization: Bearer <api-key>` (or `X-API-Key`).",
        # Served by routes of our own, for signed-in callers only: api/routes/docs.py
        # (the schema) and web/routes/docs.py (Swagger UI, vendored).
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan(engine, settings, supervise=supervise, owns_engine=owns_engine),
    )
    app.state.engine = engine
    app.state.settings = settings
    app.state.first_admin = first_admin
    app.state.secret_key = secret_key
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(security.SecurityHeaders)
    api.install(app, engine)  # the routes and the error handlers
    web.install(app)  # the UI's pages (after the API's error handlers, which it wraps)
    return app


def _secret_key(engine: sa.Engine, settings: Settings) -> vault.Key | None:
    """The key for secrets (None: this server has none, and refuses to store one), checked
    against the key the database's secrets were sealed with; notification targets'
    secrets an older version kept in clear are encrypted now."""
    key = vault.from_settings(settings)
    if key is None:
        return None
    with db.write(engine) as conn:
        stored = vault.check_key_id(conn, key)
        if stored != key.id:
            if vault.anything_sealed(conn):
                raise ConfigError(
                    f"this server's secret key (id {key.id}, from {key.source}) is not the "
                    f"one this database's secrets were encrypted with (id {stored}): give it "
                    "the same key file or JOBBALANCER_SECRET_KEY as the first server "
                    "(docs/operations.md, 'Secrets')",
                    field="secret_key",
                )
            vault.take_key_id(conn, key)
        sealed = notify.seal_stored(conn, key)
    if sealed:
        log.info("encrypted the secrets of %d notification target(s) stored in clear", sealed)
    return key


def _lifespan(
    engine: sa.Engine, settings: Settings, *, supervise: bool, owns_engine: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        supervisor = None
        if supervise:
            supervisor = monitor.Supervisor(
                engine,
                settings.server.balance_interval,
                settings,
                leader_loops=[firing.Firer(engine).run],
            )
            supervisor.start()
        try:
            yield
        finally:
            if supervisor is not None:
                await run_in_threadpool(supervisor.stop)  # joins its thread: not on the loop
            if owns_engine:
                engine.dispose()

    return lifespan


def print_first_admin(first: users.FirstAdmin) -> None:
    """Show the first admin's credentials, boxed, once: they are not stored in clear."""
    user, password, key = first
    lines = [
        "jobbalancer: first start, an admin user was created",
        "",
        f"  user:     {user.name}",
        f"  password: {password}",
        f"  API key:  {key}",
        "",
        "Store these now: they are shown only this once.",
    ]
    width = max(len(line) for line in lines)
    border = "+" + "-" * (width + 2) + "+"
    box = [border, *(f"| {line.ljust(width)} |" for line in lines), border]
    print("\n".join(box), flush=True)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a JSON 413, before reading them whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # Raised inside the app's body read, so the app's own handler answers it.
                raise HTTPException(413, self._message)
            return message

        await self.app(scope, limited_receive, send)

    @property
    def _message(self) -> str:
        return f"the request body is larger than {self.max_bytes // (1024 * 1024)} MiB"

    async def _refuse(self, send: Send) -> None:
        content = json.dumps(errors.body("too_large", self._message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})

"""The JSON API (docs/api.md): :func:`install` adds its routes and its error handlers to
the app that :func:`jobbalancer.app.create_app` assembles."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import FastAPI

from jobbalancer import auth
from jobbalancer.api import deps, errors
from jobbalancer.api.routes import (
    audit,
    classes,
    docs,
    health,
    jobs,
    legacy,
    metrics,
    notifications,
    schedules,
    scripts,
    secrets,
    settings,
    stats,
    users,
    workers,
)

__all__ = ["install"]

ROUTERS = (
    jobs, workers, classes, scripts, users, settings, stats, legacy, health, metrics, docs,
    notifications, schedules, secrets, audit,
)  # fmt: skip


def install(app: FastAPI, engine: sa.Engine) -> None:
    """The API's error handlers, routes, API-key use stamps and metrics registry."""
    app.state.key_usage = deps.KeyUsage()
    app.state.key_cache = auth.KeyCache()
    app.state.metrics_registry = metrics.make_registry(
        engine, app.state.settings.server.metrics_settle
    )
    errors.install(app)
    for module in ROUTERS:
        app.include_router(module.router)

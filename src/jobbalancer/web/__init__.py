"""The web UI: server-rendered pages (Jinja2) with htmx for the live parts, added to the
app by :func:`install` (called from :func:`jobbalancer.app.create_app`). Where things are
and how to add a page: docs/web.md."""

from __future__ import annotations

import importlib
import pkgutil

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from jobbalancer.web import errors, pages, routes

__all__ = ["install"]


def install(app: FastAPI) -> None:
    """Add the UI's pages, static files and HTML error pages to ``app``."""
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    for info in sorted(pkgutil.iter_modules(routes.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{routes.__name__}.{info.name}")
        app.include_router(module.router)
    errors.install(app)

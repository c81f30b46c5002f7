"""The web UI: server-rendered pages (Jinja2) with htmx for the live parts, served by the
API's own FastAPI app (:func:`install`, called from ``api.app.create_app``).

Where things are
----------------
* ``routes/<name>.py`` — one module per page (or group of pages). Each defines
  ``router = APIRouter(include_in_schema=False)``; :func:`install` includes every module
  in ``routes/`` by itself, so a new page is a new file, nothing else to register.
* ``templates/`` — ``base.html`` (layout, nav, flash area), one template per page, and
  partials named ``_<page>_<part>.html`` for what htmx refreshes or swaps.
* ``static/`` — ``app.css`` (ours), ``app.js`` (ours: no inline scripts, the CSP forbids
  them), vendored ``htmx.min.js`` with its licence. No build step: edit and reload.
* ``deps.py`` — who is asking: :data:`deps.Viewer` (any signed-in user),
  :data:`deps.Actor` (any role but viewer), :data:`deps.Submitter`, :data:`deps.Operator`,
  :data:`deps.Admin`. Each gives a
  :class:`deps.Page`; anonymous visitors are sent to the login form, a wrong role gets a
  403 page. On POST/PUT/PATCH/DELETE the dependency has already checked the CSRF token
  (hidden field ``csrf_token`` in forms, header ``X-CSRF-Token`` from htmx, which
  ``<body hx-headers>`` adds to every htmx request) and parsed the form (``page.form``).
* ``pages.py`` — templates, filters (``dt``, ``short_dt``, ``ago``, ``seconds``, ``size``,
  ``signal``), ``duration()`` and ``when()`` (a ``<time>`` that app.js shows in the
  browser's time zone: use it for every time on a page), the nav,
  :func:`pages.redirect` with a flash message.
* ``errors.py`` — errors on browser routes become readable HTML pages (JSON stays for
  ``/api``); ``security.py`` — security headers (CSP: scripts and styles from 'self' only,
  so no ``<script>`` blocks, no ``style=""`` attributes, no ``hx-on``).

Adding a page
-------------
``routes/widgets.py``::

    from fastapi import APIRouter
    from fastapi.responses import Response

    from jobbalancer import db, widgets
    from jobbalancer.web import deps, pages

    router = APIRouter(include_in_schema=False)

    @router.get("/widgets")
    def widgets_page(page: deps.Viewer) -> Response:
        with db.read(page.engine) as conn:
            found = widgets.list_all(conn)
        return page.render("widgets.html", active="widgets", widgets=found)

    @router.post("/widgets/{widget_id}/delete")
    def delete_widget(widget_id: int, page: deps.Operator) -> Response:
        with db.write(page.engine) as conn:
            widgets.delete(conn, widget_id)  # a JobBalancerError becomes a readable page
        return pages.redirect("/widgets", f"Widget {widget_id} deleted.")

``templates/widgets.html`` extends ``base.html`` and fills ``{% block content %}``
(``{% block title %}`` too). Forms carry ``{{ csrf_field() }}``. To show a validation
error next to a form instead of an error page, catch ``errors.JobBalancerError`` and
render the page again with ``error=exc.message`` (see ``routes/settings.py``).
Show buttons only to roles that may use them (``user.is_admin``, ``can_operate``): the
server refuses anyway, but a viewer should not see buttons that fail. The nav entry is
``pages.NAV``; ``active`` is its key. Write through the managers (jobs.py, registry.py,
…), never to tables. Browser tests live in ``tests/browser`` (``admin_page``,
``login_as``, ``screenshot`` fixtures).
"""

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

"""Rendering pages: the templates, their filters, the nav, and flash messages."""

from __future__ import annotations

import signal
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from jobbalancer import __version__, auth
from jobbalancer.service import access

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
FLASH_COOKIE = "jb_flash"


@dataclass(frozen=True)
class NavItem:
    key: str
    href: str
    label: str
    admin_only: bool = False


NAV = (
    NavItem("dashboard", "/", "Dashboard"),
    NavItem("jobs", "/jobs", "Jobs"),
    NavItem("schedules", "/schedules", "Schedules"),
    NavItem("workers", "/workers", "Workers"),
    NavItem("classes", "/classes", "Classes"),
    NavItem("scripts", "/scripts", "Scripts"),
    NavItem("users", "/users", "Users", admin_only=True),
    NavItem("notifications", "/notifications", "Notifications", admin_only=True),
    NavItem("secrets", "/secrets", "Secrets", admin_only=True),
    NavItem("activity", "/activity", "Activity", admin_only=True),
    NavItem("settings", "/settings", "Settings", admin_only=True),
    NavItem("docs", "/docs", "API"),
)


# -- filters --------------------------------------------------------------------------------


def fmt_dt(value: datetime | None, seconds: bool = True) -> str:
    """``2026-11-29 18:20:03`` (UTC); ``—`` for none."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def short_dt(value: datetime | None, now: datetime | None = None) -> str:
    """``18:20:03`` today, ``11-28 18:20`` before (UTC): dense, for tables."""
    if value is None:
        return "—"
    value = value.astimezone(UTC)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if value.date() == now.date():
        return value.strftime("%H:%M:%S")
    if value.year == now.year:
        return value.strftime("%m-%d %H:%M")
    return value.strftime("%Y-%m-%d")


def when(value: datetime | None, now: datetime | None = None, *, short: bool = False) -> Markup:
    """A time as ``<time>``: UTC in the page, shown in the browser's time zone by app.js
    (the UTC time stays in its tooltip). ``short``: as :func:`short_dt`, for tables."""
    if value is None:
        return Markup("—")
    text = short_dt(value, now) if short else fmt_dt(value)
    return Markup('<time datetime="{}" data-when="{}" title="{} UTC">{}</time>').format(
        iso(value), "short" if short else "full", fmt_dt(value), text
    )


def iso(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fmt_seconds(seconds: float | None) -> str:
    """``850ms``, ``12.4s``, ``3m 05s``, ``2h 03m``, ``4d 02h``."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def duration(start: datetime | None, end: datetime | None, now: datetime | None = None) -> str:
    """How long from ``start`` to ``end`` (to ``now`` while running)."""
    if start is None:
        return "—"
    stop = end or now
    if stop is None:
        return "—"
    return fmt_seconds(max((stop - start).total_seconds(), 0.0))


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """``5.0s ago``, ``just now`` under a second (a heartbeat's milliseconds are noise);
    ``—`` for none."""
    if value is None:
        return "—"
    now = now or datetime.now(UTC)
    seconds = (now - value).total_seconds()
    return "just now" if seconds < 1 else f"{fmt_seconds(seconds)} ago"


def size(n: int | None) -> str:
    """Bytes as ``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def signal_name(number: int | None) -> str:
    """``15`` → ``SIGTERM (15)``; a number no signal has stays a number."""
    if not number:
        return "—"
    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return str(number)


def in_zone(value: datetime | None, tz: str) -> str:
    """A time in the IANA zone ``tz`` with its offset that day: ``2026-03-29 03:00:00
    CEST (+02:00)`` (a schedule's own time); ``—`` for none."""
    if value is None:
        return "—"
    try:
        local = value.astimezone(ZoneInfo(tz))
    except (ZoneInfoNotFoundError, ValueError):
        return fmt_dt(value) + " UTC"
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()} ({offset[:3]}:{offset[3:]})"


def until(value: datetime | None, now: datetime | None = None) -> str:
    """``in 5.0s``, ``in 3m 05s``; ``due`` for a time not in the future; ``—`` for none."""
    if value is None:
        return "—"
    seconds = (value - (now or datetime.now(UTC))).total_seconds()
    return "due" if seconds < 0.5 else f"in {fmt_seconds(seconds)}"


TEMPLATES.env.filters.update(
    signal=signal_name,
    dt=fmt_dt,
    short_dt=short_dt,
    iso=iso,
    seconds=fmt_seconds,
    size=size,
    ago=ago,
    in_zone=in_zone,
    until=until,
)
TEMPLATES.env.globals.update(duration=duration, when=when, version=__version__)


# -- rendering ------------------------------------------------------------------------------


def render(
    request: Request,
    template: str,
    *,
    session: auth.WebSession | None,
    active: str = "",
    status: int = 200,
    **values: Any,
) -> Response:
    """``template`` with what every page needs: the user, the CSRF token, the nav, the
    flash message of a redirect (then forgotten)."""
    user = session.user if session else None
    csrf = session.csrf_token if session else ""
    context = {
        "user": user,
        "csrf": csrf,
        "csrf_field": lambda: csrf_field(csrf),
        "nav": [item for item in NAV if user and (user.is_admin or not item.admin_only)],
        "active": active,
        "flash": read_flash(request),
        "can_submit": bool(user and user.can_submit),
        "can_operate": bool(user and access.can_operate(user)),
        **values,
    }
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status)
    if FLASH_COOKIE in request.cookies:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def csrf_field(token: str) -> Markup:
    return Markup('<input type="hidden" name="csrf_token" value="{}">').format(token)


def redirect(url: str, flash: str | None = None, *, error: bool = False) -> Response:
    """303 to ``url`` (after a form POST), with a message shown once on the next page."""
    response = RedirectResponse(url, status_code=303)
    if flash:
        set_flash(response, flash, error=error)
    return response


def set_flash(response: Response, message: str, *, error: bool = False) -> None:
    value = urllib.parse.quote(("!" if error else "") + message[:500])
    response.set_cookie(FLASH_COOKIE, value, max_age=60, path="/", httponly=True, samesite="lax")


def read_flash(request: Request) -> dict[str, Any] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    text = urllib.parse.unquote(raw)[:500]
    error = text.startswith("!")
    return {"message": text.removeprefix("!"), "error": error}


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (no ``//evil``)."""
    if not target or not target.startswith("/") or "\\" in target:
        return "/"
    # Browsers drop tabs and newlines in URLs: "/\t/evil.example" would become "//evil…".
    cleaned = "".join(c for c in target if c > " ")
    if cleaned != target or cleaned.startswith("//"):
        return "/"
    return target

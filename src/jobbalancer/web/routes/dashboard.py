"""``/``: the dashboard (anyone else is sent to the login form). Its figures refresh
themselves: htmx fetches ``/dashboard/live`` every few seconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from jobbalancer import balancer, db, jobs, stats
from jobbalancer.service import schedules as schedule_service
from jobbalancer.web import deps

router = APIRouter(include_in_schema=False)

# The chart's drawing area, in SVG user units (the SVG scales to its box).
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 250, 30, 18, 8
UPCOMING = 5  # next scheduled runs shown


@router.get("/")
def home(page: deps.Viewer) -> Response:
    return page.render("dashboard.html", active="dashboard", **_figures(page))


@router.get("/dashboard/live")
def dashboard_live(page: deps.Viewer) -> Response:
    """The part of the dashboard that refreshes itself."""
    return page.render("_dashboard_live.html", **_figures(page))


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    ok_y: float
    ok_h: float
    bad_y: float
    bad_h: float
    title: str


def chart(minutes: list[stats.Minute]) -> dict[str, Any]:
    """Stacked bars (done below, failures above) scaled to the busiest minute."""
    top = max([m.done + m.failed for m in minutes] + [1])
    scale = (HEIGHT - BOTTOM - TOP) / _nice(top)
    step = (WIDTH - LEFT) / len(minutes)
    base = HEIGHT - BOTTOM
    bars = []
    for i, m in enumerate(minutes):
        ok_h, bad_h = m.done * scale, m.failed * scale
        title = f"{m.start:%H:%M} UTC: {m.done} done, {m.failed} failed"
        bars.append(Bar(LEFT + i * step + 1, max(step - 2, 1), base - ok_h, ok_h,
                        base - ok_h - bad_h, bad_h, title))  # fmt: skip
    ticks = [(base - f * _nice(top) * scale, round(f * _nice(top))) for f in (0, 0.5, 1)]
    return {
        "bars": bars, "ticks": ticks, "width": WIDTH, "height": HEIGHT, "left": LEFT,
        "base": base, "labels": [(LEFT + i * step, minutes[i].start) for i in (0, 15, 30, 45)]
        + [(WIDTH - 2, minutes[-1].start)],
    }  # fmt: skip


def _nice(n: int) -> int:
    """The axis top: ``n`` rounded up to 2, 5 or 10 times a power of ten (even, so the
    middle tick is whole)."""
    magnitude = 1
    while True:
        for m in (2, 4, 10):
            if n <= m * magnitude:
                return m * magnitude
        magnitude *= 10


def _figures(page: deps.Page) -> dict[str, Any]:
    with db.read(page.engine) as conn:
        per_worker = stats.by_worker(conn)
        summary = stats.Summary(stats.jobs_by_state(conn), per_worker, stats.slots(per_worker))
        minutes = stats.per_minute(conn)  # done and failures apart, unlike the summary's
        now = db.now(conn)
        wait_reasons = balancer.wait_reasons(conn)
    live = [w for w in summary.workers if w.state != "offline"]
    return {
        "summary": summary,
        "states": [s.value for s in jobs.State],
        "total_jobs": sum(summary.jobs.values()),
        "workers_online": len(live),
        "workers_offline": len(summary.workers) - len(live),
        "done_hour": sum(m.done for m in minutes),
        "failed_hour": sum(m.failed for m in minutes),
        "chart": chart(minutes),
        # The soonest runs of the schedules this user may see.
        "upcoming": schedule_service.upcoming(page.engine, page.user, UPCOMING),
        "now": now,
        "wait_reasons": wait_reasons,
    }

"""Cron expressions and time zones: when a schedule fires.

The expressions are evaluated by cronsim (the cron engine of healthchecks.io), chosen for
its daylight-saving behaviour, which is cronie's and the one our users expect:

* a time that does not exist that day (02:30 when clocks jump from 02:00 to 03:00) fires
  once, at the next valid instant (03:00);
* a time that happens twice (02:30 when clocks go back from 03:00 to 02:00) fires once,
  at its first pass. Expressions whose hour field is a wildcard (``*/15 * * * *``) keep
  firing every 15 real minutes through the repeated hour, as an interval should.

Five fields (minute hour day-of-month month day-of-week), the ``@hourly`` … ``@yearly``
aliases, and an optional sixth field **in front** for seconds (``*/10 * * * * *``: every
10 s), which cronsim reads natively. Times come in and go out in UTC; the zone is only
where the expression is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MAX_LENGTH = 200


def expand(expr: str) -> str:
    """``expr`` with an alias replaced by its five fields and spaces normalised."""
    text = " ".join(expr.split())
    return ALIASES.get(text.lower(), text)


def check(expr: str) -> str:
    """The expression, normalised; ValueError with a readable message if it is not one."""
    text = " ".join(expr.split())
    if not text:
        raise ValueError("must not be empty")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"must be at most {MAX_LENGTH} characters")
    fields = expand(text)
    if fields.startswith("@"):
        raise ValueError(f"unknown alias {text!r}; use one of {', '.join(ALIASES)}")
    if len(fields.split()) not in (5, 6):
        raise ValueError(
            "needs 5 fields (minute hour day-of-month month day-of-week), 6 with seconds "
            "in front, or an alias such as @daily"
        )
    try:
        next(CronSim(fields, datetime(2000, 1, 1, tzinfo=UTC)))
    except CronSimError as exc:
        raise ValueError(f"{exc} in {text!r}") from None
    except StopIteration:  # cronsim gives up past its horizon: a date that never comes
        raise ValueError(f"{text!r} never fires") from None
    except Exception:  # whatever else the parser trips on is still a bad expression
        raise ValueError(f"{text!r} is not a cron expression") from None
    return text


def has_seconds(expr: str) -> bool:
    return len(expand(expr).split()) == 6


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ValueError if there is no such zone."""
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin")
    try:
        found = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin"
        ) from None
    if name not in _zone_names() and name != "UTC":
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin")
    return found


_NAMES: set[str] = set()


def _zone_names() -> set[str]:
    if not _NAMES:
        _NAMES.update(available_timezones())
    return _NAMES


def times(expr: str, tz: str, after: datetime) -> Iterator[datetime]:
    """The fire times of ``expr`` read in ``tz``, strictly after ``after``, in UTC.

    Endless for an expression that keeps firing; stops where cronsim's search does, and
    at the ends of the calendar (year 1 or 9999)."""
    try:
        local = after.astimezone(zone(tz))
        for t in CronSim(expand(expr), local):
            yield t.astimezone(UTC)
    except (OverflowError, CronSimError):
        return


def times_before(expr: str, tz: str, until: datetime) -> Iterator[datetime]:
    """The fire times at or before ``until``, latest first, in UTC."""
    try:
        local = (until + timedelta(microseconds=1)).astimezone(zone(tz))
        for t in CronSim(expand(expr), local, reverse=True):
            yield t.astimezone(UTC)
    except (OverflowError, CronSimError):
        return


def next_time(expr: str, tz: str, after: datetime) -> datetime | None:
    """The first fire time strictly after ``after`` (UTC), or None if there is none."""
    return next(times(expr, tz, after), None)


def next_times(
    expr: str, tz: str, after: datetime, count: int, until: datetime | None = None
) -> list[datetime]:
    """Up to ``count`` fire times strictly after ``after``, none past ``until``."""
    found: list[datetime] = []
    for t in times(expr, tz, after):
        if len(found) >= count or (until is not None and t > until):
            break
        found.append(t)
    return found

"""Cron expressions read in a zone: daylight saving (a time that does not exist fires once
at the next valid instant, one that happens twice fires once), month ends, @yearly, the
seconds field, and expressions or zones that are refused."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from jobbalancer import cron, schedules


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(times: list[datetime], tz: str) -> list[str]:
    return [t.astimezone(cron.zone(tz)).isoformat() for t in times]


# -- spring forward: the skipped time fires once, at the next valid instant --------------


@pytest.mark.parametrize(
    ("tz", "expr", "after", "expected"),
    [
        # Berlin, 2026-03-29: 02:00 → 03:00.
        ("Europe/Berlin", "30 2 * * *", utc(2026, 3, 27, 12),
         ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
        # New York, 2026-03-08: 02:00 → 03:00.
        ("America/New_York", "15 2 * * *", utc(2026, 3, 6, 18),
         ["2026-03-07T02:15:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:15:00-04:00"]),
        # Kolkata has no DST: the half-hour offset every day.
        ("Asia/Kolkata", "30 2 * * *", utc(2026, 3, 27, 12),
         ["2026-03-28T02:30:00+05:30", "2026-03-29T02:30:00+05:30", "2026-03-30T02:30:00+05:30"]),
    ],
)  # fmt: skip
def test_spring_forward(tz: str, expr: str, after: datetime, expected: list[str]) -> None:
    assert local(cron.next_times(expr, tz, after, 3), tz) == expected


def test_spring_forward_hourly_skips_nothing_and_doubles_nothing() -> None:
    times = cron.next_times("0 * * * *", "Europe/Berlin", utc(2026, 3, 28, 23, 30), 4)
    assert local(times, "Europe/Berlin") == [
        "2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00",
        "2026-03-29T04:00:00+02:00", "2026-03-29T05:00:00+02:00",
    ]  # fmt: skip
    assert times[1] - times[0] == timedelta(hours=1)


# -- fall back: the repeated time fires once ----------------------------------------------


@pytest.mark.parametrize(
    ("tz", "expr", "after", "expected"),
    [
        # Berlin, 2026-10-25: 03:00 → 02:00, 02:30 happens twice.
        ("Europe/Berlin", "30 2 * * *", utc(2026, 10, 23, 12),
         ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
        # New York, 2026-11-01: 02:00 → 01:00, 01:30 happens twice.
        ("America/New_York", "30 1 * * *", utc(2026, 10, 30, 12),
         ["2026-10-31T01:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    ],
)  # fmt: skip
def test_fall_back(tz: str, expr: str, after: datetime, expected: list[str]) -> None:
    assert local(cron.next_times(expr, tz, after, 3), tz) == expected


def test_fall_back_every_15_minutes_keeps_real_intervals() -> None:
    """A wildcard hour is an interval: through the repeated hour it goes on every 15 real
    minutes (no gap, no two fires at one instant)."""
    times = cron.next_times("*/15 * * * *", "America/New_York", utc(2026, 11, 1, 5, 50), 10)
    gaps = {b - a for a, b in itertools.pairwise(times)}
    assert gaps == {timedelta(minutes=15)}
    assert len(set(times)) == 10


def test_a_whole_year_of_dst_changes_fires_each_day_once() -> None:
    for tz in ("Europe/Berlin", "America/New_York", "Asia/Kolkata"):
        for expr in ("30 2 * * *", "0 3 * * *", "59 1 * * *"):
            times = cron.next_times(expr, tz, utc(2026, 1, 1), 366)
            days = [t.astimezone(cron.zone(tz)).date() for t in times]
            assert len(set(days)) == len(days) == 366, (tz, expr)


# -- calendar -----------------------------------------------------------------------------


def test_end_of_month_and_the_31st() -> None:
    last = cron.next_times("0 0 L * *", "UTC", utc(2026, 1, 15), 3)
    assert [t.date().isoformat() for t in last] == ["2026-01-31", "2026-02-28", "2026-03-31"]
    thirty_first = cron.next_times("0 12 31 * *", "UTC", utc(2026, 1, 31, 13), 3)
    assert [t.date().isoformat() for t in thirty_first] == [
        "2026-03-31", "2026-05-31", "2026-07-31",
    ]  # fmt: skip
    leap = cron.next_times("0 0 29 2 *", "UTC", utc(2026, 1, 1), 2)
    assert [t.year for t in leap] == [2028, 2032]


def test_aliases() -> None:
    assert cron.next_times("@yearly", "Europe/Berlin", utc(2026, 6, 1), 2) == [
        utc(2026, 12, 31, 23), utc(2027, 12, 31, 23),
    ]  # fmt: skip
    assert cron.next_time("@monthly", "UTC", utc(2026, 1, 31)) == utc(2026, 2, 1)
    assert cron.next_time("@weekly", "UTC", utc(2026, 6, 1)) == utc(2026, 6, 7)  # a Sunday
    assert cron.next_time("@daily", "UTC", utc(2026, 6, 1)) == utc(2026, 6, 2)
    assert cron.next_time("@hourly", "UTC", utc(2026, 6, 1, 0, 0, 1)) == utc(2026, 6, 1, 1)


def test_seconds_field_in_front() -> None:
    assert cron.has_seconds("*/10 * * * * *") and not cron.has_seconds("* * * * *")
    times = cron.next_times("*/10 * * * * *", "UTC", utc(2026, 6, 1, 0, 0, 5), 3)
    assert [t.second for t in times] == [10, 20, 30]


def test_times_are_strictly_after_and_before_goes_back() -> None:
    assert cron.next_time("0 * * * *", "UTC", utc(2026, 6, 1, 1)) == utc(2026, 6, 1, 2)
    back = cron.times_before("0 * * * *", "UTC", utc(2026, 6, 1, 1))
    assert [next(back), next(back)] == [utc(2026, 6, 1, 1), utc(2026, 6, 1, 0)]


def test_start_and_end_bound_fire_times() -> None:
    found = schedules.fire_times(
        "0 * * * *", "UTC", utc(2026, 6, 1), 10, start_at=utc(2026, 6, 1, 3),
        end_at=utc(2026, 6, 1, 5),
    )  # fmt: skip
    assert found == [utc(2026, 6, 1, 3), utc(2026, 6, 1, 4), utc(2026, 6, 1, 5)]


# -- refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "must not be empty"),
        ("* * * *", "needs 5 fields"),
        ("1 2 3 4 5 6 7", "needs 5 fields"),
        ("61 * * * *", "Bad minute"),
        ("0 0 30 2 *", "Bad day-of-month"),
        ("@reboot", "unknown alias"),
        ("x" * 201, "at most 200"),
    ],
)
def test_bad_expressions(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cron.check(expr)


def test_expressions_are_normalised() -> None:
    assert cron.check("  */5   *  * * * ") == "*/5 * * * *"
    assert cron.check("@Daily") == "@Daily"
    assert cron.expand("@Daily") == "0 0 * * *"


@pytest.mark.parametrize("name", ["Mars/Base", "", "../etc/passwd", "/etc/localtime", "x" * 70])
def test_unknown_zones(name: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        cron.zone(name)


def test_known_zones() -> None:
    assert str(cron.zone("UTC")) == "UTC"
    assert str(cron.zone("Asia/Kolkata")) == "Asia/Kolkata"

"""Budget period windows: a day, a week (from Monday) or a calendar month, in a time zone."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class Window:
    """One period: its first local day (its identity) and its bounds as aware datetimes."""

    period_start: date
    starts_at: datetime
    ends_at: datetime

    def seconds_left(self, now: datetime) -> int:
        return max(0, int((self.ends_at - now).total_seconds() + 0.999))


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _first_day(period: str, day: date) -> date:
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown period {period!r}")


def _next_first_day(period: str, first: date) -> date:
    if period == "day":
        return first + timedelta(days=1)
    if period == "week":
        return first + timedelta(days=7)
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1)


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    # Midnight wall-clock time in tz; where a DST change skips midnight, zoneinfo
    # resolves it to the instant just after the gap, which is what we want.
    # In UTC: Python subtracts and compares two datetimes of the same zone by wall
    # clock, which is wrong across a DST change.
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def window_at(period: str, tz_name: str, now: datetime) -> Window:
    """The window of `period` in time zone `tz_name` that contains the instant `now`."""
    tz = zone(tz_name)
    first = _first_day(period, now.astimezone(tz).date())
    return Window(first, _local_midnight(first, tz), _local_midnight(_next_first_day(period, first), tz))


def window_starting(period: str, tz_name: str, period_start: date) -> Window:
    tz = zone(tz_name)
    return Window(period_start, _local_midnight(period_start, tz),
                  _local_midnight(_next_first_day(period, period_start), tz))

"""Calendar windows in UTC: the day, the ISO week (from Monday 00:00) and the calendar month a
moment falls in, and the one window of `total`. Pure functions of "now", so a test can put the
clock anywhere (a leap day, a Sunday 23:59:59.999999)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The start of the one window of a `total` limit."""


def window_start(period: str, now: datetime) -> datetime:
    """The start of the `period` window holding `now`."""
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    if period == "total":
        return EPOCH
    raise ValueError(f"unknown period {period!r}")


def window_end(period: str, now: datetime) -> datetime | None:
    """When the `period` window holding `now` ends (the next one starts); None for `total`."""
    start = window_start(period, now)
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    if period == "month":
        year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        return start.replace(year=year, month=month)
    return None


class Windows(NamedTuple):
    """The windows `now` falls in, one per period: what the gateway's statements compare each
    counter's `window_start` with."""

    day: datetime
    week: datetime
    month: datetime

    @classmethod
    def at(cls, now: datetime) -> Windows:
        return cls(window_start("day", now), window_start("week", now), window_start("month", now))

    def start(self, period: str) -> datetime:
        if period == "total":
            return EPOCH
        start: datetime = getattr(self, period)
        return start

"""Calendar windows in UTC: days, ISO weeks from Monday, calendar months, leap days."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from app.limits.periods import EPOCH, Windows, window_end, window_start
from testing.helpers.limits import at


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", at(2026, 11, 27, 23, 59, 59, 999999), at(2026, 11, 27), at(2026, 11, 28)),
        ("day", at(2026, 11, 28), at(2026, 11, 28), at(2026, 11, 29)),
        # ISO weeks start on Monday 00:00 UTC: Sunday night is the old week.
        ("week", at(2026, 11, 29, 23, 59, 59, 999999), at(2026, 11, 23), at(2026, 11, 30)),
        ("week", at(2026, 11, 30), at(2026, 11, 30), at(2026, 12, 7)),
        ("week", at(2026, 12, 31, 12), at(2026, 12, 28), at(2027, 1, 4)),
        ("month", at(2026, 1, 31, 23, 59, 59), at(2026, 1, 1), at(2026, 2, 1)),
        ("month", at(2026, 12, 15), at(2026, 12, 1), at(2027, 1, 1)),
        # A calendar month, never 30 days: February is short, a leap February one day longer.
        ("month", at(2027, 2, 28, 23), at(2027, 2, 1), at(2027, 3, 1)),
        ("month", at(2028, 2, 29, 12), at(2028, 2, 1), at(2028, 3, 1)),
        ("day", at(2028, 2, 29, 12), at(2028, 2, 29), at(2028, 3, 1)),
        ("total", at(2028, 2, 29, 12), EPOCH, None),
    ],
)
def test_windows_are_utc_calendar_periods(
    period: str, now: datetime, start: datetime, end: datetime | None
) -> None:
    assert window_start(period, now) == start
    assert window_end(period, now) == end


def test_an_offset_is_read_in_utc() -> None:
    # 01:30 on Monday in +02:00 is still Sunday 23:30 UTC.
    local = datetime(2026, 11, 30, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert window_start("week", local) == at(2026, 11, 23)
    assert window_start("day", local) == at(2026, 11, 29)


def test_windows_of_a_moment() -> None:
    windows = Windows.at(at(2028, 2, 29, 10))
    assert windows == (at(2028, 2, 29), at(2028, 2, 28), at(2028, 2, 1))
    assert windows.start("total") == EPOCH

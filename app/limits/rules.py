"""The rules of a spend limit, shared by both gateway stores and the portal: which limits a
request is subject to, what a window's counter says now, and the refusal.

A request with an `api_key_id` is subject to its account's limit and its key's limit; without
one, to the account's only. It is refused when, for any of them, what the current window has
spent plus the amount would exceed the limit (holds count while active). The tightest limit's
remaining amount goes back to the gateway, so it can warn before a refusal.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from app.errors import SpendLimitExceeded
from app.limits.periods import window_end
from app.models.limits import ACCOUNT_SCOPE, key_scope
from app.money import format_balance


def scopes(api_key_id: str | None) -> tuple[str, ...]:
    """The scopes a request of this key is subject to."""
    return (ACCOUNT_SCOPE,) if api_key_id is None else (ACCOUNT_SCOPE, key_scope(api_key_id))


class Counter(NamedTuple):
    """A limit and its counter as of the current window, as a statement read (and locked) it
    (the window rule is SQL's: `app.usage.repository._counter_now`)."""

    id: str
    scope: str
    period: str
    limit_micros: int
    window_start: datetime
    spent_micros: int


class Refusal(NamedTuple):
    """The limit that refused an amount, and what its window had spent (as the gateway's
    statements answer it, by these column names)."""

    scope: str
    period: str
    limit_micros: int
    spent_micros: int
    window_start: datetime

    def error(self) -> SpendLimitExceeded:
        """The 402 for an amount the limit of `scope` does not leave room for."""
        resets_at = window_end(self.period, self.window_start)
        remaining = max(0, self.limit_micros - self.spent_micros)
        return SpendLimitExceeded(
            f"The {self.scope} spend limit of {format_balance(self.limit_micros)} USD per "
            f"{self.period} leaves {format_balance(remaining)} USD.",
            scope=self.scope,
            limit=format_balance(self.limit_micros),
            spent=format_balance(self.spent_micros),
            resets_at=resets_at.isoformat().replace("+00:00", "Z") if resets_at else None,
            limit_micros=self.limit_micros,
            spent_micros=self.spent_micros,
        )


def check(counters: list[Counter], amount_micros: int) -> None:
    """Raise the refusal of the first limit that `amount_micros` would take past its limit."""
    for c in counters:
        if c.spent_micros + amount_micros > c.limit_micros:
            raise Refusal(c.scope, c.period, c.limit_micros, c.spent_micros, c.window_start).error()


def tightest_remaining(remaining: list[int]) -> int | None:
    """What the tightest limit leaves (never below zero), None when no limit applies."""
    return max(0, min(remaining)) if remaining else None

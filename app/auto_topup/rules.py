"""The decision rules of auto top-up, as pure functions (no database, no Stripe).

Stripe has no hard/soft flag on a decline, so we define it:

- **hard**: `authentication_required` (the bank wants the customer present), and the decline
  codes that say the card will not work again (`HARD_DECLINE_CODES`). Auto top-up pauses at once.
- **soft**: every other decline (`insufficient_funds`, `generic_decline`, …). The attempt is
  retried after `SOFT_DECLINE_BACKOFF[n - 1]` for the n-th soft decline in a row, and auto top-up
  pauses at the `PAUSE_AFTER_SOFT_DECLINES`-th.
- A Stripe outage or timeout is not a decline: nothing here counts it (the attempt is retried
  with the same idempotency key).

Whatever happens, two attempts of one user are at least `MIN_ATTEMPT_SPACING` apart, and the
attempts of a calendar month (UTC) never add up to more than the monthly limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

HARD_DECLINE_CODES = frozenset(
    {
        "authentication_required",
        "expired_card",
        "lost_card",
        "stolen_card",
        "pickup_card",
        "restricted_card",
        "incorrect_number",
        "invalid_account",
    }
)
SOFT_DECLINE_BACKOFF = (timedelta(hours=1), timedelta(hours=6), timedelta(hours=24))
PAUSE_AFTER_SOFT_DECLINES = 4
"""The first decline and three retries: every delay of `SOFT_DECLINE_BACKOFF` is used once."""
MIN_ATTEMPT_SPACING = timedelta(minutes=10)

DeclineKind = Literal["hard", "soft"]
PausedReason = Literal[
    "authentication_required", "card_declined", "payment_method_removed", "disputed"
]


def classify_decline(stripe_code: str | None, decline_code: str | None) -> DeclineKind:
    """`hard` or `soft` for a declined charge (Stripe's error `code` and `decline_code`)."""
    if stripe_code in HARD_DECLINE_CODES or decline_code in HARD_DECLINE_CODES:
        return "hard"
    return "soft"


@dataclass(frozen=True, slots=True)
class AfterDecline:
    """What a decline does to the settings."""

    paused_reason: PausedReason | None
    """Set when auto top-up pauses now; None when it will retry at `next_attempt_at`."""
    soft_declines: int
    next_attempt_at: datetime | None


def after_decline(
    *, stripe_code: str | None, decline_code: str | None, soft_declines: int, now: datetime
) -> AfterDecline:
    """The settings' next state after a declined attempt; `soft_declines` counts the soft
    declines in a row before this one."""
    if classify_decline(stripe_code, decline_code) == "hard":
        reason: PausedReason = (
            "authentication_required"
            if "authentication_required" in (stripe_code, decline_code)
            else "card_declined"
        )
        return AfterDecline(reason, soft_declines, None)
    count = soft_declines + 1
    if count >= PAUSE_AFTER_SOFT_DECLINES:
        return AfterDecline("card_declined", count, None)
    wait = SOFT_DECLINE_BACKOFF[min(count, len(SOFT_DECLINE_BACKOFF)) - 1]
    return AfterDecline(None, count, now + max(wait, MIN_ATTEMPT_SPACING))


def next_allowed_attempt(
    *, last_attempt_at: datetime | None, next_attempt_at: datetime | None
) -> datetime | None:
    """The earliest time another attempt may start (None: now)."""
    candidates = [t for t in (next_attempt_at,) if t is not None]
    if last_attempt_at is not None:
        candidates.append(last_attempt_at + MIN_ATTEMPT_SPACING)
    return max(candidates) if candidates else None


def may_attempt(
    *, now: datetime, last_attempt_at: datetime | None, next_attempt_at: datetime | None
) -> bool:
    """Whether an attempt may start now (the 10-minute spacing and any backoff have passed)."""
    earliest = next_allowed_attempt(
        last_attempt_at=last_attempt_at, next_attempt_at=next_attempt_at
    )
    return earliest is None or now >= earliest


def month_start(now: datetime) -> datetime:
    """The start of `now`'s calendar month, UTC."""
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def within_monthly_limit(
    *, spent_this_month_micros: int, amount_micros: int, monthly_limit_micros: int
) -> bool:
    """Whether charging `amount_micros` keeps the month's auto top-ups within the limit
    (`spent_this_month_micros`: the succeeded ones)."""
    return spent_this_month_micros + amount_micros <= monthly_limit_micros

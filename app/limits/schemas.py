"""The portal's spend limits: amounts as decimal strings (the limit with 2 places as entered,
what was spent and what remains with 6), always in USD."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, cast

from pydantic import BaseModel, Field, StringConstraints

from app.limits.periods import window_end, window_start
from app.models.limits import SpendLimit
from app.money import format_amount, format_balance
from app.schemas import CleanToken, PositiveAmountText, StrictModel

Period = Literal["day", "week", "month", "total"]
SetBy = Literal["operator", "user"]

ApiKeyIdPath = Annotated[CleanToken, StringConstraints(min_length=1, max_length=200)]
"""The gateway's id of one of the user's API keys, as the gateway reports it."""


class SpendLimitIn(StrictModel):
    """A limit on what the account or one API key may spend per window (UTC calendar)."""

    limit: Annotated[PositiveAmountText, Field(description="USD, more than 0, at most 2 decimals.")]
    period: Period = Field(
        description="`day` (from 00:00 UTC), `week` (from Monday 00:00 UTC), `month` (from "
        "the 1st, 00:00 UTC) or `total` (never resets)."
    )


class SpendLimitOut(BaseModel):
    """A limit and its current window."""

    scope: str = Field(examples=["account", "key:key_7Hq2"])
    limit: str = Field(examples=["50.00"])
    period: Period
    spent: str = Field(
        examples=["12.345678"],
        description="Spent in the current window, active holds included; may exceed `limit` "
        "after usage captured above its hold.",
    )
    remaining: str = Field(examples=["37.654322"], description="Never below 0.")
    resets_at: datetime | None = Field(description="When the window ends; null for `total`.")
    set_by: SetBy = Field(
        description="Who set it: an `operator` (only an operator can change or remove it; the "
        "user may add a stricter limit of their own on the same scope, and both apply) or the "
        "`user`."
    )
    set_by_operator: str | None = Field(
        description="The operator who set it last (their user id); null for the user's own."
    )
    currency: Literal["usd"] = "usd"


def spend_limit_out(row: SpendLimit, now: datetime) -> SpendLimitOut:
    """A limit with its window as of `now` (a window that has ended has spent nothing yet)."""
    spent = row.spent_micros if row.window_start >= window_start(row.period, now) else 0
    return SpendLimitOut(
        scope=row.scope,
        limit=format_amount(row.limit_micros),
        period=cast(Period, row.period),
        spent=format_balance(spent),
        remaining=format_balance(max(0, row.limit_micros - spent)),
        resets_at=window_end(row.period, now),
        set_by=cast(SetBy, row.set_by),
        set_by_operator=row.set_by_operator,
    )

"""Shapes of `GET/PUT /v1/auto-topup`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, StrictBool

from app.schemas import AmountText, CleanStr, StrictModel


class AutoTopupIn(StrictModel):
    """The whole auto top-up setting (a PUT replaces it)."""

    enabled: StrictBool = Field(
        description="`true` enables it, and is the only way to lift a pause; `false` disables it."
    )
    threshold: AmountText = Field(
        description="Charge when the available balance falls below this (USD, ≥ 0)."
    )
    amount: AmountText = Field(
        description="What one auto top-up charges (USD, within the top-up minimum and maximum)."
    )
    payment_method_id: CleanStr | None = Field(
        max_length=255,
        description="One of the caller's saved cards (`pm_…`); may be null only when disabled.",
    )
    monthly_limit: AmountText = Field(
        description="At most this much is charged per calendar month, UTC (≥ `amount`)."
    )


class AutoTopupOut(BaseModel):
    """The auto top-up setting and its state."""

    enabled: bool
    threshold: str | None = Field(examples=["5.00"])
    amount: str | None = Field(examples=["20.00"])
    payment_method_id: str | None
    monthly_limit: str | None = Field(examples=["100.00"])
    currency: Literal["usd"] = "usd"
    status: Literal["active", "paused", "disabled"]
    paused_reason: (
        Literal["authentication_required", "card_declined", "payment_method_removed", "disputed"]
        | None
    )
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(
        description="No attempt before this (backoff after a decline, 10 minutes between any two)."
    )
    spent_this_month: str = Field(
        examples=["20.00"], description="Charged by auto top-up this calendar month (UTC)."
    )

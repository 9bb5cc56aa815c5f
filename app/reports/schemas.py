"""Usage report shapes: amounts as 6-decimal strings in USD."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

GroupBy = Literal["day", "model", "api_key"]

EXPORT_COLUMNS = (
    "created_at",
    "request_id",
    "api_key_id",
    "model",
    "input_tokens",
    "output_tokens",
    "amount",
    "balance_after",
)
"""The CSV export's header, in order."""


class UsageGroupOut(BaseModel):
    """The usage of one day, model or API key in the range."""

    group: str | None = Field(
        examples=["2026-11-27", "gpt-4o-mini", "key_7Hq2"],
        description="The UTC day (`YYYY-MM-DD`), the model or the API key id; null for usage "
        "that did not report a model or key.",
    )
    requests: int
    input_tokens: int = Field(description="Reported input tokens (unreported count as 0).")
    output_tokens: int
    amount: str = Field(examples=["12.345678"])


class UsageSummaryOut(BaseModel):
    """Usage in `[from, to)`, one entry per group in the group's order."""

    data: list[UsageGroupOut]
    currency: Literal["usd"] = "usd"

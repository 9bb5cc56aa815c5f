"""Shapes of `GET/PUT /v1/alerts`."""

from __future__ import annotations

from pydantic import BaseModel, Field, StrictBool, field_validator

from app.money import Currency, parse_amount
from app.schemas import AmountText, StrictModel

MAX_THRESHOLDS = 5


class AlertsIn(StrictModel):
    """The caller's alert settings (a PUT replaces them)."""

    low_balance_thresholds: list[AmountText] = Field(
        max_length=MAX_THRESHOLDS,
        description=(
            "Alert once when the available balance falls below each of these (USD, at most "
            f"{MAX_THRESHOLDS}, distinct amounts: `5` and `5.00` are the same, a 422); an alert "
            "re-arms when the balance is back at or above it."
        ),
        examples=[["5.00", "1.00"]],
        json_schema_extra={"uniqueItems": True},
    )
    email: StrictBool = Field(description="Send notifications by email too (to the JWT's address).")

    @field_validator("low_balance_thresholds")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        micros = [parse_amount(v) for v in values]
        if len(set(micros)) != len(micros):
            raise ValueError("thresholds must be distinct")
        return values


class AlertsOut(BaseModel):
    """The caller's alert settings."""

    low_balance_thresholds: list[str] = Field(
        description="Highest first, 2 decimals.", examples=[["5.00", "1.00"]]
    )
    email: bool
    currency: Currency = "usd"

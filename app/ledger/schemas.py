"""The portal's view of the balance: decimal strings with 6 places, always with a currency."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

TransactionKind = Literal[
    "topup",
    "usage",
    "hold_capture",
    "refund",
    "refund_reversal",
    "external_refund",
    "dispute",
    "dispute_reversal",
    "adjustment",
]
"""Kinds of ledger transaction a wallet can see."""


class BalanceOut(BaseModel):
    """The caller's balance: `available = balance - held`. A balance may be negative after a
    dispute or usage beyond a hold; new usage is then refused until it is topped up."""

    balance: str = Field(examples=["12.345678"])
    held: str = Field(examples=["0.000000"], description="Reserved by requests in flight.")
    available: str = Field(examples=["12.345678"])
    currency: Literal["usd"] = "usd"


class TransactionOut(BaseModel):
    """One movement of the caller's balance."""

    id: str = Field(description="The ledger transaction id.")
    kind: TransactionKind
    amount: str = Field(
        examples=["-0.007000"], description="Signed: positive added to the balance."
    )
    balance_after: str | None = Field(examples=["12.338678"])
    currency: Literal["usd"] = "usd"
    description: str | None
    created_at: datetime
    model: str | None = Field(default=None, description="Usage only: the model billed.")
    input_tokens: int | None = Field(default=None, description="Usage only, when reported.")
    output_tokens: int | None = Field(default=None, description="Usage only, when reported.")
    order_id: str | None = Field(default=None, description="Top-ups and refunds: the order.")

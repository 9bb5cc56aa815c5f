"""The portal's view of the balance: decimal strings with 6 places, always with a currency."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.ledger.repository import WalletRow
from app.ledger.statement_repository import StatementLine
from app.money import format_balance

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
    "grant",
    "promo_code",
    "credit_expiry",
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


def balance_out(wallet: WalletRow) -> BalanceOut:
    return BalanceOut(
        balance=format_balance(wallet.balance_micros),
        held=format_balance(wallet.held_micros),
        available=format_balance(wallet.available_micros),
    )


def transaction_out(line: StatementLine) -> TransactionOut:
    """A wallet entry; usage shows what its details recorded (model and tokens)."""
    details = line.details or {}

    def _int(key: str) -> int | None:
        value = details.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _str(key: str) -> str | None:
        value = details.get(key)
        return value if isinstance(value, str) else None

    return TransactionOut(
        id=line.transaction_id,
        kind=line.kind,
        amount=format_balance(line.amount_micros),
        balance_after=(
            format_balance(line.balance_after_micros)
            if line.balance_after_micros is not None
            else None
        ),
        description=line.description,
        created_at=line.created_at,
        model=_str("model"),
        input_tokens=_int("input_tokens"),
        output_tokens=_int("output_tokens"),
        order_id=_str("order_id"),
    )

"""The portal's view of the balance: decimal strings with 6 places, always with a currency."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.ledger.lots_repository import CreditLine
from app.ledger.repository import WalletRow
from app.ledger.statement_repository import StatementLine
from app.money import format_balance
from app.schemas import render

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
    """The caller's balance: `available = balance - held - expired`. A balance may be negative
    after a dispute or usage beyond a hold; new usage is then refused until it is topped up."""

    balance: str = Field(examples=["12.345678"])
    held: str = Field(examples=["0.000000"], description="Reserved by requests in flight.")
    available: str = Field(examples=["12.345678"])
    expiring_soon: str = Field(
        default="0.000000",
        examples=["5.000000"],
        description="Credit left in lots that expire within 30 days.",
    )
    next_expiry_at: datetime | None = Field(
        default=None, description="When the next lot with credit left expires; null: none does."
    )
    currency: Literal["usd"] = "usd"


CreditSource = Literal["purchase", "auto_topup", "grant", "promo_code", "adjustment"]
CreditKind = Literal["paid", "granted"]
CreditStatus = Literal["active", "expired", "used"]
CreditFilter = Literal["active", "expired", "all"]


class CreditOut(BaseModel):
    """One credit lot: what was credited, where from, and what is left of it. Credit is spent
    soonest-expiring first (never-expiring last), then granted before paid, then oldest
    first."""

    id: str
    source: CreditSource
    kind: CreditKind = Field(description="`granted` (grants, promo codes) or `paid`.")
    status: CreditStatus = Field(
        description="`active`: can be spent; `used`: nothing left; `expired`: past expires_at."
    )
    amount: str = Field(examples=["20.000000"])
    remaining: str = Field(examples=["12.500000"])
    currency: Literal["usd"] = "usd"
    expires_at: datetime | None = Field(description="Null: never expires.")
    created_at: datetime
    order_id: str | None = Field(description="Purchases and auto top-ups: the order.")
    description: str | None


class TransactionOut(BaseModel):
    """One movement of the caller's balance."""

    id: str = Field(
        description="The ledger transaction id (a usage batch's events share it, and so do captures"
        " of holds applied together)."
    )
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


def balance_out(
    wallet: WalletRow, expiring_soon_micros: int = 0, next_expiry_at: datetime | None = None
) -> BalanceOut:
    return BalanceOut(
        balance=format_balance(wallet.balance_micros),
        held=format_balance(wallet.held_micros),
        available=format_balance(wallet.available_micros),
        expiring_soon=format_balance(expiring_soon_micros),
        next_expiry_at=next_expiry_at,
    )


def credit_out(line: CreditLine, now: datetime) -> CreditOut:
    """A lot, with its status as of `now`."""
    if line.expires_at is not None and line.expires_at <= now:
        status: CreditStatus = "expired"
    else:
        status = "active" if line.remaining_micros > 0 else "used"
    return render(
        CreditOut,
        line,
        status=status,
        amount=format_balance(line.amount_micros),
        remaining=format_balance(line.remaining_micros),
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
        model=line.model if line.record_id else _str("model"),
        input_tokens=line.input_tokens if line.record_id else _int("input_tokens"),
        output_tokens=line.output_tokens if line.record_id else _int("output_tokens"),
        order_id=_str("order_id"),
    )

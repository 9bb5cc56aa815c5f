"""Request and response shapes of an adjustment."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from app.money import MAX_AMOUNT_MICROS
from app.schemas import WHOLE_FLOATS, CleanText, CleanToken, StrictModel


class AdjustmentIn(StrictModel):
    """A signed correction of a wallet: positive credits it, negative debits it (a debit needs
    the available balance)."""

    amount_micros: Annotated[
        int,
        Field(
            strict=True,
            description=f"Signed micro-USD, not 0, at most {MAX_AMOUNT_MICROS} in size (less "
            "when `BILLING_MAX_AMOUNT_MICROS` is set lower: a larger amount is then a 422).",
            examples=[5_000_000],
            ge=-MAX_AMOUNT_MICROS,
            le=MAX_AMOUNT_MICROS,
            json_schema_extra={"not": {"const": 0}},
        ),
        WHOLE_FLOATS,
    ]
    reason: Annotated[CleanText, StringConstraints(min_length=3, max_length=500)]
    idempotency_key: Annotated[CleanToken, StringConstraints(min_length=1, max_length=200)] = Field(
        description="Retries with the same key and body answer the original adjustment."
    )


class AdjustmentOut(BaseModel):
    """An adjustment and the wallet right after it (for a replay: as it stands now)."""

    transaction_id: str
    user_id: str
    amount_micros: int
    reason: str
    idempotency_key: str
    created_at: datetime
    balance_micros: int
    held_micros: int
    available_micros: int
    replayed: bool

"""Request and response shapes of grants, promo codes and the lots they credit."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from app.ledger.lots import Credited
from app.ledger.lots_repository import CreditLine
from app.ledger.schemas import CreditOut, credit_out
from app.models.ledger import CreditLot
from app.models.promotions import PromoCode
from app.money import format_amount
from app.schemas import (
    WHOLE_FLOATS,
    CleanText,
    CleanToken,
    PositiveAmountText,
    StrictModel,
    UtcDatetime,
    refuse_non_ascii_tokens,
    render,
    stripped_pattern,
)

_CODE_AS_TYPED = r"[A-Za-z0-9][A-Za-z0-9_-]{2,31}"
"""A code as a user or operator types it: `PROMO_CODE_PATTERN` in any case (ASCII only, so
that upper-casing cannot turn another letter into a code's)."""
_CODE = re.compile(_CODE_AS_TYPED)
GRANT_DESCRIPTION = "Granted credit"

ExpiryDays = Annotated[
    int,
    Field(strict=True, ge=1, le=3650, examples=[30]),
    WHOLE_FLOATS,
]


class GrantIn(StrictModel):
    """Credit given to one user: it expires at `expires_at`, or `expires_in_days` after the
    grant (at most one of the two; neither: never)."""

    amount: PositiveAmountText = Field(description="USD, at most 2 decimals.")
    expires_at: UtcDatetime | None = Field(
        default=None, description="When the granted credit expires; must be in the future."
    )
    expires_in_days: ExpiryDays | None = Field(
        default=None, description="The credit expires this many days after the grant."
    )
    reason: Annotated[CleanText, StringConstraints(min_length=3, max_length=500)] = Field(
        description="Why (the audit log and the ledger keep it; the user is not shown it)."
    )
    description: Annotated[CleanText, StringConstraints(min_length=1, max_length=200)] = Field(
        default=GRANT_DESCRIPTION,
        description="What the user sees on the lot and in their transactions.",
        examples=["Welcome credit"],
    )
    idempotency_key: Annotated[CleanToken, StringConstraints(min_length=1, max_length=200)] = Field(
        description="Retries with the same key and body answer the original grant."
    )

    @model_validator(mode="after")
    def _one_expiry(self) -> GrantIn:
        # Both keys present is refused even when one is null: what the schema's `not` says.
        if {"expires_at", "expires_in_days"} <= self.model_fields_set:
            raise ValueError("give expires_at or expires_in_days, not both")
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = super().__get_pydantic_json_schema__(core_schema, handler)
        target = handler.resolve_ref_schema(json_schema)
        target["not"] = {"required": ["expires_at", "expires_in_days"]}
        return json_schema


def normalize_code(value: str) -> str | None:
    """A code as stored (upper case: codes are case-insensitive); None when `value` cannot be
    a code."""
    return value.upper() if _CODE.fullmatch(value) else None


class PromoCodeIn(StrictModel):
    """A campaign code: each user redeems it once, for `amount` of granted credit."""

    code: Annotated[str, AfterValidator(refuse_non_ascii_tokens)] = Field(
        description="3 to 32 ASCII letters, digits, `-` or `_`, starting with a letter or digit; "
        "case-insensitive (stored upper-case).",
        examples=["WELCOME-2027"],
        json_schema_extra={"pattern": stripped_pattern(_CODE_AS_TYPED)},
    )
    amount: PositiveAmountText = Field(description="USD each redemption grants.")
    credit_expires_in_days: ExpiryDays | None = Field(
        default=None, description="A redeemed credit expires this many days later; null: never."
    )
    max_redemptions: Annotated[
        int, Field(strict=True, ge=1, le=10_000_000, examples=[1000]), WHOLE_FLOATS
    ]
    redeemable_until: UtcDatetime | None = Field(
        default=None, description="No redemption from then on; null: no end."
    )
    new_users_only: bool = Field(
        default=False, description="Only users with no credit yet (no lot, no paid order)."
    )

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        code = normalize_code(value)
        if code is None:
            raise ValueError(
                "must be 3 to 32 ASCII letters, digits, '-' or '_', starting with a letter or digit"
            )
        return code


class RedeemIn(StrictModel):
    """A code the user was given (any case)."""

    code: Annotated[CleanToken, StringConstraints(min_length=1, max_length=64)] = Field(
        examples=["welcome-2027"]
    )


class GrantOut(CreditOut):
    """A grant: its lot (as `GET /v1/credits` shows it), and the user it went to."""

    user_id: str
    replayed: bool = Field(description="True when this answers an earlier request with the key.")


class PromoCodeOut(BaseModel):
    """A promo code and how often it was redeemed."""

    id: str
    code: str
    amount: str = Field(examples=["10.00"])
    credit_expires_in_days: int | None
    max_redemptions: int
    redeemed: int = Field(description="Redemptions so far.")
    redeemable_until: datetime | None
    new_users_only: bool
    created_by: str
    created_at: datetime
    currency: Literal["usd"] = "usd"


def lot_out(lot: CreditLot, now: datetime) -> CreditOut:
    """A granted lot as the user's credit list shows it (`app.ledger.schemas.credit_out`)."""
    return credit_out(CreditLine.of_tracked(lot), now)


def grant_out(credited: Credited, user_id: str, now: datetime) -> GrantOut:
    assert credited.lot is not None, "a grant always has its lot"
    lot = lot_out(credited.lot, now)
    return GrantOut(**lot.model_dump(), user_id=user_id, replayed=credited.replayed)


def promo_code_out(code: PromoCode) -> PromoCodeOut:
    return render(
        PromoCodeOut, code, amount=format_amount(code.amount_micros), redeemed=code.redeemed_count
    )

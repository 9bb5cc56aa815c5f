"""The gateway's requests and answers: integer `*_micros`, the caller's ids as idempotency keys."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, WithJsonSchema
from pydantic_core import from_json

from app.money import MAX_AMOUNT_MICROS
from app.schemas import (
    CLEAN_JSON_REF,
    CONTROL_CHARACTERS,
    WHOLE_FLOATS,
    CleanStr,
    CleanText,
    CleanToken,
    StrictModel,
    refuse_unclean_json,
)

MAX_METADATA_BYTES = 4096
MAX_BATCH_EVENTS = 1000
MAX_TOKENS = 10**12


def _small_json(value: dict[str, Any]) -> dict[str, Any]:
    if len(json.dumps(value, separators=(",", ":"), default=str)) > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes of JSON")
    return value


UserId = Annotated[
    CleanToken,
    StringConstraints(min_length=1, max_length=255),
    Field(description="The user's id (the portal JWT's `sub`).", examples=["user_2abc"]),
]
CallerId = Annotated[
    CleanToken,
    StringConstraints(min_length=1, max_length=200),
]
RequestId = Annotated[
    CallerId, Field(description="The gateway's request id: the debit's idempotency key.")
]
HoldKey = Annotated[
    CallerId, Field(description="The gateway's hold id: the hold's idempotency key.")
]
Metadata = Annotated[
    dict[str, Any] | None,
    AfterValidator(lambda v: _small_json(v) if v is not None else None),
    AfterValidator(refuse_unclean_json),
    Field(description=f"Free-form JSON kept with the record (at most {MAX_METADATA_BYTES} bytes)."),
    WithJsonSchema({"anyOf": [{"$ref": CLEAN_JSON_REF}, {"type": "null"}]}),
]
_AT_MOST = (
    f"at most {MAX_AMOUNT_MICROS} (less when `BILLING_MAX_AMOUNT_MICROS` is set lower: a larger "
    "amount is then a 422)"
)
_MICROS = Field(strict=True, json_schema_extra={"maximum": MAX_AMOUNT_MICROS})
"""What every amount in micro-USD is: a whole number within the schema's bound (with its lower
bound and description in a `Field` of its own, and `WHOLE_FLOATS` last)."""
PositiveMicros = Annotated[
    int, _MICROS, Field(gt=0, description=f"Micro-USD, > 0 and {_AT_MOST}."), WHOLE_FLOATS
]
NonNegativeMicros = Annotated[
    int, _MICROS, Field(ge=0, description=f"Micro-USD, >= 0 and {_AT_MOST}."), WHOLE_FLOATS
]
TokenCount = Annotated[int | None, Field(strict=True, ge=0, le=MAX_TOKENS), WHOLE_FLOATS]
ModelName = Annotated[CleanStr | None, Field(max_length=200, examples=["gpt-4o-mini"])]
ApiKeyId = Annotated[
    CleanToken | None,
    StringConstraints(min_length=1, max_length=200),
    Field(
        description="The gateway's id of the user's API key that spent: its spend limit "
        "applies besides the account's.",
        examples=["key_7Hq2"],
    ),
]
LimitRemaining = Annotated[
    int | None,
    Field(
        description="What the tightest applicable spend limit leaves in its current window, "
        "micro-USD (never below 0); null when no limit applies, and on a replay."
    ),
]


class UsageIn(StrictModel):
    """One request's cost, to debit from the user's available balance once."""

    user_id: UserId
    request_id: RequestId
    amount_micros: PositiveMicros
    api_key_id: ApiKeyId = None
    model: ModelName = None
    input_tokens: TokenCount = None
    output_tokens: TokenCount = None
    metadata: Metadata = None


class WalletState(BaseModel):
    """The wallet right after the operation (for a replay: as it stands now)."""

    balance_micros: int
    held_micros: int
    available_micros: int = Field(description="`balance_micros - held_micros`; may be negative.")


class UsageOut(WalletState):
    """A debit: applied now (201) or earlier (200, `replayed: true`)."""

    request_id: str
    user_id: str
    amount_micros: int
    transaction_id: str
    replayed: bool
    limit_remaining_micros: LimitRemaining = None


class UsageBatchIn(StrictModel):
    """Up to 1000 usage events, each applied on its own (one failing does not undo others)."""

    events: list[
        Annotated[
            UsageIn | dict[str, Any],
            Field(
                union_mode="left_to_right",
                description="A usage event; one that does not validate is reported `invalid`.",
            ),
        ]
    ] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


def read_usage_batch(raw: bytes) -> UsageBatchIn:
    """A batch body parsed once, by the parser `model_validate_json` uses: a well-formed
    `{"events": [...]}` of 1 to 1000 JSON objects keeps each event as its object, for the
    service to read (`service.plain_debit`) or validate as `UsageIn` one by one, which is what
    the `UsageIn | dict` union would do after validating each event a first time; any other
    body is validated whole (its 422)."""
    try:
        data = from_json(raw)
    except ValueError:
        data = None
    events = data.get("events") if type(data) is dict and len(data) == 1 else None
    if (
        type(events) is list
        and 1 <= len(events) <= MAX_BATCH_EVENTS
        and all(type(event) is dict for event in events)
    ):
        return UsageBatchIn.model_construct(events=events)
    return UsageBatchIn.model_validate_json(raw)


def plain_token(value: Any, max_length: int) -> bool:
    """`value` is a `CleanToken` of 1 to `max_length` characters that stripping leaves as it
    is (no whitespace, no control character, no lone surrogate)."""
    return (
        type(value) is str
        and 0 < len(value) <= max_length
        and _WHITESPACE_OR_CONTROL.search(value) is None
    )


def plain_text(value: Any, max_length: int) -> bool:
    """`value` is a `CleanStr` of at most `max_length` characters that stripping leaves as it
    is."""
    return (
        type(value) is str
        and len(value) <= max_length
        and CONTROL_CHARACTERS.search(value) is None
        and (not value or not (value[0].isspace() or value[-1].isspace()))
    )


def plain_count(value: Any) -> bool:
    """`value` is a `TokenCount` as an int."""
    return type(value) is int and 0 <= value <= MAX_TOKENS


_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")


BatchStatus = Literal[
    "applied", "replayed", "insufficient_balance", "spend_limit_exceeded", "conflict", "invalid"
]


class FieldError(BaseModel):
    """Why a field is invalid."""

    field: str
    message: str


class UsageBatchResult(BaseModel):
    """What happened to one event of a batch, in the order they were sent."""

    index: int
    request_id: str | None
    status: BatchStatus
    transaction_id: str | None = Field(
        default=None,
        description="The ledger transaction that moved the money: the events a batch applied "
        "share one (a leg per user), and so may those of batches sent together (applied as one "
        "once the one in flight was done); a replay answers the original's.",
    )
    balance_micros: int | None = None
    held_micros: int | None = None
    available_micros: int | None = None
    limit_remaining_micros: LimitRemaining = None
    scope: str | None = Field(
        default=None, description="`spend_limit_exceeded`: the limit that refused the event."
    )
    detail: str | None = None
    errors: list[FieldError] | None = None


class UsageBatchOut(BaseModel):
    """One result per event, and how many were applied, replayed and refused."""

    results: list[UsageBatchResult]
    applied: int
    replayed: int
    failed: int


class HoldIn(StrictModel):
    """Reserve part of the available balance for a request in flight."""

    user_id: UserId
    hold_id: HoldKey
    amount_micros: PositiveMicros
    api_key_id: ApiKeyId = None
    ttl_seconds: Annotated[
        int | None,
        Field(
            strict=True,
            ge=1,
            le=3600,
            description="Expire after this many seconds unless captured or released (default "
            "`BILLING_HOLD_DEFAULT_TTL_SECONDS`, at most `BILLING_HOLD_MAX_TTL_SECONDS`).",
        ),
        WHOLE_FLOATS,
    ] = None
    metadata: Metadata = None


class CaptureIn(StrictModel):
    """The actual cost of the request the hold was for: may be 0, less or more than reserved."""

    amount_micros: NonNegativeMicros
    model: ModelName = None
    input_tokens: TokenCount = None
    output_tokens: TokenCount = None
    metadata: Metadata = None


class HoldCaptureItem(CaptureIn):
    """One capture of a batch: the single capture's body (`CaptureIn`) and the hold it
    captures."""

    hold_id: Annotated[
        CleanToken,
        StringConstraints(min_length=1, max_length=200),
        Field(description="The hold to capture (its `hold_id` at reserve)."),
    ]


class HoldCaptureBatchIn(StrictModel):
    """Up to 1000 captures, each decided as if sent alone, one after the other in this order."""

    captures: list[
        Annotated[
            HoldCaptureItem | dict[str, Any],
            Field(
                union_mode="left_to_right",
                description="A capture; one that does not validate is reported `invalid`.",
            ),
        ]
    ] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


def read_capture_batch(raw: bytes) -> HoldCaptureBatchIn:
    """A capture batch's body parsed once, as `read_usage_batch` parses a usage batch's: a
    well-formed `{"captures": [...]}` of 1 to 1000 JSON objects keeps each capture as its
    object (`service.plain_capture` reads it, or it is validated as `HoldCaptureItem`); any
    other body is validated whole (its 422)."""
    try:
        data = from_json(raw)
    except ValueError:
        data = None
    captures = data.get("captures") if type(data) is dict and len(data) == 1 else None
    if (
        type(captures) is list
        and 1 <= len(captures) <= MAX_BATCH_EVENTS
        and all(type(capture) is dict for capture in captures)
    ):
        return HoldCaptureBatchIn.model_construct(captures=captures)
    return HoldCaptureBatchIn.model_validate_json(raw)


class ReleaseIn(StrictModel):
    """Give the reservation back (the request was not served)."""

    reason: Annotated[CleanText | None, Field(max_length=200)] = None


HoldStatus = Literal["active", "captured", "released", "expired"]


class HoldOut(WalletState):
    """A hold and its wallet."""

    hold_id: str
    user_id: str
    status: HoldStatus
    amount_micros: int = Field(description="The reserved amount.")
    captured_micros: int | None = Field(description="The actual amount charged at capture.")
    expires_at: datetime
    resolved_at: datetime | None
    replayed: bool
    limit_remaining_micros: LimitRemaining = None


class AccountBalanceOut(WalletState):
    """A user's wallet (zero before their first top-up)."""

    user_id: str


CaptureBatchStatus = Literal[
    "captured",
    "replayed",
    "not_found",
    "idempotency_conflict",
    "invalid_state",
    "capture_exceeds_hold",
    "invalid",
]


class HoldCaptureBatchResult(BaseModel):
    """What happened to one capture of a batch, in the order they were sent: what
    `POST /v1/internal/holds/{hold_id}/capture` would have answered for it, sent then."""

    index: int
    hold_id: str | None
    status: CaptureBatchStatus = Field(
        description="`captured` now or `replayed` (the hold as the single capture answers it in "
        "`hold`); else the single capture's error code: `not_found`, `idempotency_conflict` "
        "(captured before with another body), `invalid_state` (released, expired; "
        "`hold_status`), `capture_exceeds_hold` (`hold_amount_micros`, `max_capture_micros`; "
        "the hold is still active), `invalid` (`errors`)."
    )
    hold: HoldOut | None = None
    hold_status: HoldStatus | None = None
    hold_amount_micros: int | None = None
    max_capture_micros: int | None = None
    detail: str | None = None
    errors: list[FieldError] | None = None


class HoldCaptureBatchOut(BaseModel):
    """One result per capture, and how many were captured now, replayed and refused."""

    results: list[HoldCaptureBatchResult]
    captured: int
    replayed: int
    failed: int

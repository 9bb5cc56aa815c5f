"""A hold's answer written from its fields (`router.hold_json`: reserve, capture, release) is
byte for byte what the validated `HoldOut` writes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.ledger.holds import HoldResult
from app.ledger.holds_repository import HoldRow
from app.ledger.repository import WalletRow
from app.usage.router import _hold_fields, hold_json
from app.usage.schemas import HoldOut

_AT = datetime(2026, 12, 8, 4, 54, 11, 354066, tzinfo=UTC)
_WHOLE_SECOND = datetime(2026, 12, 8, 5, 0, tzinfo=UTC)
_ACTIVE = HoldRow("h-1", "u1", 10_000, "active", None, "a" * 64, None, _AT, _AT, None)
_CAPTURED = HoldRow("h-2", "u1", 10_000, "captured", 7_000, "a" * 64, "b" * 64, _AT, _AT, _AT)
_EXPIRED = HoldRow("h-3", "u2", 5, "expired", None, "a" * 64, None, _WHOLE_SECOND, _AT, _AT)
_WALLET = WalletRow("acc_1", "u1", 993_000, 10_000, expired_micros=3)


@pytest.mark.parametrize(
    "result",
    [
        HoldResult(_ACTIVE, _WALLET, False, 41_000),
        HoldResult(_CAPTURED, WalletRow("acc_1", "u1", -5, 0), False, None),
        HoldResult(_CAPTURED, _WALLET, True),
        HoldResult(_EXPIRED, _WALLET, False, 0),
    ],
)
def test_the_answer_is_what_the_validated_model_writes(result: HoldResult) -> None:
    out = HoldOut.model_validate(_hold_fields(result))
    assert hold_json(result) == out.__pydantic_serializer__.to_json(out)


def test_the_fields_are_every_field_of_the_model_in_its_order() -> None:
    result = HoldResult(_ACTIVE, _WALLET, False)
    assert tuple(_hold_fields(result)) == tuple(HoldOut.model_fields)

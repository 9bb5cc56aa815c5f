"""A batch's answer written without validating its results (`router.batch_json`, every event
applied or replayed) is byte for byte what the validated model (`router.batch_out`) writes."""

from __future__ import annotations

import pytest

from app.errors import IdempotencyConflict
from app.ledger.repository import WalletRow
from app.ledger.service import insufficient_balance
from app.usage.router import _batch_result, batch_json, batch_out
from app.usage.schemas import UsageBatchResult
from app.usage.service import BatchEvent, Invalid
from app.usage.store import Debited

_WALLET = WalletRow("acc_1", "u1", 993_000, 2_000)
_APPLIED = BatchEvent("r-1", Debited("txn_1", "h", False, _WALLET, 41_000))
_REPLAYED = BatchEvent("r-2", Debited("txn_0", "h", True, None))
_NO_LIMIT = BatchEvent("r-3", Debited("txn_1", "h", False, WalletRow("acc_2", "u2", -5, 0)))


def _model_json(items: list[BatchEvent]) -> bytes:
    out = batch_out(items)
    return out.__pydantic_serializer__.to_json(out)


@pytest.mark.parametrize(
    "items",
    [
        [_APPLIED],
        [_APPLIED, _REPLAYED, _NO_LIMIT, _APPLIED],
        [_REPLAYED],
        # With a refusal or an unreadable event the results are validated, as before.
        [_APPLIED, BatchEvent("r-4", insufficient_balance(7, 9))],
        [_REPLAYED, BatchEvent("r-1", IdempotencyConflict("used before"))],
        [BatchEvent(None, Invalid(None, [{"field": "user_id", "message": "Field required"}]))],
    ],
)
def test_the_answer_is_what_the_validated_model_writes(items: list[BatchEvent]) -> None:
    assert batch_json(items) == _model_json(items)


def test_an_applied_result_carries_every_field_of_the_model_in_its_order() -> None:
    assert tuple(_batch_result(0, _APPLIED)) == tuple(UsageBatchResult.model_fields)

"""A batch's event columns go to PostgreSQL as one text each (`repository._event_columns`,
read back by `_BATCH_EVENTS`): every value comes back as it was, nulls, empty strings, quotes,
backslashes, commas and braces included, and a one-event batch too."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.usage.repository import _BATCH_EVENTS, UsageStore, _event_columns, _texts
from app.usage.store import UsageDebit, usage_reference

_DEBITS = [
    UsageDebit(
        'u-"quoted"',
        "r-1",
        1,
        "a" * 64,
        {"model": "", "input_tokens": 0, "output_tokens": None},
    ),
    UsageDebit(
        "u-back\\slash,comma{brace}",
        "r-2é🙂",
        9_000_000_000_000,
        "b" * 64,
        {"model": 'gpt 4o, "mini"', "metadata": {"note": "tab\there", "n": [1, None]}},
        "key-1",
    ),
    UsageDebit("NULL", "", 7_000, "c" * 64, None),
]


def _expected(debit: UsageDebit, ord_: int) -> dict[str, Any]:
    details = debit.details or {}
    metadata = details.get("metadata")
    return {
        "user_id": debit.user_id,
        "reference": usage_reference(debit.request_id),
        "request_id": debit.request_id,
        "amount": debit.amount_micros,
        "request_hash": debit.request_hash,
        "api_key_id": debit.api_key_id,
        "model": details.get("model"),
        "input_tokens": details.get("input_tokens"),
        "output_tokens": details.get("output_tokens"),
        "metadata": metadata,
        "ord": ord_,
    }


async def _read(app: Any, debits: list[UsageDebit]) -> list[dict[str, Any]]:
    store = await UsageStore.open(app.state.settings.database_url.get_secret_value(), max_size=1)
    try:
        async with store.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT * FROM {_BATCH_EVENTS}",
                *_event_columns(debits),
            )
    finally:
        await store.close()
    return [
        dict(row) | {"metadata": json.loads(row["metadata"]) if row["metadata"] else None}
        for row in rows
    ]


async def test_every_value_comes_back_as_it_was(app: Any) -> None:
    assert await _read(app, _DEBITS) == [_expected(d, i + 1) for i, d in enumerate(_DEBITS)]


@pytest.mark.parametrize("debit", _DEBITS)
async def test_a_one_event_batch_comes_back_as_it_was(app: Any, debit: UsageDebit) -> None:
    assert await _read(app, [debit]) == [_expected(debit, 1)]


def test_a_value_holding_the_separator_is_refused() -> None:
    with pytest.raises(ValueError, match="separator"):
        _texts(["ok", "bad\x1fvalue"])

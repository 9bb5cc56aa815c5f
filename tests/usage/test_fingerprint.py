"""A usage event's request hash is the hash of its JSON body without nulls, however built."""

from __future__ import annotations

from typing import Any

import pytest

from app.idempotency import hash_request
from app.usage.schemas import UsageIn
from app.usage.service import _usage_fingerprint


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "u", "request_id": "r", "amount_micros": 5},
        {"user_id": "u", "request_id": "r", "amount_micros": 5.0, "model": " m x "},
        {
            "user_id": "u",
            "request_id": "r",
            "amount_micros": 5,
            "api_key_id": "k",
            "input_tokens": 0,
            "output_tokens": 7,
            "model": None,
        },
        {"user_id": "ü", "request_id": "r", "amount_micros": 5, "metadata": {"b": [1, 2.5]}},
    ],
)
def test_the_fingerprint_is_the_hash_of_the_validated_body(body: dict[str, Any]) -> None:
    event = UsageIn.model_validate(body)
    want = hash_request(event.model_dump(mode="json", exclude_none=True))
    assert _usage_fingerprint(event) == want

"""A usage event's request hash is the hash of its JSON body without nulls, however built; a
batch event read without pydantic is exactly the debit its validation would make."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.config import Settings
from app.idempotency import hash_flat_request, hash_request
from app.usage.schemas import CaptureIn, HoldCaptureItem, HoldIn, UsageIn
from app.usage.service import (
    _capture_fingerprint,
    _reserve_fingerprint,
    _usage_debit,
    _usage_fingerprint,
    plain_debit,
)


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


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(st.text(), st.integers(-(2**70), 2**70)),
        max_size=8,
    )
)
def test_a_flat_body_hashes_as_its_canonical_json(body: dict[str, str | int]) -> None:
    try:
        want = hash_request(body)
    except UnicodeEncodeError:  # a lone surrogate: neither can hash it
        with pytest.raises(UnicodeEncodeError):
            hash_flat_request(body)
        return
    assert hash_flat_request(body) == want


@given(
    st.dictionaries(st.text(max_size=8), st.one_of(st.text(), st.integers()), max_size=4),
    st.text(max_size=8),
)
def test_a_flat_body_within_a_key_hashes_as_its_canonical_json(
    body: dict[str, str | int], key: str
) -> None:
    try:
        want = hash_request({key: body})
    except UnicodeEncodeError:  # a lone surrogate: neither can hash it
        return
    assert hash_flat_request(body, within=key) == want


@pytest.mark.parametrize(
    ("body", "ttl"),
    [
        ({"user_id": "u", "hold_id": "h", "amount_micros": 10_000}, 600),
        ({"user_id": "ü", "hold_id": "h", "amount_micros": 5, "ttl_seconds": 30.0}, 30),
        ({"user_id": "u", "hold_id": "h", "amount_micros": 1, "api_key_id": "k"}, 60),
        ({"user_id": "u", "hold_id": "h", "amount_micros": 1, "metadata": {"b": [1, 2.5]}}, 60),
    ],
)
def test_a_reserve_fingerprint_is_the_hash_of_the_validated_body(
    body: dict[str, Any], ttl: int
) -> None:
    hold = HoldIn.model_validate(body)
    want = hash_request(hold.model_dump(mode="json", exclude_none=True) | {"ttl_seconds": ttl})
    assert _reserve_fingerprint(hold, ttl) == want


@pytest.mark.parametrize(
    "body",
    [
        {"amount_micros": 0},
        {"amount_micros": 7000, "model": " gpt-4o ", "input_tokens": 1200, "output_tokens": 3.0},
        {"amount_micros": 7000, "model": None, "output_tokens": 0},
        {"amount_micros": 7000, "model": "m", "metadata": {"trace": "ü"}},
    ],
)
def test_a_capture_fingerprint_is_the_hash_of_the_validated_body(body: dict[str, Any]) -> None:
    capture = CaptureIn.model_validate(body)
    want = hash_request({"capture": capture.model_dump(mode="json", exclude_none=True)})
    assert _capture_fingerprint(capture) == want
    item = HoldCaptureItem.model_validate(body | {"hold_id": "h-1"})
    assert _capture_fingerprint(item) == want


_TEXT = st.one_of(
    st.sampled_from(["u1", "req-1", "gpt-4o", " padded", "tail ", "in side", "", "ü", "a\tb"]),
    st.text(max_size=6),
)
_VALUE = st.one_of(
    st.none(), _TEXT, st.integers(-5, 10**13), st.booleans(), st.floats(allow_nan=False)
)
_EVENT = st.fixed_dictionaries(
    {"user_id": _TEXT, "request_id": _TEXT, "amount_micros": _VALUE},
    optional={
        "api_key_id": _VALUE,
        "model": _VALUE,
        "input_tokens": _VALUE,
        "output_tokens": _VALUE,
        "metadata": st.sampled_from([None, {"a": 1}]),
        "surprise": st.just(1),
    },
)


@given(_EVENT)
def test_a_plain_event_is_the_debit_validation_would_give(raw: dict[str, Any]) -> None:
    settings = Settings(_env_file=None, environment="test", jwt_secret="x" * 40)
    plain = plain_debit(raw, settings.max_amount_micros)
    if plain is None:
        return
    # Only what validates unchanged is plain, and it is the debit the validated event makes.
    assert plain == _usage_debit(settings, UsageIn.model_validate(raw))

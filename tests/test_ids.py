"""Identifiers: ULIDs in Crockford base32, ordered by creation."""

from __future__ import annotations

import random

from app.ids import encode_ulid, new_id

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def reference_encoding(value: int) -> str:
    """The ULID spec's encoding, five bits at a time from the least significant end."""
    chars = []
    for _ in range(26):
        value, index = divmod(value, 32)
        chars.append(ALPHABET[index])
    return "".join(reversed(chars))


def test_the_encoding_is_the_specs_for_any_128_bit_value() -> None:
    rng = random.Random(11)
    values = [0, 1, 2**128 - 1, 2**80, *(rng.getrandbits(128) for _ in range(2000))]
    for value in values:
        assert encode_ulid(value) == reference_encoding(value)


def test_ids_are_prefixed_ulids_that_sort_by_creation_time() -> None:
    ids = [new_id("txn") for _ in range(50)]
    assert all(i.startswith("txn_") and len(i) == 30 for i in ids)
    # The first 10 characters are the millisecond timestamp, so they never go backwards.
    stamps = [i[4:14] for i in ids]
    assert stamps == sorted(stamps)


def test_ids_made_in_one_millisecond_still_sort_in_the_order_they_were_made() -> None:
    """Two orders created in the same millisecond must list newest first, as created: a random
    tail alone would order them by chance (`test_pages_follow_the_cursor_without_gaps_or_repeats`
    failed so once)."""
    ids = [new_id("ord") for _ in range(20_000)]
    stamps = [i[4:14] for i in ids]
    assert len(set(stamps)) < len(ids)  # many shared a millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)

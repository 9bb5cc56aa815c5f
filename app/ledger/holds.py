"""Two-phase holds, after TigerBeetle's pending transfers: reserve, then capture, release or
expire, exactly once.

A reserve adds to the wallet's `held_micros` with one conditional UPDATE (`balance - held >= x`),
so the sum of active holds can never exceed the balance. A capture posts the actual amount (which
may be more or less than reserved: the usage has already happened, so it always succeeds and may
take the balance negative) and drops the reservation in the same wallet UPDATE. A hold is
resolved at most once: the resolving UPDATE only matches an `active` hold, and a repeat of the
same capture or release (same body) answers the original result marked as a replay.

Reserve, capture and release (an expiry is a release by the `expire_holds` job) are the
gateway's statements (`app/usage/repository.py`); here, their results and the capture's bound.
What each writes: a reserve inserts the hold (its key and the index of active holds, no foreign
key check) and adds to the wallet's `held_micros` (a heap-only update: no indexed column moves);
a capture moves the hold out of `active` (its new row version enters the key alone) and posts
like a debit, in one statement, without lot CTEs unless its wallet has lots to draw.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from app.errors import CaptureExceedsHold
from app.ledger.holds_repository import HoldCapture, HoldRow
from app.ledger.repository import WalletRow


class HoldResult(NamedTuple):
    """A hold and its wallet after an operation (for a replay: as they stand now). A tuple, like
    `WalletRow` and the debits' `Debited`: the gateway builds one per hold operation."""

    hold: HoldRow
    wallet: WalletRow
    replayed: bool
    limit_remaining_micros: int | None = None
    """What the tightest spend limit leaves after a reserve or capture; None when none applies
    (or for a replay)."""


def capture_exceeds_hold(hold: HoldRow, capture: HoldCapture | None) -> CaptureExceedsHold | None:
    """The refusal of a capture beyond its bound (`HoldCapture.max_hold_multiple` times the
    hold's amount), or None when the capture is within it (or there is no capture)."""
    if capture is None or capture.amount_micros <= hold.amount_micros * capture.max_hold_multiple:
        return None
    most = math.floor(hold.amount_micros * capture.max_hold_multiple)
    return CaptureExceedsHold(
        f"amount_micros {capture.amount_micros} exceeds {capture.max_hold_multiple:g} times the "
        f"hold's {hold.amount_micros} (at most {most}); nothing was applied and the hold is "
        "still active.",
        hold_amount_micros=hold.amount_micros,
        max_capture_micros=most,
        errors=[{"field": "amount_micros", "message": f"must be at most {most}"}],
    )

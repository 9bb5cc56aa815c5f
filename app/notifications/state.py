"""The delivery state machine of a notification, one per channel (`email_status`,
`webhook_status`). No other code writes these columns (`tests/test_status_owners.py` walks the
source to keep it so); a gateway statement's `INSERT … SELECT` leaves them to their server
default, `pending`.

    pending ──► sent
       │  ▲       ▲
       │  └─(retry: pending again, due later)
       ├──► skipped   (the channel does not apply: not configured, no address, opted out)
       └──► failed ───┘ (an attempt given up for lost, its lease lapsed, that did arrive)

An attempt runs outside any transaction while the row stays `pending` under a lease; its
outcome is recorded afterwards by an UPDATE guarded by the moves below, so a late answer
cannot undo a final status (but a late `sent` is believed: the message did go out).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement

from app.models.moves import Moves
from app.models.notifications import ChannelStatus, Notification

__all__ = ["CHANNEL_MOVES", "ChannelStatus", "give_up", "outcome_update"]

_C = ChannelStatus
CHANNEL_MOVES: Moves[ChannelStatus] = Moves(
    {
        _C.PENDING: frozenset({_C.PENDING, _C.SENT, _C.SKIPPED, _C.FAILED}),
        _C.FAILED: frozenset({_C.SENT}),
        _C.SENT: frozenset(),
        _C.SKIPPED: frozenset(),
    }
)


def give_up(row: Notification, channel: str, error: str) -> bool:
    """A pending channel whose attempts are used up (the last one's outcome never recorded):
    `failed`, with `error`. False (and no change) when it was not pending."""
    column = f"{channel}_status"
    if not CHANNEL_MOVES.allows(getattr(row, column), _C.FAILED):
        return False
    setattr(row, column, _C.FAILED)
    setattr(row, f"{channel}_last_error", error[:500])
    return True


def outcome_update(channel: str, new: ChannelStatus) -> tuple[dict[Any, Any], ColumnElement[bool]]:
    """`(values, guard)` of the UPDATE recording an attempt's outcome on `channel`: the status
    column set to `new`, and the condition that the current status may move there."""
    column = Notification.__table__.c[f"{channel}_status"]
    return {column: new}, column.in_(CHANNEL_MOVES.sources(new))

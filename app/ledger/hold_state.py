"""The hold state machine. Holds move in the gateway's statements (`app/usage/repository.py`),
one round trip each, so this module renders the SQL of every move: the `SET` and the guard of
the resolving UPDATE come from the one table below. No other code writes `holds.status`
(`tests/test_status_owners.py` walks the source to keep it so).

    active ──► captured
       │
       ├────► released   (the gateway's release)
       └────► expired    (the `expire_holds` job, once `expires_at` passed)

A hold is reserved `active` and resolved once: the guard matches only an active hold, so a
second capture or release of the same hold updates nothing (and is answered as a replay or a
conflict by the caller).
"""

from __future__ import annotations

from app.models.ledger import HoldStatus
from app.models.moves import Moves

__all__ = ["HOLD_MOVES", "INITIAL", "RELEASE_STATUSES", "HoldStatus", "capture_sql", "release_sql"]

_H = HoldStatus
HOLD_MOVES: Moves[HoldStatus] = Moves(
    {
        _H.ACTIVE: frozenset({_H.CAPTURED, _H.RELEASED, _H.EXPIRED}),
        _H.CAPTURED: frozenset(),
        _H.RELEASED: frozenset(),
        _H.EXPIRED: frozenset(),
    }
)

INITIAL = f"'{_H.ACTIVE}'"
"""The SQL literal a reserve inserts."""

RELEASE_STATUSES = (_H.RELEASED, _H.EXPIRED)
"""A release gives the reservation back: by the gateway (`released`) or the job (`expired`)."""


def capture_sql() -> tuple[str, str]:
    """`(set, guard)` of the capturing UPDATE."""
    return HOLD_MOVES.sql_move("status", _H.CAPTURED)


def release_sql(param: str) -> tuple[str, str]:
    """`(set, guard)` of the releasing UPDATE, whose target status is the parameter `param`
    (`released` or `expired`)."""
    return HOLD_MOVES.sql_move_to_param("status", param, RELEASE_STATUSES)

"""Auto top-up's two state machines: a user's settings and each attempt. No other code assigns
their `status` (`tests/test_status_owners.py` walks the source to keep it so).

Settings (`auto_topup_settings.status`; a new row starts at the PUT's `active` or `disabled`):

    active ──(decline, dispute, card removed)──► paused
      ▲  │                                          │
      │  └─────────────► disabled ◄─────────────────┘
      └──── (the user's PUT, `enabled: true`: the only way back to active) ───┘

Attempts (`auto_topups.status`; recorded `pending` by the trigger's statement):

    pending ──► processing ──► succeeded
       │             │             ▲
       ▼             ▼             │
    skipped       failed ──────────┘  (the user paid the declined PaymentIntent on-session)
    canceled

`skipped` (monthly limit), `canceled` (not active any more, card gone, balance recovered) and
`succeeded` are final; `failed` only moves to `succeeded`, when the money arrives after all.
A refused move changes nothing and answers False (logged).
"""

from __future__ import annotations

from datetime import datetime

import structlog

from app.models.moves import Moves
from app.models.payment_methods import (
    AttemptStatus,
    AutoTopup,
    AutoTopupSettings,
    AutoTopupStatus,
    PausedReason,
)

log = structlog.get_logger(__name__)

__all__ = [
    "ATTEMPT_MOVES",
    "SETTINGS_MOVES",
    "AttemptStatus",
    "AutoTopupStatus",
    "PausedReason",
    "disable",
    "enable",
    "end_attempt",
    "pause",
    "start_attempt",
]

_T = AutoTopupStatus
SETTINGS_MOVES: Moves[AutoTopupStatus] = Moves(
    {
        # A PUT with `enabled: true` on an active setting is a move too: it forgets the soft
        # declines and the backoff.
        _T.ACTIVE: frozenset({_T.ACTIVE, _T.PAUSED, _T.DISABLED}),
        _T.PAUSED: frozenset({_T.ACTIVE, _T.DISABLED}),
        _T.DISABLED: frozenset({_T.ACTIVE, _T.DISABLED}),
    }
)

_A = AttemptStatus
ATTEMPT_MOVES: Moves[AttemptStatus] = Moves(
    {
        _A.PENDING: frozenset({_A.PROCESSING, _A.SKIPPED, _A.CANCELED}),
        _A.PROCESSING: frozenset({_A.SUCCEEDED, _A.FAILED}),
        _A.FAILED: frozenset({_A.SUCCEEDED}),
        _A.SUCCEEDED: frozenset(),
        _A.SKIPPED: frozenset(),
        _A.CANCELED: frozenset(),
    }
)


def _move_settings(row: AutoTopupSettings, new: AutoTopupStatus, *, reason: str) -> bool:
    current = row.status  # None on a row not yet written: it starts where the PUT puts it
    logged = log.bind(user_id=row.user_id, old=current, new=new.value, reason=reason)
    if current is not None and not SETTINGS_MOVES.allows(current, new):
        logged.info("auto_topup_move_refused")
        return False
    row.status = new
    logged.info("auto_topup_transition")
    return True


def enable(row: AutoTopupSettings) -> None:
    """The user's PUT with `enabled: true`: active, lifting a pause and forgetting earlier
    soft declines and their backoff."""
    _move_settings(row, _T.ACTIVE, reason="enabled")
    row.paused_reason = None
    row.soft_declines = 0
    row.next_attempt_at = None
    row.action_payment_intent_id = None


def disable(row: AutoTopupSettings) -> None:
    """The user's PUT with `enabled: false`."""
    _move_settings(row, _T.DISABLED, reason="disabled")
    row.paused_reason = None


def pause(
    row: AutoTopupSettings,
    reason: str,
    *,
    action_payment_intent_id: str | None,
    now: datetime,
) -> bool:
    """Pause an active auto top-up for `reason` (a `PausedReason`); False (and no change) when
    it is not active."""
    paused_reason = PausedReason(reason)
    if row.status != _T.ACTIVE or not _move_settings(row, _T.PAUSED, reason=paused_reason):
        return False
    row.paused_reason = paused_reason
    row.next_attempt_at = None
    row.action_payment_intent_id = action_payment_intent_id
    row.updated_at = now
    return True


def _move_attempt(attempt: AutoTopup, new: AttemptStatus, *, reason: str) -> bool:
    current = attempt.status
    logged = log.bind(attempt_id=attempt.id, old=current, new=new.value, reason=reason)
    if not ATTEMPT_MOVES.allows(current, new):
        logged.warning("auto_topup_attempt_move_refused")
        return False
    attempt.status = new
    logged.info("auto_topup_attempt_transition")
    return True


def start_attempt(attempt: AutoTopup, *, order_id: str, lease_until: datetime) -> bool:
    """A pending attempt is being charged as `order_id`, under the job's lease."""
    if not _move_attempt(attempt, _A.PROCESSING, reason=order_id):
        return False
    attempt.order_id = order_id
    attempt.lease_until = lease_until
    return True


def end_attempt(
    attempt: AutoTopup,
    new: AttemptStatus,
    *,
    now: datetime,
    failure_code: str | None = None,
) -> bool:
    """The attempt is over (`failure_code`, when given, cut to its column): it leaves the
    in-flight slot. False (and no change) when the diagram does not allow the move."""
    if not _move_attempt(attempt, new, reason=failure_code or new.value):
        return False
    if failure_code is not None:
        attempt.failure_code = failure_code[:64]
    attempt.completed_at = now
    attempt.lease_until = None
    return True

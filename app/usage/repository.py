"""All SQL of the gateway's hot path, at the driver level.

The gateway calls these thousands of times a second, so each is a fixed SQL string that asyncpg
prepares once per connection (its statement cache), never a statement built per request. Each
single operation is ONE statement of data-modifying CTEs run in autocommit: one round trip, one
implicit transaction, the wallet row locked only for the statement (a debit of a wallet that
tracks credit lots takes a second the first time: `_debit_sql` refuses it, `_debit_lots_sql`
draws the lots, and runs first for that wallet from then on; the debit of every other wallet
plans no lot CTE). The rules are those of the
ledger's `post()` (every other posting):

- a usage debit writes its header, the wallet UPDATE and both entries only when the reference is
  new and the available balance covers it; a concurrent twin fails on the unique reference and is
  answered from the committed original;
- holds lock the hold row first, then the wallet, as everywhere;
- a batch is applied whole or not at all: one autocommit statement (`_batch_sql`) locks its
  limits, then its wallets in user-id order, then their lots, and applies the batch when it can
  decide every user whole (the usual case: no lock is held across a round trip or while the
  event loop is busy); when it cannot (a replay, a refusal, a lot credited meanwhile) it writes
  nothing (a replay fails it on the records' unique reference: it probes none), and the batch
  is planned event by event (`app.usage.batch`) in one transaction and written by one more
  statement. A batch posts one ledger transaction (a wallet leg per user, the system legs
  once) and a usage record per event, whose unique `reference` is the event's idempotency key.
  Concurrent batches cannot deadlock (limits, then wallets, in one order); a race on a
  reference is planned as a replay (retried if it races the planned write).

Spend limits, low-balance alerts and the auto top-up trigger are more CTEs of the same statement,
reading the wallet CTE's result (`crossing`: the available balance before and after), not
another round trip.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any, Literal, NamedTuple, ParamSpec, TypeVar, cast

import asyncpg
import structlog

from app.auth.service_tokens import TokenRecord
from app.db import describe_database_error, run_after_commit
from app.errors import (
    IdempotencyConflict,
    InsufficientBalance,
    InvalidStateTransition,
    NotFound,
    ServiceUnavailable,
)
from app.ids import new_id
from app.ledger import hold_state
from app.ledger.balance_events import BALANCE_EVENTS, crossing_ctes
from app.ledger.holds import HoldResult, capture_exceeds_hold
from app.ledger.holds_repository import HoldCapture, HoldRequest, HoldRow
from app.ledger.lots import LotRow
from app.ledger.repository import WalletRow
from app.ledger.service import insufficient_balance
from app.ledger.statement_repository import BATCH_REFERENCE_PREFIX, HOLD_BATCH_REFERENCE_PREFIX
from app.ledger.statements import (
    LOT_DRAWS_UPDATE,
    covered_wallet_update,
    drawn_wallet_update,
    expired_lots,
    head_draw_update,
    head_lot_ctes,
    head_wallet_update,
    locked_wallet,
    lot_draw,
    lot_draw_ctes,
    lot_draws_update,
    lot_live,
)
from app.limits.periods import Windows
from app.limits.rules import Counter, Refusal
from app.limits.rules import tightest_remaining as _tightest
from app.metrics import HOLDS_COMBINED, LEDGER_MICROS, LEDGER_TRANSACTIONS
from app.models.base import utcnow
from app.models.ledger import HoldStatus, system_account_id
from app.primary import (
    BillingConnection,
    Primary,
    UnreplicatedCommit,
    commits_watched,
    endpoints,
    finish,
)
from app.usage.batch import BatchPlan, ExistingDebit, limit_scopes, plan_batch
from app.usage.combining import BatchGroups, Combiner, Lane, Slots
from app.usage.store import (
    USAGE_DESCRIPTION,
    USAGE_KIND,
    BatchOutcome,
    Debited,
    UsageDebit,
    usage_reference,
)

USAGE_ACCOUNT = system_account_id("usage")
PROMO_USAGE_ACCOUNT = system_account_id("promo_usage")
_COVER_ATTEMPTS = 3
_LOT_WALLETS_REMEMBERED = 100_000
_BATCH_ATTEMPTS = 5
APPLICATION_NAME = "billing-gateway"
"""The pool's `application_name`, so operators (and tests) can tell its connections apart."""
SERVER_SETTINGS = {"application_name": APPLICATION_NAME, "jit": "off"}
"""The gateway's connections' settings. JIT off: a batch of thousands of events (group commit)
is estimated past `jit_above_cost` on its custom plans (each connection's first five runs of a
statement), and compiling it took 380 ms of a 680 ms statement of 8 x 1,000 events
(`bench.batch_costs --explain`); none of the gateway's statements runs long enough to gain."""

log = structlog.get_logger(__name__)

# Bound once: `labels()` takes a lock and builds a key, too dear per debit on the hot path.
_USAGE_POSTED = LEDGER_TRANSACTIONS.labels(USAGE_KIND, "posted")
_USAGE_MICROS = LEDGER_MICROS.labels(USAGE_KIND)
_CAPTURE_POSTED = LEDGER_TRANSACTIONS.labels("hold_capture", "posted")
_CAPTURE_MICROS = LEDGER_MICROS.labels("hold_capture")
_RESERVES_COMBINED = HOLDS_COMBINED.labels("reserve")
_CAPTURES_COMBINED = HOLDS_COMBINED.labels("capture")

_P = ParamSpec("_P")
_Item = TypeVar("_Item")
_R = TypeVar("_R")

# The database is gone, restarting, out of connections, not answering, demoted to a standby,
# or did not confirm the synchronous standby has the commit (`UnreplicatedCommit`, an OSError):
# the outcome is not acknowledged (each operation is one statement or one transaction), so the
# gateway retries the same id, which applies it or finds it on the primary that took over.
_OUTAGES = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection broken in the middle of a statement
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # 25006: a demoted primary
    asyncpg.exceptions.TargetServerAttributeNotMatched,  # no host takes writes yet
)


def _outage_is_503(
    method: Callable[_P, Coroutine[Any, Any, _R]],
) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Answer a database outage as 503 + `Retry-After` instead of a 500, and drop the pool's
    connections (they may all lead to a primary that is gone or demoted)."""

    @functools.wraps(method)
    async def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except _OUTAGES as exc:
            log.warning(
                "database_unavailable",
                operation=method.__name__,
                **describe_database_error(exc),
            )
            store = args[0] if args else None
            if isinstance(store, UsageStore) and not isinstance(exc, UnreplicatedCommit):
                await store.drop_connections()
            raise ServiceUnavailable(
                "The database did not confirm the operation. Retry with the same id.",
                headers={"Retry-After": "1"},
            ) from exc

    return guarded


# The wallet as the gateway shows it: `expired_micros`, what lots past their expiry still hold
# until swept, is looked up only for a wallet that tracks lots at all.
_WALLET_BY_USER = f"""
SELECT id, user_id, balance_micros, held_micros,
       CASE WHEN tracked_micros = 0 THEN 0 ELSE {expired_lots("$1", "$2")} END AS expired_micros
FROM accounts WHERE user_id = $1
"""

_SERVICE_TOKEN_BY_HASH = """
SELECT id, name, scopes, revoked_at FROM service_tokens WHERE token_hash = $1
"""

# SQL pieces of the spend limits, shared by the statements below. A limit's counter row is locked
# (FOR UPDATE: its latest committed version) BEFORE the wallet row, in every statement and
# transaction that takes both, so limits and wallets are always locked in the same order.
_EPOCH = "'1970-01-01T00:00:00Z'::timestamptz"


def _current_window(period: str, day: str, week: str, month: str) -> str:
    """The start of the window a limit of `period` counts now; the starts come from Python's
    clock (`app.limits.periods.Windows`), so tests can move it."""
    return (
        f"CASE {period} WHEN 'day' THEN {day}::timestamptz WHEN 'week' THEN {week}::timestamptz "
        f"WHEN 'month' THEN {month}::timestamptz ELSE {_EPOCH} END"
    )


def _counter_now(limit: str, current: str) -> str:
    """The window rule, as every statement reads a limit row `limit` against the window
    `current` that counts now: its `window_start` and `spent_micros` as of that window (zero
    spent when the row counts an earlier one; a row already in a later window, another
    instance's clock running ahead, is never moved back)."""
    return (
        f"greatest({limit}.window_start, {current}) AS window_start, "
        f"CASE WHEN {limit}.window_start >= {current} THEN {limit}.spent_micros ELSE 0 END"
        " AS spent_micros"
    )


def _window_of(period: str, moment: str) -> str:
    """The start of the window of `period` that `moment` (a hold's reservation) fell in."""
    truncated = f"date_trunc({period}, {moment}, 'UTC')"
    return f"CASE {period} WHEN 'total' THEN {_EPOCH} ELSE {truncated} END"


def _limit_ctes(user: str, key: str, amount: str, *, replay_first: bool = True) -> str:
    """The spend limits of a debit or reserve of `amount` by `user` through API key `key`:
    `limits` (locked), `counters` (each one's current window, from the windows `$9`-`$11`) and
    `refused` (the first limit `amount` would take past it). With `replay_first`, for a
    statement whose `existing` CTE finds a replay first, a replay locks and checks nothing;
    without, the statement looks for a replay only once nothing was written (`_debit_answer`)."""
    replay = "\n      AND NOT EXISTS (SELECT 1 FROM existing)" if replay_first else ""
    return f"""limits AS (
    -- The limits the amount is subject to (its account's, its key's; on each an operator's
    -- and the user's own); none for most users.
    SELECT id, scope, set_by, period, limit_micros, window_start, spent_micros FROM spend_limits
    WHERE user_id = {user} AND scope IN ('account', 'key:' || {key}){replay}
    ORDER BY scope, set_by FOR UPDATE
), counters AS (
    -- Each limit's counter as of its current window.
    SELECT l.id, l.scope, l.set_by, l.period, l.limit_micros,
           {_counter_now("l", "w.current_window")}
    FROM limits l,
         LATERAL (SELECT {_current_window("l.period", "$9", "$10", "$11")} AS current_window) w
), refused AS (
    -- The first limit the amount would take past its limit: it is refused, nothing is written.
    SELECT * FROM counters WHERE spent_micros + {amount} > limit_micros
    ORDER BY scope, set_by LIMIT 1
)"""


_ALLOWED = " AND NOT EXISTS (SELECT 1 FROM refused)"
"""A debit's wallet condition: no spend limit refused it (its id being new is the unique
indexes' to enforce, `_debit_answer`)."""
_NEW_AND_ALLOWED = " AND NOT EXISTS (SELECT 1 FROM existing)" + _ALLOWED
"""A reserve's wallet condition: its id is new, and no spend limit refused it."""

_USAGE_RECORD_COLUMNS = """
        (user_id, transaction_id, request_id, api_key_id, model, input_tokens, output_tokens,
         amount_micros, balance_after_micros, created_at)"""


def _usage_entries(amount: str, now: str) -> str:
    """The `entries` of a usage header `txn`: `amount` out of the debited `wallet`; the granted
    credit it drew (`drawn`, `app.ledger.statements.lot_draw_ctes`) into the promo-usage
    account, the rest (paid credit) into the usage account."""
    return f"""entries AS (
    INSERT INTO ledger_entries
        (transaction_id, account_id, amount_micros, balance_after_micros, created_at)
    SELECT txn.id, wallet.id, -{amount}::bigint, wallet.balance_micros, {now} FROM txn, wallet
    UNION ALL
    SELECT txn.id, '{USAGE_ACCOUNT}', {amount} - drawn.granted, NULL, {now} FROM txn, drawn
    WHERE {amount} - drawn.granted > 0
    UNION ALL
    SELECT txn.id, '{PROMO_USAGE_ACCOUNT}', drawn.granted, NULL, {now} FROM txn, drawn
    WHERE drawn.granted > 0
)"""


_DEBIT_LOTS = lot_draw_ctes("$3", "$4", "$7")

_EXISTING_DEBIT = """SELECT transaction_id AS id, request_hash FROM usage_records
    WHERE reference = $1"""
"""A debit's reference applied before: in `usage_records`, where every usage debit keeps it
(a batch's events have no ledger transaction of their own; migration 0028 gave the debits older
than their records one)."""

_DEBIT_RECORD_COLUMNS = """
        (user_id, transaction_id, reference, request_hash, metadata, request_id, api_key_id,
         model, input_tokens, output_tokens, amount_micros, balance_after_micros, created_at)"""
"""A usage debit's record: the usage columns and the debit's key, fingerprint and metadata."""


_LOTS_OUTCOME = """
            WHEN a.tracked_micros <> 0 THEN 'lots'"""
"""`_debit_sql`'s answer to a wallet tracking lots: nothing written, run `_debit_lots_sql`."""
_LOTS_COLUMNS = """
       coalesce(w.expired_micros, 0) AS expired_micros,
       CASE WHEN w.id IS NOT NULL THEN EXISTS (SELECT 1 FROM locked)
            ELSE a.tracked_micros <> 0 END AS tracks_lots,"""
"""What `_debit_lots_sql` answers besides: the expired lots' total, and whether the wallet
tracks lots (as locked before the debit, else as the statement's snapshot saw it), the store's
hint for its next debits."""


def _debit_answer(lots_outcome: str, lots_columns: str) -> str:
    """The one row both debit statements answer, whatever happened (`DebitRow`, `Refusal`): the
    wallet after the debit, or as the statement's snapshot saw it when nothing was debited.

    A replay is looked up only then, as the wallet is (`OFFSET 0` keeps each lookup a subquery
    gated by `w.id IS NULL`, which the planner would otherwise fold into the join): a debit of
    a new request id (nearly all) probes neither reference index nor the wallet again. A replay
    whose wallet covers it and whose limits allow it runs into those unique indexes instead
    (the statement fails, nothing is written, and the store answers from the original,
    `UsageStore._replay`), as a concurrent twin does. `lots_outcome` adds a `WHEN` to the
    outcome, `lots_columns` columns to the row."""
    return f"""SELECT CASE WHEN w.id IS NOT NULL THEN 'applied'
            WHEN e.id IS NOT NULL THEN 'replayed'
            WHEN r.scope IS NOT NULL THEN 'limited'{lots_outcome}
            ELSE 'insufficient' END AS outcome,
       coalesce(w.id, a.id) AS wallet_id, coalesce(w.user_id, a.user_id) AS wallet_user_id,
       coalesce(w.balance_micros, a.balance_micros) AS balance_micros,
       coalesce(w.held_micros, a.held_micros) AS held_micros,{lots_columns}
       e.id AS original_id, e.request_hash AS original_request_hash,
       (SELECT min(remaining) FROM spend) AS limit_remaining_micros,
       r.scope, r.period, r.limit_micros, r.spent_micros, r.window_start,
       {BALANCE_EVENTS.recorded_sql()} AS after_commit
FROM (SELECT) one
LEFT JOIN wallet w ON true
LEFT JOIN LATERAL (SELECT * FROM existing WHERE w.id IS NULL OFFSET 0) e ON true
LEFT JOIN refused r ON true
LEFT JOIN LATERAL (SELECT * FROM accounts WHERE user_id = $3 AND w.id IS NULL OFFSET 0) a ON true
"""


def _spend_and_txn() -> str:
    """The debit's spend-limit counters moved and its transaction header, the same in both debit
    statements (after their `wallet` CTE)."""
    return f"""spend AS (
    UPDATE spend_limits s SET window_start = c.window_start, spent_micros = c.spent_micros + $4
    FROM counters c, wallet WHERE s.id = c.id
    RETURNING s.limit_micros - s.spent_micros AS remaining
), txn AS (
    INSERT INTO ledger_transactions
        (id, reference, kind, user_id, description, request_hash, details, created_at)
    SELECT $2, $1, '{USAGE_KIND}', $3, '{USAGE_DESCRIPTION}', $5, $6::json, $7 FROM wallet
    RETURNING id
)"""


def _record_and_crossing() -> str:
    """The debit's usage record and the balance crossings it may cause, the same in both debit
    statements (`txn` and `wallet` CTEs before it; `$3` user, `$4` amount, `$7` now)."""
    return f"""record AS (
    INSERT INTO usage_records{_DEBIT_RECORD_COLUMNS}
    SELECT $3, txn.id, $1, $5, ($6::jsonb -> 'metadata')::json, $12, $8, $13, $14, $15, $4,
           wallet.balance_micros, $7
    FROM txn, wallet
), crossing AS (
    SELECT user_id, balance_micros - held_micros + $4::bigint AS available_before,
           balance_micros - held_micros AS available_after
    FROM wallet
    -- Only a wallet with an alert or an auto top-up (`watch_micros`, their highest threshold)
    -- can cross one: every other debit skips the lookups below.
    WHERE watch_micros IS NOT NULL AND balance_micros - held_micros < watch_micros
), {crossing_ctes("crossing", now="$7", reference="$1")}"""


def _debit_sql() -> str:
    """The usage debit of a wallet that tracks no lot (nearly every wallet: a never-expiring
    paid balance is derived, `tracked_micros = 0`), as it was before lots: no lot CTEs, whose
    plan nodes asyncpg's per-call planning pays for even when no lot is touched. Its wallet
    UPDATE also requires `tracked_micros = 0` (re-checked on the locked row); a wallet that
    tracks lots is answered `lots` and nothing is written: the store then runs
    `_debit_lots_sql` with the same arguments (and that one first for the wallet's next
    debits, `UsageStore._lot_wallets`). A replay or a spend-limit refusal is answered
    here whatever the wallet tracks (neither depends on lots). A wallet whose first lot was
    credited after this statement's snapshot is answered `insufficient`; the store reads the
    wallet again and, covered, runs the debit again (`_StaleLots`), which then sees the lot."""
    return f"""
WITH existing AS (
    {_EXISTING_DEBIT}
), {_limit_ctes("$3", "$8", "$4", replay_first=False)}, wallet AS (
    {covered_wallet_update("$3", debit="$4", when=_ALLOWED + " AND tracked_micros = 0")}
), {_spend_and_txn()}, entries AS (
    -- No lot drawn: all of the (positive) amount is paid credit used, to the usage account.
    INSERT INTO ledger_entries
        (transaction_id, account_id, amount_micros, balance_after_micros, created_at)
    SELECT txn.id, wallet.id, -$4::bigint, wallet.balance_micros, $7 FROM txn, wallet
    UNION ALL
    SELECT txn.id, '{USAGE_ACCOUNT}', $4, NULL, $7 FROM txn
), {_record_and_crossing()}
-- One row whatever happened, as `_debit_lots_sql` answers (no expired lots: none tracked).
{_debit_answer(_LOTS_OUTCOME, "")}"""


def _debit_lots_sql() -> str:
    """The usage debit of any wallet, drawing its tracked lots in order: what the store runs
    when `_debit_sql` answered `lots`, or first for a wallet it saw tracking lots before. Its
    `tracks_lots` (as of the statement's snapshot) tells the store whether to keep doing so."""
    return f"""
WITH existing AS (
    {_EXISTING_DEBIT}
), {_limit_ctes("$3", "$8", "$4", replay_first=False)}, locked AS (
    {locked_wallet("$3", when=_ALLOWED)}
), {_DEBIT_LOTS}, wallet AS (
    {drawn_wallet_update("$3", "$4", when=_ALLOWED)}
), lot_draws AS (
    {LOT_DRAWS_UPDATE}
), {_spend_and_txn()}, {_usage_entries("$4", "$7")}, {_record_and_crossing()}
{_debit_answer("", _LOTS_COLUMNS)}"""


_HEAD_OUTCOME = """
            WHEN a.id IS NOT NULL THEN 'lots'"""
"""`_debit_head_sql`'s answer when its head lot alone could not take the debit (or the wallet
changed after its snapshot), whatever else: run `_debit_lots_sql`, which decides."""
_HEAD_COLUMNS = """
       coalesce(w.expired_micros, 0) AS expired_micros,"""


def _debit_head_sql() -> str:
    """The usage debit of a wallet tracking lots whose first live lot covers it (a wallet with a
    promotional grant or expiring credit: nearly each of its debits): what the store runs first
    for a wallet it saw tracking lots. It locks no lot and reads the lots once, as of its
    snapshot (`app.ledger.statements.head_lot_ctes`); the wallet's UPDATE applies it only if the
    wallet's row is the version those lots were read with. Else, or when the head lot is short,
    nothing is written and it answers `lots`: the store runs `_debit_lots_sql`. A replay or a
    spend-limit refusal is answered here, as by the others."""
    return f"""
WITH existing AS (
    {_EXISTING_DEBIT}
), {_limit_ctes("$3", "$8", "$4", replay_first=False)},
{head_lot_ctes("$3", "$4", "$7")}, wallet AS (
    {head_wallet_update("$3", "$4", when=_ALLOWED)}
), lot_draws AS (
    {head_draw_update("$4")}
), {_spend_and_txn()}, {_usage_entries("$4", "$7")}, {_record_and_crossing()}
{_debit_answer(_HEAD_OUTCOME, _HEAD_COLUMNS)}"""


_TRANSACTION_BY_REFERENCE = f"""
{_EXISTING_DEBIT}
"""

_HOLD_COLUMNS = (
    "id, user_id, amount_micros, status, captured_micros, request_hash, resolution_hash, "
    "expires_at, created_at, resolved_at"
)


def _h(prefix: str) -> str:
    return ", ".join(f"{prefix}.{c.strip()}" for c in _HOLD_COLUMNS.split(","))


_HOLD_WALLET = "w.id AS wallet_id, w.user_id AS wallet_user_id, w.balance_micros, w.held_micros"
"""The columns of a hold statement's wallet `w`, as `HoldStatementRow` reads them."""


_NOT_EXPIRED_COVERS_HOLD = f"""
      AND balance_micros - held_micros
          - CASE WHEN tracked_micros = 0 THEN 0 ELSE {expired_lots("$2", "$7")} END >= $3"""
"""A reserve's cover leaves out what expired lots hold (looked up only for a wallet with tracked
lots; read unlocked, which can only overstate it, refusing at worst)."""


def _reserve_sql() -> str:
    return f"""
WITH existing AS (
    SELECT {_HOLD_COLUMNS} FROM holds WHERE id = $1
), {_limit_ctes("$2", "$8", "$3")}, wallet AS (
    {covered_wallet_update("$2", hold="$3", when=_NEW_AND_ALLOWED + _NOT_EXPIRED_COVERS_HOLD)}
), spend AS (
    -- An active hold counts in the window it is reserved in, until it is resolved.
    UPDATE spend_limits s SET window_start = c.window_start, spent_micros = c.spent_micros + $3
    FROM counters c, wallet WHERE s.id = c.id
    RETURNING s.limit_micros - s.spent_micros AS remaining
), hold AS (
    INSERT INTO holds (id, account_id, user_id, amount_micros, status, request_hash, details,
                       expires_at, created_at, api_key_id)
    SELECT $1, wallet.id, $2, $3, {hold_state.INITIAL}, $4, $5::json, $6, $7, $8 FROM wallet
    RETURNING {_HOLD_COLUMNS}
), crossing AS (
    SELECT user_id, balance_micros - held_micros + $3::bigint AS available_before,
           balance_micros - held_micros AS available_after
    FROM wallet
    WHERE watch_micros IS NOT NULL AND balance_micros - held_micros < watch_micros
), {crossing_ctes("crossing", now="$7", reference="'hold:' || $1")}, found AS (
    SELECT {_HOLD_COLUMNS} FROM hold UNION ALL SELECT {_HOLD_COLUMNS} FROM existing
)
-- One row whatever happened (`HoldStatementRow`, `Refusal`): the hold reserved now or before
-- (none when refused), and its wallet after the reserve or as the statement's snapshot saw it.
SELECT CASE WHEN w.id IS NOT NULL THEN 'reserved'
            WHEN e.id IS NOT NULL THEN 'existing'
            WHEN r.scope IS NOT NULL THEN 'limited'
            ELSE 'insufficient' END AS outcome,
       {_h("h")},
       coalesce(w.id, a.id) AS wallet_id, coalesce(w.user_id, a.user_id) AS wallet_user_id,
       coalesce(w.balance_micros, a.balance_micros) AS balance_micros,
       coalesce(w.held_micros, a.held_micros) AS held_micros,
       (SELECT min(remaining) FROM spend) AS limit_remaining_micros,
       r.scope, r.period, r.limit_micros, r.spent_micros, r.window_start,
       a.tracked_micros <> 0 AS tracks_lots
FROM (SELECT) one
LEFT JOIN found h ON true
LEFT JOIN wallet w ON true
LEFT JOIN existing e ON true
LEFT JOIN refused r ON true
LEFT JOIN accounts a ON a.user_id = coalesce(e.user_id, $2)
"""


# What a hold's resolution does to its limits: it counted in the window it was reserved in, so
# a capture settles the difference there and a release (or expiry) gives the amount back there;
# a counter that has moved on to a later window is left alone. `$delta` is that difference. The
# limits are locked before the wallet, as everywhere, and the answer's `remaining` is what the
# tightest limit leaves in the current window (windows `$day`, `$week`, `$month`).
_HOLD_LIMITS = """
limits AS (
    SELECT s.id, s.period, s.limit_micros, s.window_start, s.spent_micros
    FROM spend_limits s, hold h
    WHERE s.user_id = h.user_id AND s.scope IN ('account', 'key:' || h.api_key_id)
    ORDER BY s.scope, s.set_by FOR UPDATE OF s
), settled AS (
    UPDATE spend_limits s SET spent_micros = s.spent_micros + {delta}
    FROM limits l, hold h
    WHERE s.id = l.id AND s.window_start = {hold_window}
    RETURNING s.id, s.spent_micros
), remaining AS (
    SELECT min(l.limit_micros - CASE WHEN l.window_start >= {current}
                                     THEN coalesce(st.spent_micros, l.spent_micros) ELSE 0 END)
           AS remaining
    FROM limits l LEFT JOIN settled st ON st.id = l.id
)"""


def _hold_limits(delta: str, day: str, week: str, month: str) -> str:
    return _HOLD_LIMITS.format(
        delta=delta,
        hold_window=_window_of("s.period", "h.created_at"),
        current=_current_window("l.period", day, week, month),
    )


# A capture posts the actual amount (up to `$13` times the hold's: the usage was served, so the
# balance may go negative) and drops the reservation in the same wallet UPDATE; a capture of 0
# only releases. A capture past its bound matches no hold and writes nothing.
_CAPTURED, _CAPTURABLE = hold_state.capture_sql()

_CAPTURE_LOTS = lot_draw_ctes("(SELECT user_id FROM hold)", "$2", "$4")

_LOTS_TO_DRAW = "$2 > 0 AND {wallet}.tracked_micros <> 0"
"""A capture that draws lots: of a positive amount, from a wallet tracking any (one of 0 draws
nothing, whatever the wallet tracks)."""


def _capture_hold(*, lean: bool) -> str:
    """The `hold` CTE: the capturable hold, locked first and captured. The lean statement's
    only if its wallet (as the snapshot saw it) has no lot to draw."""
    no_lots = ""
    if lean:
        tracks = _LOTS_TO_DRAW.format(wallet="a")
        no_lots = f"""
      AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = holds.account_id AND {tracks})"""
    return f"""hold AS (
    UPDATE holds SET {_CAPTURED}, captured_micros = $2, resolution_hash = $3, resolved_at = $4
    WHERE id = $1 AND {_CAPTURABLE} AND $2 <= amount_micros * $13::float8{no_lots}
    RETURNING account_id, api_key_id, {_HOLD_COLUMNS}
), {_hold_limits("$2 - h.amount_micros", "$7", "$8", "$9")}"""


def _capture_rest(entries: str) -> str:
    """What a capture writes after its `wallet` CTE, in both statements: the header (only for a
    positive amount, and only once the wallet took it), its `entries`, the usage record and the
    crossings."""
    return f"""txn AS (
    INSERT INTO ledger_transactions
        (id, reference, kind, user_id, description, request_hash, details, created_at)
    SELECT $5, 'hold:' || hold.id, 'hold_capture', hold.user_id, '{USAGE_DESCRIPTION}', $3,
           (jsonb_build_object('hold_id', hold.id, 'reserved_micros', hold.amount_micros)
            || coalesce($6::jsonb, '{{}}'::jsonb))::json,
           $4
    FROM hold, wallet WHERE $2 > 0
    RETURNING id
), {entries}, record AS (
    INSERT INTO usage_records{_USAGE_RECORD_COLUMNS}
    SELECT hold.user_id, txn.id, hold.id, hold.api_key_id, $10, $11, $12, $2,
           wallet.balance_micros, $4
    FROM txn, hold, wallet
), crossing AS (
    SELECT wallet.user_id,
           wallet.balance_micros - wallet.held_micros + $2::bigint - hold.amount_micros
               AS available_before,
           wallet.balance_micros - wallet.held_micros AS available_after
    FROM wallet, hold
    WHERE wallet.watch_micros IS NOT NULL AND least(
        wallet.balance_micros - wallet.held_micros + $2::bigint - hold.amount_micros,
        wallet.balance_micros - wallet.held_micros
    ) < wallet.watch_micros
), {crossing_ctes("crossing", now="$4", reference="'hold:' || $1", rises=True)}"""


_PAID_CAPTURE_ENTRIES = f"""entries AS (
    -- No lot drawn: all of the amount is paid credit used, to the usage account.
    INSERT INTO ledger_entries
        (transaction_id, account_id, amount_micros, balance_after_micros, created_at)
    SELECT txn.id, wallet.id, -$2::bigint, wallet.balance_micros, $4 FROM txn, wallet
    UNION ALL
    SELECT txn.id, '{USAGE_ACCOUNT}', $2, NULL, $4 FROM txn
)"""


def _capture_sql() -> str:
    """The capture of a hold whose wallet has no lot to draw (nearly every wallet: a
    never-expiring paid balance is derived, `tracked_micros = 0`; or a capture of 0): no lot
    CTEs, whose plan nodes the per-call planning pays for even when no lot is touched, as in
    the debit's `_debit_sql`. A hold whose wallet tracks lots is not captured here: the answer
    has no hold and `lots` true, and the store runs `_capture_lots_sql`. A lot credited after
    the snapshot, before the wallet's lock, leaves the wallet UPDATE (which re-checks
    `tracked_micros` on the locked row) with no row: the statement then fails whole
    (`hold_capture_needs_lots`, SQLSTATE 40001) and the store runs the lots statement too."""
    return f"""
WITH {_capture_hold(lean=True)}, wallet AS (
    -- All of it from the never-expiring paid credit, even below zero: the usage was served.
    UPDATE accounts a SET balance_micros = a.balance_micros - $2,
                          held_micros = a.held_micros - hold.amount_micros
    FROM hold WHERE a.id = hold.account_id
      AND NOT ({_LOTS_TO_DRAW.format(wallet="a")})
      AND (SELECT count(*) FROM limits) >= 0  -- the limits are locked first
    RETURNING a.id, a.user_id, a.balance_micros, a.held_micros, a.watch_micros
), {_capture_rest(_PAID_CAPTURE_ENTRIES)}
-- No hold captured: `lots` says whether it is the lots statement's to capture (else the hold
-- is not capturable, or not there). A hold captured whose wallet was not updated fails it all.
SELECT {_h("h")}, {_HOLD_WALLET}, (SELECT remaining FROM remaining) AS limit_remaining_micros,
       CASE WHEN h.id IS NULL THEN EXISTS (
           SELECT 1 FROM holds x JOIN accounts a ON a.id = x.account_id
           WHERE x.id = $1 AND x.{_CAPTURABLE} AND $2 <= x.amount_micros * $13::float8
             AND {_LOTS_TO_DRAW.format(wallet="a")})
       END AS lots,
       CASE WHEN h.id IS NOT NULL AND w.id IS NULL THEN hold_capture_needs_lots(h.id) END
           AS raced
FROM (SELECT) one LEFT JOIN hold h ON true LEFT JOIN wallet w ON true
"""


def _capture_lots_sql() -> str:
    """The capture of any hold, drawing its wallet's live lots in order (`LOT_ORDER`): what
    the store runs when `_capture_sql` answered `lots`."""
    return f"""
WITH {_capture_hold(lean=False)}, locked AS (
    SELECT a.id FROM accounts a, hold
    WHERE a.id = hold.account_id AND a.tracked_micros <> 0
      AND (SELECT count(*) FROM limits) >= 0  -- the limits are locked first
    FOR UPDATE OF a
), {_CAPTURE_LOTS}, wallet AS (
    -- The usage was served: the capture draws from the live lots in order and takes the rest
    -- from the never-expiring paid credit, even below zero.
    UPDATE accounts a SET balance_micros = a.balance_micros - $2,
                          held_micros = a.held_micros - hold.amount_micros,
                          tracked_micros = a.tracked_micros - d.total
    FROM hold, drawn d WHERE a.id = hold.account_id
      AND (SELECT count(*) FROM limits) >= 0  -- the limits are locked first
    RETURNING a.id, a.user_id, a.balance_micros, a.held_micros, a.watch_micros
), lot_draws AS (
    {LOT_DRAWS_UPDATE}
), {_capture_rest(_usage_entries("$2", "$4"))}
SELECT {_h("h")}, {_HOLD_WALLET}, (SELECT remaining FROM remaining) AS limit_remaining_micros
FROM hold h, wallet w
"""


# A release gives the reservation back (and the amount to its spend-limit window); an expiry
# (`$7` = 'expired', by the job, once the hold is due) is the same release with no request.
_RELEASED, _RELEASABLE = hold_state.release_sql("$7::text")


def _release_sql() -> str:
    return f"""
WITH hold AS (
    UPDATE holds SET {_RELEASED}, resolution_hash = $2, resolved_at = $3
    WHERE id = $1 AND {_RELEASABLE}
      AND ($7::text = '{hold_state.HoldStatus.RELEASED}' OR expires_at <= $3)
    RETURNING account_id, api_key_id, {_HOLD_COLUMNS}
), {_hold_limits("-h.amount_micros", "$4", "$5", "$6")}, wallet AS (
    UPDATE accounts a SET held_micros = a.held_micros - hold.amount_micros
    FROM hold WHERE a.id = hold.account_id
      AND (SELECT count(*) FROM limits) >= 0  -- the limits are locked first
    RETURNING a.id, a.user_id, a.balance_micros, a.held_micros, a.watch_micros
), crossing AS (
    SELECT wallet.user_id,
           wallet.balance_micros - wallet.held_micros - hold.amount_micros AS available_before,
           wallet.balance_micros - wallet.held_micros AS available_after
    FROM wallet, hold
    WHERE wallet.watch_micros IS NOT NULL
      AND wallet.balance_micros - wallet.held_micros - hold.amount_micros < wallet.watch_micros
), {crossing_ctes("crossing", now="$3", reference="NULL", rises=True, spending=False)}
SELECT {_h("h")}, {_HOLD_WALLET}, (SELECT remaining FROM remaining) AS limit_remaining_micros
FROM hold h, wallet w
"""


# Reserves and captures of holds that waited past the bound go as one statement each
# (`UsageStore.reserve_batch`, `capture_batch`), applied whole when every one of them would be
# applied alone, in any order, exactly as it is here; else nothing is written and no row is
# answered, and each goes alone, in arrival order (the statements above decide the rest).


def _batch_limits(items: str, users: str, windows: tuple[str, str, str]) -> str:
    """The `limits` CTE of a batch: the spend limits of the users `users` (a query of user ids)
    on the scopes the batch's `items` (rows with `user_id` and `api_key_id`) name, each as of
    the window counting now (`windows`: the day's, week's and month's starts), locked in key
    order before any wallet. Each (user, scope) pair is probed by the table's unique index
    (a subquery with LIMIT is never flattened into a join, so no plan hashes or scans the
    whole table), the pairs in key order and each pair's rows (at most one per `set_by`) in
    `set_by` order: the rows are locked in (user, scope, set_by) order, as every writer takes
    them. (Not `user_id = ANY(array)`: on a seq scan that compares each row with every user
    of the batch, a thousand by a thousand.)"""
    day, week, month = windows
    return f"""limits AS (
    SELECT s.id, s.user_id, s.scope, s.limit_micros, {_counter_now("s", "w.current_window")}
    FROM (SELECT user_id, scope
          FROM (SELECT user_id, 'account'::text AS scope FROM {items}
                UNION SELECT user_id, 'key:' || api_key_id FROM {items}
                WHERE api_key_id IS NOT NULL) pairs
          WHERE user_id IN ({users})
          ORDER BY user_id, scope) p,
         LATERAL (SELECT s.* FROM spend_limits s
                  WHERE s.user_id = p.user_id AND s.scope = p.scope
                  ORDER BY s.set_by LIMIT 2 FOR UPDATE) s,
         LATERAL (SELECT {_current_window("s.period", day, week, month)} AS current_window) w
)"""


def _batch_counters(items: str) -> str:
    """The `counted` CTE of a batch: each item of `items` (in `ord` order, spending `amount`)
    under each limit it is subject to, with what the limit's window has spent once the item is
    in (`_BATCH_SPEND` writes each limit's last count, `_TIGHTEST_LIMIT` answers each item's)."""
    return f"""counted AS (
    SELECT i.ord, l.id, l.user_id, l.window_start, l.limit_micros,
           (l.spent_micros + sum(i.amount) OVER (PARTITION BY l.id ORDER BY i.ord))::bigint
               AS spent
    FROM {items} i JOIN limits l
      ON l.user_id = i.user_id AND (l.scope = 'account' OR l.scope = 'key:' || i.api_key_id)
)"""


_BATCH_SPEND = """spend AS (
    UPDATE spend_limits s SET window_start = c.window_start, spent_micros = c.spent
    FROM (SELECT DISTINCT ON (id) id, user_id, window_start, spent FROM counted
          ORDER BY id, ord DESC) c
    JOIN wallets w ON w.user_id = c.user_id
    WHERE s.id = c.id
)"""
"""Each limit's last count (`counted`), written for the users whose wallets were applied."""

_TIGHTEST_LIMIT = "(SELECT ord, min(limit_micros - spent) AS remaining FROM counted GROUP BY ord)"
"""Per item (`ord`): what its tightest limit leaves once it is in."""

_DEBIT_BATCH_SPEND = """last_counts AS (
    -- Each limit's last count, once every user's wallet was debited (all or nothing, as
    -- `wallets`): one row, its limits' ids and each one's count by id.
    SELECT array_agg(id) AS ids,
           jsonb_object_agg(id, jsonb_build_array(window_start, spent)) AS counts
    FROM (SELECT DISTINCT ON (id) id, window_start, spent FROM counted
          ORDER BY id, ord DESC) c
    WHERE EXISTS (SELECT 1 FROM wallets)
), spend AS (
    -- Each limit by its primary key (`= ANY` of the ids), its count looked up by id: no join of
    -- the limits with the wallets or the counts, each estimated at a row or two in the generic
    -- plan and planned as a nested loop (every limit for each wallet: 0.3 s of a batch of
    -- 1,000 keyed events), nor a hash join of the whole table (by `s.id = c.id`).
    UPDATE spend_limits s
    SET window_start = (l.counts -> s.id ->> 0)::timestamptz,
        spent_micros = (l.counts -> s.id ->> 1)::bigint
    FROM last_counts l WHERE s.id = ANY (l.ids)
)"""
"""The debit batch's `spend`: each limit's last count (`counted`), written when the wallets were
(all of them or none)."""

_TIGHTEST_BY_ORD = (
    "SELECT jsonb_object_agg(ord, remaining) AS remaining FROM"
    " (SELECT ord, min(limit_micros - spent) AS remaining FROM counted GROUP BY ord) r"
)
"""One row: per item (`ord`, as a text key) what its tightest limit leaves once it is in (no key:
no limit), looked up by each answered row, not joined to it (a join of two CTEs estimated at a
row or two each is planned as a nested loop: every event against every event, 58 ms of a batch
of 1,000 keyed events)."""


_DECIDABLE_USERS = "SELECT user_id FROM users EXCEPT SELECT user_id FROM planned"
"""The users of a hold batch the statement may decide (none of whose holds goes alone)."""

_RESERVE_REQUESTS = """unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                  $6::timestamptz[], $7::text[])
         WITH ORDINALITY AS r(id, user_id, amount, request_hash, details, expires_at,
                              api_key_id, ord)"""


def _reserve_batch_sql() -> str:
    """Reserves (`$8` now, `$9`-`$11` the limits' windows), in arrival order: their spend limits
    locked, then their wallets (user-id order, as every writer), each user decided whole as the
    debits' batch decides it (`_batch_sql`): every hold id of the user new and once in the
    batch, the user's available balance (less what expired lots hold) covering the user's total
    and its limits leaving room for it. Amounts are positive, so each of the user's reserves,
    alone in any order, is then covered and within its limits. The decided users' reserves are
    applied: one row each, in order, with its wallet right after it. The others' are left to go
    alone, after the statement, in arrival order: a reserve touches only its user's wallet and
    limits and its hold id (a repeated one leaves every user naming it undecided), so neither
    set can change what the other's reserves do."""
    return f"""
WITH rq AS MATERIALIZED (
    SELECT * FROM {_RESERVE_REQUESTS}
), users AS (
    SELECT user_id, sum(amount)::bigint AS total FROM rq GROUP BY user_id
), planned AS (
    -- Users with a hold id reserved before (one probe of the key each), or repeated in the
    -- batch: each of their reserves goes alone.
    SELECT user_id FROM rq WHERE (SELECT true FROM holds h WHERE h.id = rq.id LIMIT 1)
    UNION
    SELECT user_id FROM rq WHERE id IN (SELECT id FROM rq GROUP BY id HAVING count(*) > 1)
), {_batch_limits("rq", _DECIDABLE_USERS, ("$9", "$10", "$11"))}, locked AS (
    SELECT id, user_id, balance_micros, held_micros, tracked_micros FROM accounts
    WHERE user_id = ANY(ARRAY({_DECIDABLE_USERS}))
      AND (SELECT count(*) FROM limits) >= 0  -- the limits are locked first
    ORDER BY user_id FOR UPDATE
), {_batch_counters("rq")}, decided AS (
    SELECT k.id, k.user_id, u.total FROM locked k JOIN users u ON u.user_id = k.user_id
    WHERE k.balance_micros - k.held_micros - CASE WHEN k.tracked_micros = 0 THEN 0
              ELSE {expired_lots("k.user_id", "$8")} END >= u.total
      AND k.user_id NOT IN (SELECT user_id FROM counted WHERE spent > limit_micros)
), wallets AS (
    UPDATE accounts a SET held_micros = a.held_micros + d.total
    FROM decided d WHERE a.id = d.id
    RETURNING a.id, a.user_id, a.balance_micros, a.held_micros, a.watch_micros,
              a.tracked_micros, d.total
), {_BATCH_SPEND}, held AS (
    INSERT INTO holds (id, account_id, user_id, amount_micros, status, request_hash, details,
                       expires_at, created_at, api_key_id)
    SELECT rq.id, w.id, rq.user_id, rq.amount, {hold_state.INITIAL}, rq.request_hash,
           rq.details::json, rq.expires_at, $8, rq.api_key_id
    FROM rq JOIN wallets w ON w.user_id = rq.user_id ORDER BY rq.ord
), crossing AS (
    -- Per user: the available balance before the first reserve and after the last (reserves
    -- only lower it, so that is the crossing of each threshold, once).
    SELECT user_id, balance_micros - held_micros + total AS available_before,
           balance_micros - held_micros AS available_after
    FROM wallets
    WHERE watch_micros IS NOT NULL AND balance_micros - held_micros < watch_micros
), {crossing_ctes("crossing", now="$8", reference="NULL")}
SELECT rq.ord, rq.id, rq.user_id, rq.amount AS amount_micros,
       {hold_state.INITIAL}::text AS status, NULL::bigint AS captured_micros, rq.request_hash,
       NULL::text AS resolution_hash, rq.expires_at, $8::timestamptz AS created_at,
       NULL::timestamptz AS resolved_at, w.id AS wallet_id, w.user_id AS wallet_user_id,
       w.balance_micros,
       (w.held_micros - w.total
           + sum(rq.amount) OVER (PARTITION BY rq.user_id ORDER BY rq.ord))::bigint
           AS held_micros,
       r.remaining AS limit_remaining_micros, w.tracked_micros <> 0 AS tracks_lots
FROM rq JOIN wallets w ON w.user_id = rq.user_id
LEFT JOIN {_TIGHTEST_LIMIT} r
  ON r.ord = rq.ord
ORDER BY rq.ord
"""


_CAPTURE_REQUESTS = """unnest($1::text[], $2::bigint[], $3::text[], $5::text[],
                  $6::text[], $7::bigint[], $8::bigint[])
         WITH ORDINALITY AS c(hold_id, amount, resolution_hash, details, model,
                              input_tokens, output_tokens, ord)"""


def _locked_lots(now: str) -> str:
    """A batch's `lots` CTE: the tracked lots with a remainder of the wallets (`locked`) that
    track any, locked once their wallets are (as every writer of lots), each as it stands once
    locked, and whether it is live at `now`. The debit batch and the capture batch lock them so."""
    return f"""lots AS (
    SELECT l.id, l.user_id, l.kind, l.expires_at, l.created_at, l.remaining_micros,
           {lot_live(now)} AS live
    FROM credit_lots l
    WHERE l.user_id IN (SELECT user_id FROM locked WHERE tracked_micros <> 0)
      AND l.remaining_micros > 0
    ORDER BY l.id FOR UPDATE OF l"""


def _batch_legs(amount: str, wallets_where: str = "") -> str:
    """THE legs of a batch's ONE ledger transaction (debits or captures), from its `wallets`
    CTE (`id`, `user_id`, `balance_micros` after, `granted` and the `amount` column each
    wallet gave): a wallet leg per user (those `wallets_where` keeps) with its balance after,
    then the paid credit used into the usage account and the granted credit used into the
    promo-usage account, once each; `legs.leg` orders them."""
    return f"""(
        SELECT 0 AS leg, user_id, id AS account_id, -{amount} AS amount_micros,
               balance_micros AS balance_after
        FROM wallets {wallets_where}
        UNION ALL
        SELECT 1, NULL, '{USAGE_ACCOUNT}', sum({amount} - granted), NULL FROM wallets
        HAVING sum({amount} - granted) > 0
        UNION ALL
        SELECT 2, NULL, '{PROMO_USAGE_ACCOUNT}', sum(granted), NULL FROM wallets
        HAVING sum(granted) > 0
    ) legs"""


def _capture_batch_sql() -> str:
    """Captures (`$9` the bound's multiple, `$10` now, `$11`-`$13` the limits' windows), in
    arrival order: their holds locked first (id order), then their limits, then their wallets
    (user-id order), then the tracked lots of those that track any (id order, as every writer of
    lots). A wallet's captures are applied here when each of its holds is named once, is
    capturable within its bound, the lots seen are all the wallet tracks (else one was credited
    after the statement's snapshot) and the wallet has no watch (an alert or auto top-up
    threshold: a capture may raise the available balance as well as lower it, so only one by
    one would say which thresholds each crossed): each capture then does, in order, what
    `_capture_sql` or `_capture_lots_sql` alone would, with its wallet's running balance (its
    ledger entry's `balance_after`) and each limit's running counter; one row each, in order.
    A wallet's captures draw its live lots in `LOT_ORDER` and take the rest from the
    never-expiring paid credit, even below zero: their total drawn at once (`lot_draw`) takes
    from each lot what they take one by one. The captures applied post ONE ledger transaction
    (`hold-batch:<txn>` = `$4`), as a batch of debits does: each capture is its usage record,
    keyed `hold:<hold id>`; the granted credit drawn goes to promo usage, the rest to usage, as
    alone. The others go
    alone, after the statement, in arrival order: a capture touches only its hold, its wallet
    and its user's limits, so neither set can change what the other's captures do."""
    return f"""
WITH cq AS MATERIALIZED (
    SELECT * FROM {_CAPTURE_REQUESTS}
), found AS (
    -- Each hold probed by its key, in id order (a subquery with LIMIT is never flattened into
    -- a join: no plan scans or hashes the whole table, however small the table was when the
    -- connection planned the statement; `id = ANY(array)` was planned as a seq scan of holds
    -- on a table a few pages long, and kept as it grew); each is locked as it is probed.
    SELECT h.id, h.account_id, h.user_id, h.api_key_id, h.amount_micros, h.status,
           h.request_hash, h.expires_at, h.created_at
    FROM (SELECT DISTINCT hold_id FROM cq ORDER BY hold_id) q,
         LATERAL (SELECT * FROM holds h WHERE h.id = q.hold_id LIMIT 1 FOR UPDATE) h
), limits AS (
    -- Each (user, scope) of the holds probed by the limits' unique index, as a batch's
    -- (`_batch_limits`): locked in (user, scope, set_by) order.
    SELECT s.id, s.user_id, s.scope, s.period, s.limit_micros, s.window_start, s.spent_micros
    FROM (SELECT user_id, scope
          FROM (SELECT user_id, 'account'::text AS scope FROM found
                UNION SELECT user_id, 'key:' || api_key_id FROM found
                WHERE api_key_id IS NOT NULL) pairs
          ORDER BY user_id, scope) p,
         LATERAL (SELECT s.* FROM spend_limits s
                  WHERE s.user_id = p.user_id AND s.scope = p.scope
                  ORDER BY s.set_by LIMIT 2 FOR UPDATE) s
), locked AS (
    -- The wallets by their key through an array (`= ANY`).
    SELECT id, user_id, balance_micros, held_micros, tracked_micros, watch_micros
    FROM accounts
    WHERE id = ANY(ARRAY(SELECT account_id FROM found))
      AND (SELECT count(*) FROM limits) >= 0  -- the limits are locked first
    ORDER BY user_id FOR UPDATE
), {_locked_lots("$10")}
), tracked AS (
    SELECT user_id, sum(remaining_micros)::bigint AS tracked FROM lots GROUP BY user_id
), judged AS (
    SELECT c.*, f.account_id, f.user_id, f.api_key_id, f.amount_micros AS reserved,
           f.request_hash, f.expires_at, f.created_at,
           f.{_CAPTURABLE} AND c.amount <= f.amount_micros * $9::float8
               AND k.tracked_micros = coalesce(t.tracked, 0)
               AND k.watch_micros IS NULL
               AND count(*) OVER (PARTITION BY c.hold_id) = 1 AS ok
    FROM cq c LEFT JOIN found f ON f.id = c.hold_id LEFT JOIN locked k ON k.id = f.account_id
    LEFT JOIN tracked t ON t.user_id = k.user_id
), items AS (
    -- The captures of the wallets all of whose captures here are `ok`.
    SELECT * FROM judged
    WHERE account_id NOT IN (SELECT account_id FROM judged
                             WHERE ok IS NOT TRUE AND account_id IS NOT NULL)
      AND ok
), captured AS (
    UPDATE holds h SET {_CAPTURED}, captured_micros = i.amount,
                       resolution_hash = i.resolution_hash, resolved_at = $10
    FROM items i WHERE h.id = i.hold_id
), counted AS (
    -- Each capture under each limit of its hold: the limit's counter once the capture settled
    -- its difference there (only in the window the hold was reserved in).
    SELECT i.ord, l.id, l.limit_micros, l.window_start,
           {_current_window("l.period", "$11", "$12", "$13")} AS current_window,
           (l.spent_micros + sum(CASE WHEN l.window_start = {_window_of("l.period", "i.created_at")}
                                      THEN i.amount - i.reserved ELSE 0 END)
               OVER (PARTITION BY l.id ORDER BY i.ord))::bigint AS spent,
           bool_or(l.window_start = {_window_of("l.period", "i.created_at")})
               OVER (PARTITION BY l.id) AS settles
    FROM items i JOIN limits l
      ON l.user_id = i.user_id AND (l.scope = 'account' OR l.scope = 'key:' || i.api_key_id)
), settled AS (
    UPDATE spend_limits s SET spent_micros = c.spent
    FROM (SELECT DISTINCT ON (id) id, spent, settles FROM counted ORDER BY id, ord DESC) c
    WHERE s.id = c.id AND c.settles
), sums AS (
    SELECT account_id, user_id, sum(amount)::bigint AS spent, sum(reserved)::bigint AS released
    FROM items GROUP BY account_id, user_id
), draws AS (
    -- What each wallet's captures take from each of its live lots, in `LOT_ORDER`.
    SELECT l.id, l.user_id, l.kind, {lot_draw("s.spent", per="l.user_id")} AS drawn
    FROM lots l JOIN sums s ON s.user_id = l.user_id
), drawn AS (
    SELECT user_id, sum(drawn)::bigint AS total,
           coalesce(sum(drawn) FILTER (WHERE kind = 'granted'), 0)::bigint AS granted
    FROM draws GROUP BY user_id
), wallets AS (
    -- The usage was served: what the lots did not give comes from the never-expiring paid
    -- credit, even below zero.
    UPDATE accounts a SET balance_micros = a.balance_micros - s.spent,
                          held_micros = a.held_micros - s.released,
                          tracked_micros = a.tracked_micros - coalesce(d.total, 0)
    FROM sums s LEFT JOIN drawn d ON d.user_id = s.user_id WHERE a.id = s.account_id
    RETURNING a.id, a.user_id, a.balance_micros, a.held_micros, s.spent, s.released,
              coalesce(d.granted, 0) AS granted
), lot_draws AS (
    UPDATE credit_lots l SET remaining_micros = l.remaining_micros - d.drawn
    FROM draws d WHERE l.id = d.id AND d.drawn > 0
), applied AS (
    SELECT i.*, w.user_id AS wallet_user_id,
           (w.balance_micros + w.spent - sum(i.amount) OVER run)::bigint AS balance_after,
           (w.held_micros + w.released - sum(i.reserved) OVER run)::bigint AS held_after
    FROM items i JOIN wallets w ON w.id = i.account_id
    WINDOW run AS (PARTITION BY i.account_id ORDER BY i.ord)
), txn AS (
    -- ONE ledger transaction for the statement's captures of a positive amount, as a batch of
    -- debits posts: a wallet leg per wallet (in user-id order, the order the wallets were
    -- locked in; its balance after the wallet's last capture), then the paid credit used to
    -- usage and the granted credit used to promo usage, once each.
    INSERT INTO ledger_transactions
        (id, reference, kind, user_id, description, request_hash, details, created_at)
    SELECT $4::text, '{HOLD_BATCH_REFERENCE_PREFIX}' || $4::text, 'hold_capture',
           CASE WHEN count(DISTINCT user_id) = 1 THEN min(user_id) END, '{USAGE_DESCRIPTION}',
           NULL, json_build_object('captures', count(*)), $10
    FROM applied WHERE amount > 0 HAVING count(*) > 0
    RETURNING id
), entries AS (
    INSERT INTO ledger_entries
        (transaction_id, account_id, amount_micros, balance_after_micros, created_at)
    SELECT txn.id, legs.account_id, legs.amount_micros, legs.balance_after, $10
    FROM txn, {_batch_legs("spent", "WHERE spent > 0")}
    ORDER BY legs.leg, legs.user_id
), record AS (
    -- Each capture of a positive amount is its usage record, keyed `hold:<hold id>` (unique
    -- there, as a debit's `usage:<request id>`), carrying what its own transaction's details
    -- would: the hold, what it reserved, the usage it paid for.
    INSERT INTO usage_records{_DEBIT_RECORD_COLUMNS}
    SELECT a.user_id, txn.id, 'hold:' || a.hold_id, a.resolution_hash,
           (jsonb_build_object('hold_id', a.hold_id, 'reserved_micros', a.reserved)
            || coalesce(a.details::jsonb, '{{}}'::jsonb))::json,
           a.hold_id, a.api_key_id, a.model, a.input_tokens, a.output_tokens, a.amount,
           a.balance_after, $10
    FROM applied a, txn WHERE a.amount > 0 ORDER BY a.ord
)
SELECT a.ord, a.hold_id AS id, a.user_id, a.reserved AS amount_micros,
       '{HoldStatus.CAPTURED}'::text AS status, a.amount AS captured_micros, a.request_hash,
       a.resolution_hash, a.expires_at, a.created_at, $10::timestamptz AS resolved_at,
       a.account_id AS wallet_id, a.wallet_user_id, a.balance_after AS balance_micros,
       a.held_after AS held_micros, r.remaining AS limit_remaining_micros
FROM applied a
LEFT JOIN (
    SELECT ord, min(limit_micros - CASE WHEN window_start >= current_window THEN spent ELSE 0
                                        END) AS remaining
    FROM counted GROUP BY ord
) r ON r.ord = a.ord
ORDER BY a.ord
"""


_DUE_HOLDS = f"""
SELECT id FROM holds WHERE status = '{hold_state.HoldStatus.ACTIVE}' AND expires_at <= $1
ORDER BY expires_at LIMIT $2
"""

_HOLD_WITH_WALLET = f"""
SELECT {_h("h")}, a.id AS wallet_id, a.user_id AS wallet_user_id, a.balance_micros,
       a.held_micros, NULL::bigint AS limit_remaining_micros
FROM holds h LEFT JOIN accounts a ON a.user_id = h.user_id WHERE h.id = $1
"""

# Wallets in user-id order (LockRows sits above the Sort), as every multi-wallet writer takes
# them, so two batches cannot deadlock on wallet rows.
_LOCK_WALLETS = """
SELECT id, user_id, balance_micros, held_micros, tracked_micros FROM accounts
WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE
"""

# The tracked lots with a remainder of the batch's wallets that track any, locked (in id order)
# once the wallets are, as every writer of lots takes them.
_LOCK_LOTS = """
SELECT id, user_id, kind, expires_at, created_at, remaining_micros FROM credit_lots
WHERE user_id = ANY($1::text[]) AND remaining_micros > 0 ORDER BY id FOR UPDATE
"""

# The batch's spend limits, locked before its wallets (as every writer takes them), in
# (user, scope, set_by) order: only the (user, scope) pairs its debits are subject to (each
# user's account, the keys the batch names), never a user's other keys' limits.
_LOCK_LIMITS = f"""
SELECT s.id, s.user_id, s.scope, s.period, s.limit_micros,
       {_counter_now("s", "w.current_window")}
FROM spend_limits s,
     LATERAL (SELECT {_current_window("s.period", "$3", "$4", "$5")} AS current_window) w
WHERE (s.user_id, s.scope) IN (SELECT * FROM unnest($1::text[], $2::text[]))
ORDER BY s.user_id, s.scope, s.set_by FOR UPDATE OF s
"""

_EXISTING_REFERENCES = """
SELECT reference, transaction_id, request_hash FROM usage_records
WHERE reference = ANY($1::text[])
"""


def _batch_ledger_ctes(now: str, transaction_id: str, reference: str, events: str) -> str:
    """The ledger side of a batch, after its `wallets` CTE (the UPDATE of each user's wallet by
    the user's `total`, `granted` of which was granted credit): ONE transaction `txn` (id
    `transaction_id`, reference `reference`, `events` usage events) whose `entries` are a wallet
    leg per user (in user-id order, the order the wallets were locked in: each entry's
    `balance_after` is its wallet's running balance) and the system legs once (paid credit used
    to usage revenue, granted credit used to promo usage). The events are the statement's usage
    records, one per event, each carrying its `reference` (idempotency), its amount and its
    wallet's balance right after it. Nothing when no wallet was debited."""
    return f"""txn AS (
    INSERT INTO ledger_transactions
        (id, reference, kind, user_id, description, request_hash, details, created_at)
    SELECT {transaction_id}, {reference}, '{USAGE_KIND}',
           CASE WHEN count(*) = 1 THEN min(user_id) END, '{USAGE_DESCRIPTION}', NULL,
           json_build_object('events', {events}), {now}
    FROM wallets HAVING count(*) > 0
    RETURNING id
), entries AS (
    INSERT INTO ledger_entries
        (transaction_id, account_id, amount_micros, balance_after_micros, created_at)
    SELECT txn.id, legs.account_id, legs.amount_micros, legs.balance_after, {now}
    FROM txn, {_batch_legs("total")}
    ORDER BY legs.leg, legs.user_id
), crossing AS (
    -- Per user: the available balance before the batch's first debit and after its last
    -- (debits only go down, so that is the crossing of each threshold, once).
    SELECT user_id, balance_micros - held_micros + total AS available_before,
           balance_micros - held_micros AS available_after
    FROM wallets
    WHERE watch_micros IS NOT NULL AND balance_micros - held_micros < watch_micros
), {crossing_ctes("crossing", now=now, reference="NULL")}"""


# The events of a batch in the order they are decided (`UsageStore.debit_batch`): one array per
# column.
def _text_column(n: int) -> str:
    """The text values sent as the `n`th argument by `_texts`, as an array."""
    return f"(string_to_array(${n}, E'\\x1f', E'\\x1e'))[2:]"


def _int_column(n: int) -> str:
    """The integers sent as the `n`th argument by `_ints`, as an array."""
    return f"(string_to_array(${n}, ',', ''))[2:]::bigint[]"


_BATCH_EVENTS = f"""unnest({_text_column(1)}, {_text_column(2)}, {_text_column(3)},
                  {_int_column(4)}, {_text_column(5)}, {_text_column(6)}, {_text_column(7)},
                  {_int_column(8)}, {_int_column(9)}, {_text_column(10)})
         WITH ORDINALITY AS e(user_id, reference, request_id, amount, request_hash, api_key_id,
                              model, input_tokens, output_tokens, metadata, ord)"""
"""A batch's events, from its ten columns sent as texts (`_event_columns`)."""

_BATCH_RECORD = """user_id, txn.id, reference, request_hash, metadata::json, request_id,
           api_key_id, model, input_tokens, output_tokens, amount, balance_after"""


_APPLIED_EVENTS = "(SELECT sum(u.events) FROM users u JOIN wallets w ON w.user_id = u.user_id)"


def _batch_sql() -> str:
    """A batch, decided and written where the data is, in ONE autocommit statement (no lock
    held across a round trip or Python work): its spend limits locked, then its wallets
    (user-id order, as every writer), then their tracked lots. A user is decided when all its
    events are new (not applied before, each reference once in the batch), its available
    balance (less what expired lots hold) covers the user's total and its limits leave room for
    it: amounts are positive, so a covered total means each of the user's events, one by one in
    order, is covered and within its limits, and its total drawn from its live lots in
    `LOT_ORDER` draws what the events drawn one at a time would. When every user of the batch
    is decided, the batch is applied: one row per event, in order, with its wallet right after
    it and what its tightest limit leaves. Else (a refusal, a lot credited meanwhile) it writes
    nothing and answers no row, and a replay (an event's reference already in `usage_records`,
    or twice in the batch) fails it on that unique index, writing nothing either: the planned
    path (`UsageStore._plan_and_write`) decides the batch event by event."""
    return f"""
WITH ev AS MATERIALIZED (
    SELECT * FROM {_BATCH_EVENTS}
), users AS (
    SELECT user_id, sum(amount)::bigint AS total, count(*) AS events FROM ev GROUP BY user_id
), {_batch_limits("ev", "SELECT user_id FROM users", ("$12", "$13", "$14"))}, locked AS (
    SELECT id, user_id, balance_micros, held_micros, tracked_micros FROM accounts
    WHERE user_id IN (SELECT user_id FROM users)
      AND (SELECT count(*) FROM limits) >= 0  -- the limits are locked first
    ORDER BY user_id FOR UPDATE
), {_locked_lots("$11")}
), draws AS (
    -- What each user's total takes from each of its live lots, in `LOT_ORDER`: drawing the
    -- events one by one in a fixed order draws the same (`lot_draw`).
    SELECT l.id, l.user_id, l.kind, l.remaining_micros, l.live,
           {lot_draw("u.total", per="l.user_id")} AS drawn
    FROM lots l JOIN users u ON u.user_id = l.user_id
), drawn AS (
    SELECT user_id, sum(remaining_micros)::bigint AS tracked,
           coalesce(sum(remaining_micros) FILTER (WHERE NOT live), 0)::bigint AS expired,
           sum(drawn)::bigint AS total,
           coalesce(sum(drawn) FILTER (WHERE kind = 'granted'), 0)::bigint AS granted
    FROM draws GROUP BY user_id
), {_batch_counters("ev")}, decided AS (
    -- The lots seen must be all the wallet tracks (else one was credited after this
    -- statement's snapshot: the planned path decides that user).
    SELECT k.id, k.user_id, u.total, coalesce(d.total, 0) AS drawn,
           coalesce(d.granted, 0) AS granted, coalesce(d.expired, 0) AS expired
    FROM locked k JOIN users u ON u.user_id = k.user_id
    LEFT JOIN drawn d ON d.user_id = k.user_id
    WHERE k.tracked_micros = coalesce(d.tracked, 0)
      AND k.balance_micros - k.held_micros - coalesce(d.expired, 0) >= u.total
      AND k.user_id NOT IN (SELECT user_id FROM counted WHERE spent > limit_micros)
), wallets AS (
    UPDATE accounts a SET balance_micros = a.balance_micros - d.total,
                          tracked_micros = a.tracked_micros - d.drawn
    FROM decided d WHERE a.id = d.id
      -- All or nothing: a user left undecided leaves the whole batch to the planned path.
      AND (SELECT count(*) FROM decided) = (SELECT count(*) FROM users)
    RETURNING a.id, a.user_id, a.balance_micros, a.held_micros, a.watch_micros, d.total,
              d.granted, d.expired
), lot_draws AS (
    -- Every user's wallet or none (all or nothing): each lot by its key, no join with the
    -- wallets (estimated at one row in the generic plan, planned as a nested loop over every
    -- draw for each wallet).
    {lot_draws_update("wallets")}
), {_DEBIT_BATCH_SPEND}, {_batch_ledger_ctes("$11", "$15", "$16", _APPLIED_EVENTS)}, applied AS (
    SELECT ev.*, w.id AS wallet_id, w.held_micros, w.expired,
           (w.balance_micros + w.total
               - sum(ev.amount) OVER (PARTITION BY ev.user_id ORDER BY ev.ord))::bigint
               AS balance_after
    FROM ev JOIN wallets w ON w.user_id = ev.user_id
), records AS (
    INSERT INTO usage_records{_DEBIT_RECORD_COLUMNS}
    SELECT {_BATCH_RECORD}, $11 FROM applied, txn ORDER BY ord
), tightest AS MATERIALIZED (
    -- Once, read by each answered row (as a subquery of the join, run again for each).
    {_TIGHTEST_BY_ORD}
)
SELECT a.ord, a.wallet_id, a.user_id, a.balance_after, a.held_micros, a.expired,
       CASE WHEN t.remaining ? a.ord::text
            THEN greatest(0, (t.remaining ->> a.ord::text)::bigint) END AS limit_remaining_micros,
       -- Once, in the first row (the store reads it there): not an array per event to decode.
       CASE WHEN a.ord = 1 THEN {BALANCE_EVENTS.recorded_sql()} END AS after_commit
FROM applied a, tightest t
ORDER BY a.ord
"""


def _write_batch_sql() -> str:
    """The planned path's write (`UsageStore._plan_and_write`, under the locks it took): each
    user's wallet by the total the plan took, the lots it drew, the limits' counters as they
    end up, one ledger transaction for the batch (`_batch_ledger_ctes`) and a usage record per
    applied event with its wallet's balance right after it; it answers the balance subscribers
    that recorded something (`after_commit`)."""
    return f"""
WITH ev AS MATERIALIZED (
    SELECT * FROM {_BATCH_EVENTS}
), wallets AS (
    UPDATE accounts a SET balance_micros = a.balance_micros - w.total,
                          tracked_micros = a.tracked_micros - w.drawn
    FROM unnest($14::text[], $15::bigint[], $16::bigint[], $17::bigint[])
         AS w(account_id, total, drawn, granted)
    WHERE a.id = w.account_id
    RETURNING a.id, a.user_id, a.balance_micros, a.held_micros, a.watch_micros, w.total,
              w.granted
), lot_draws AS (
    UPDATE credit_lots l SET remaining_micros = u.remaining
    FROM unnest($18::text[], $19::bigint[]) AS u(id, remaining)
    WHERE l.id = u.id
), spend AS (
    UPDATE spend_limits s SET window_start = c.window_start, spent_micros = c.spent
    FROM unnest($20::text[], $21::timestamptz[], $22::bigint[]) AS c(id, window_start, spent)
    WHERE s.id = c.id
), {_batch_ledger_ctes("$11", "$12", "$13", "(SELECT count(*) FROM ev)")}, applied AS (
    SELECT ev.*, b.balance_after FROM ev
    JOIN unnest($23::bigint[]) WITH ORDINALITY AS b(balance_after, ord) ON b.ord = ev.ord
), records AS (
    INSERT INTO usage_records{_DEBIT_RECORD_COLUMNS}
    SELECT {_BATCH_RECORD}, $11 FROM applied, txn ORDER BY ord
)
SELECT {BALANCE_EVENTS.recorded_sql()} AS after_commit
"""


class _Statements(NamedTuple):
    debit: str
    debit_head: str
    debit_lots: str
    reserve: str
    capture: str
    capture_lots: str
    release: str
    reserve_batch: str
    capture_batch: str
    batch: str
    write_batch: str


@functools.cache
def _sql() -> _Statements:
    """The statements that embed the balance subscribers' SQL, built once, on first use: after
    `app.wiring.wire()` subscribed them (asking before raises), so each is one fixed string for
    asyncpg's statement cache."""
    return _Statements(
        _debit_sql(),
        _debit_head_sql(),
        _debit_lots_sql(),
        _reserve_sql(),
        _capture_sql(),
        _capture_lots_sql(),
        _release_sql(),
        _reserve_batch_sql(),
        _capture_batch_sql(),
        _batch_sql(),
        _write_batch_sql(),
    )


_Shape = TypeVar("_Shape", bound=tuple[Any, ...])


def _read(shape: type[_Shape], record: Any) -> _Shape:
    """A statement's row (an asyncpg `Record`) read by column name into `shape`, a NamedTuple
    of those names (a field with a default may be missing from the row)."""
    defaults: dict[str, Any] = shape._field_defaults  # type: ignore[attr-defined]
    names: tuple[str, ...] = shape._fields  # type: ignore[attr-defined]
    return shape(
        **{
            name: record[name] if name not in defaults else record.get(name, defaults[name])
            for name in names
        }
    )


def _wallet(row: DebitRow | HoldStatementRow) -> WalletRow | None:
    """The wallet columns of a row (all NULL when the user has no wallet)."""
    if row.wallet_id is None:
        return None
    assert row.wallet_user_id is not None
    assert row.balance_micros is not None
    assert row.held_micros is not None
    return WalletRow(
        row.wallet_id,
        row.wallet_user_id,
        row.balance_micros,
        row.held_micros,
        expired_micros=row.expired_micros,
    )


def _event_columns(debits: Sequence[UsageDebit]) -> tuple[str, ...]:
    """The ten columns of `_BATCH_EVENTS`, in the debits' order, each as one text (`_texts`,
    `_ints`)."""
    # Each debit's details read as a dict (`_NO_DETAILS` for none), not through
    # `UsageDebit.detail`: three method calls per event of a batch of thousands.
    details = [d.details or _NO_DETAILS for d in debits]
    metadata = [_json(x["metadata"]) if "metadata" in x else None for x in details]
    return (
        _texts([d.user_id for d in debits]),
        _texts([usage_reference(d.request_id) for d in debits]),
        _texts([d.request_id for d in debits]),
        _ints([d.amount_micros for d in debits]),
        _texts([d.request_hash for d in debits]),
        _texts([d.api_key_id for d in debits]),
        _texts([x.get("model") for x in details]),
        _ints([x.get("input_tokens") for x in details]),
        _ints([x.get("output_tokens") for x in details]),
        _texts(metadata),
    )


_SEPARATOR = "\x1f"
"""What precedes each value of a column sent as one text (`_texts`): a control character, which
no value holds: ids, keys and models are refused with one (`app.schemas.CleanToken`,
`CleanStr`), hashes are hex and metadata is JSON written with its control characters escaped.
One text per column, split by PostgreSQL (`string_to_array`), spares asyncpg's array encoding,
which asks of every element whether it is itself an array (two `isinstance` checks against
`collections.abc` classes each): ~2.5 of ~3 µs per event of this process."""

_NULL = "\x1e"
"""A null value in a column sent as one text."""


def _texts(values: list[str | None]) -> str:
    """`values` as one text, each preceded by `_SEPARATOR` (so that an empty string is a value
    even alone), a null as `_NULL`; `_text_column` reads it back."""
    if not values:
        return ""
    text = _SEPARATOR + _SEPARATOR.join([_NULL if v is None else v for v in values])
    if text.count(_SEPARATOR) != len(values):
        # Never: every value is validated free of control characters.
        raise ValueError("a batch value holds the column separator")
    return text


def _ints(values: list[int | None]) -> str:
    """`values` as one text, each preceded by a comma, a null as nothing; `_int_column` reads
    it back."""
    if not values:
        return ""
    return "," + ",".join(["" if v is None else int.__repr__(v) for v in values])


_NO_DETAILS: dict[str, Any] = {}


class _StaleLots(Exception):
    """A debit saw fewer lots than its wallet tracks (one credited after its snapshot) and
    wrote nothing; it is run again."""


class DebitRow(NamedTuple):
    """What `_DEBIT` answers (one row, whatever happened)."""

    outcome: Literal["applied", "replayed", "limited", "lots", "insufficient"]
    """`lots`: the wallet tracks lots, for `_debit_lots_sql` to debit (`_debit_sql` only)."""
    wallet_id: str | None
    """The wallet after the debit; for any other outcome as the statement saw it (None: the
    user has no wallet)."""
    wallet_user_id: str | None
    balance_micros: int | None
    held_micros: int | None
    original_id: str | None
    """For a replay: the original debit's transaction id and request hash."""
    original_request_hash: str | None
    limit_remaining_micros: int | None
    """What the tightest spend limit leaves after the debit; None when none applies."""
    after_commit: list[str]
    """The balance subscribers whose work this debit recorded (`BalanceEvents.jobs_for`)."""
    expired_micros: int = 0
    """What the wallet's expired, unswept lots hold (not available)."""

    @property
    def wallet(self) -> WalletRow | None:
        return _wallet(self)


_HOLD_ROW_FIELDS = tuple(f.name for f in fields(HoldRow))


class HoldStatementRow(NamedTuple):
    """What a hold statement answers: the hold, its wallet, and what the tightest spend limit
    leaves (`_RESERVE` also answers its `outcome` and a `Refusal`)."""

    id: str | None
    user_id: str | None
    amount_micros: int | None
    status: str | None
    captured_micros: int | None
    request_hash: str | None
    resolution_hash: str | None
    expires_at: datetime | None
    created_at: datetime | None
    resolved_at: datetime | None
    wallet_id: str | None
    wallet_user_id: str | None
    balance_micros: int | None
    held_micros: int | None
    limit_remaining_micros: int | None
    expired_micros: int = 0

    @property
    def hold(self) -> HoldRow:
        assert self.id is not None, "no hold in this row"
        return HoldRow(**{name: getattr(self, name) for name in _HOLD_ROW_FIELDS})

    @property
    def wallet(self) -> WalletRow | None:
        return _wallet(self)


def tightest(remaining: int | None) -> int | None:
    """The statement's `min(limit - spent)` over the limits it updated, as the gateway sees it."""
    return _tightest([remaining]) if remaining is not None else None


def _json(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value, separators=(",", ":")) if value is not None else None


async def _reset(conn: asyncpg.Connection) -> None:
    """What a released connection needs: these statements take no advisory locks, open no
    cursors, LISTEN to nothing and SET nothing, so asyncpg's default reset query (a round trip
    on every release) has nothing to undo. A transaction left open by a cancelled request is."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def asyncpg_dsn(database_url: str) -> str:
    """The DSN asyncpg takes for the URL's first host (tests, tools). The service's pools connect
    through `app.primary.Primary`, which reaches every host of the URL."""
    return endpoints(database_url)[0][0].dsn


class _OneConnection:
    """A single connection standing in for a pool (a store inside a test's transaction)."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        yield self._connection


def read_pool_size(max_size: int) -> int:
    """The most connections of the gateway's read pool (balances, service tokens) beside the
    `max_size` (`BILLING_DATABASE_POOL_SIZE`) of its writes: half as many, rounded up. Opened
    as reads run concurrently (one at rest). Too small a pool is a queue of its own: with 2
    beside 10 on a CPU-starved machine, reads at 300/s waited longer than on the writes' pool
    (`python -m bench.store_ab --reads 300`)."""
    return (max_size + 1) // 2


async def _outcome(
    apply: Callable[[_Item], Coroutine[Any, Any, HoldResult]], item: _Item
) -> HoldResult | Exception:
    """One item of a batch applied alone: its result, or the refusal its request answers."""
    try:
        return await apply(item)
    except Exception as exc:  # a refusal, or an outage (503): its request answers it
        return exc


class UsageStore:
    """The gateway's operations through asyncpg pools of their own: one for the writes, and a
    small one for the reads (the balance read, service tokens), so that a read never queues
    for a connection behind writes waiting on a busy wallet's row lock or on PostgreSQL."""

    def __init__(
        self,
        pool: asyncpg.Pool | asyncpg.Connection,
        clock: Callable[[], datetime] = utcnow,
        *,
        reads: asyncpg.Pool | None = None,
        combine_debits: bool = False,
        debits_in_flight: int | None = None,
        holds_in_flight: int | None = None,
    ) -> None:
        self._pool: Any = pool if isinstance(pool, asyncpg.Pool) else _OneConnection(pool)
        self._reads: Any = reads if reads is not None else self._pool
        """The reads' pool (the writes' when none is given: a test's single connection)."""
        self.clock = clock
        """Now: what `created_at` and the spend limits' windows are read from (tests move it)."""
        self._lot_wallets: set[str] = set()
        """Users whose wallet this store last saw tracking lots: their debit runs the lots
        statement first, sparing the other one's refusal. Only a hint: either statement is
        right for any wallet (the first refuses a wallet tracking lots), so a stale entry costs
        time, never a different outcome."""
        slots = Slots(debits_in_flight)
        """One bound for the gateway's write statements in flight: debits, reserves, captures."""
        self._combiner = Combiner(
            self._debit_alone, self.debit_batch, combine=combine_debits, slots=slots
        )
        # Holds wait only past the bound (no per-wallet combining: a capture names no wallet).
        hold_lane = functools.partial(
            Lane,
            slots=slots,
            combine=combine_debits and debits_in_flight is not None,
            bound=holds_in_flight,
        )
        self._reserves: Lane[HoldRequest, HoldResult] = hold_lane(
            self._reserve_alone, self.reserve_batch
        )
        self._captures: Lane[HoldCapture, HoldResult] = hold_lane(
            self._capture_alone, self.capture_batch
        )
        self._batches = BatchGroups(self.debit_batch, combine=combine_debits)
        self._lot_holds: set[str] = set()
        """Holds this store reserved on a wallet it saw tracking lots: their capture runs the
        lots statement first (a capture names no user), the same kind of hint."""

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        max_size: int,
        primary: Primary | None = None,
        combine_debits: bool = False,
        debits_in_flight: int | None = None,
        holds_in_flight: int | None = None,
    ) -> UsageStore:
        """A store on pools of its own, `max_size` connections for the writes and
        `read_pool_size(max_size)` for the reads, connecting through `primary` (the service
        shares one with its ORM engine), else one of its own for the URL."""
        primary = primary or Primary(database_url)

        async def pool_of(size: int) -> asyncpg.Pool:
            return await asyncpg.create_pool(
                connect=primary.connect,
                connection_class=BillingConnection,
                min_size=1,
                max_size=size,
                command_timeout=60,
                reset=_reset,
                server_settings=SERVER_SETTINGS,
            )

        pool = await pool_of(max_size)
        try:
            reads = await pool_of(read_pool_size(max_size))
        except BaseException:
            await pool.close()
            raise
        return cls(
            pool,
            reads=reads,
            combine_debits=combine_debits,
            debits_in_flight=debits_in_flight,
            holds_in_flight=holds_in_flight,
        )

    @property
    def pool(self) -> asyncpg.Pool:
        """The writes' pool."""
        return cast(asyncpg.Pool, self._pool)

    @property
    def read_pool(self) -> asyncpg.Pool:
        return cast(asyncpg.Pool, self._reads)

    async def drop_connections(self) -> None:
        """Close every pooled connection as it is next released or acquired (after an outage or
        a failover they may all lead to the old primary)."""
        for pool in {id(self._pool): self._pool, id(self._reads): self._reads}.values():
            if isinstance(pool, asyncpg.Pool):
                await pool.expire_connections()

    async def _write(self, sql: str, *args: Any) -> Any:
        """Run one autocommit write and return its row, only once the synchronous standby has
        it: run to its end even if the request is cancelled meanwhile (a cancel would let the
        COMMIT stop waiting for the standby), and `UnreplicatedCommit` if PostgreSQL warned
        that it stopped waiting anyway (`app/primary.py`)."""
        return await finish(self._write_on_a_connection(sql, args))

    async def _write_on_a_connection(self, sql: str, args: Sequence[Any]) -> Any:
        async with self._pool.acquire() as conn:
            with commits_watched(conn):
                record = await conn.fetchrow(sql, *args)
        return record

    async def close(self) -> None:
        await self._pool.close()
        if self._reads is not self._pool:
            await self._reads.close()

    @_outage_is_503
    async def service_token(self, digest: str) -> TokenRecord | None:
        # On the gateway's read pool, not the ORM's: long portal reports cannot starve the
        # gateway's auth, nor can its own writes.
        row = await self._reads.fetchrow(_SERVICE_TOKEN_BY_HASH, digest)
        return _read(TokenRecord, row) if row is not None else None

    @_outage_is_503
    async def wallet(self, user_id: str) -> WalletRow | None:
        # The balance read: on the read pool, never queued behind writes for a connection.
        row = await self._reads.fetchrow(_WALLET_BY_USER, user_id, self.clock())
        return _read(WalletRow, row) if row is not None else None

    async def debit(self, debit: UsageDebit) -> Debited:
        """Apply `debit` once: alone, or combined with the debits of its wallet that arrived
        while one of its debits was in flight (`app.usage.combining`)."""
        return await self._combiner.debit(debit)

    @_outage_is_503
    async def _debit_alone(self, debit: UsageDebit) -> Debited:
        for _ in range(_COVER_ATTEMPTS - 1):
            try:
                return await self._debit_once(debit)
            except _StaleLots:
                # A lot was credited after the statement's snapshot: run it again.
                continue
        return await self._debit_once(debit, last=True)

    async def _debit_once(self, debit: UsageDebit, *, last: bool = False) -> Debited:
        reference = usage_reference(debit.request_id)
        txn_id = new_id("txn")
        now = self.clock()
        windows = Windows.at(now)
        args = (
            reference,
            txn_id,
            debit.user_id,
            debit.amount_micros,
            debit.request_hash,
            _json(debit.details),
            now,
            debit.api_key_id,
            *windows,
            debit.request_id,
            debit.detail("model"),
            debit.detail("input_tokens"),
            debit.detail("output_tokens"),
        )
        statements = _sql()
        user_id = debit.user_id
        try:
            record = None
            if user_id not in self._lot_wallets:
                record = await self._write(statements.debit, *args)
                if record["outcome"] == "lots":
                    # The wallet tracks lots and nothing was written: the debit over its lots.
                    record = None
                    if len(self._lot_wallets) >= _LOT_WALLETS_REMEMBERED:
                        self._lot_wallets.clear()
                    self._lot_wallets.add(user_id)
            if record is None:
                # First from the head lot alone, which writes nothing unless it covers the debit
                # and no lot changed after its snapshot; then over all the lots, which decides.
                record = await self._write(statements.debit_head, *args)
                if record["outcome"] == "lots":
                    record = await self._write(statements.debit_lots, *args)
                    if not record["tracks_lots"]:
                        self._lot_wallets.discard(user_id)
        except asyncpg.UniqueViolationError:
            # A twin with the same request id committed first: answer from the original.
            return await self._replay(reference, debit.user_id)
        row = _read(DebitRow, record)
        if row.outcome == "applied":
            _USAGE_POSTED.inc()
            _USAGE_MICROS.inc(debit.amount_micros)
            if row.after_commit:
                # The statement committed (autocommit): the same queue as a session's commit.
                jobs = BALANCE_EVENTS.jobs_for(row.after_commit)
                run_after_commit((job, ({debit.user_id},)) for job in jobs)
            remaining = tightest(row.limit_remaining_micros)
            return Debited(txn_id, debit.request_hash, False, row.wallet, remaining)
        if row.outcome == "replayed":
            assert row.original_id is not None
            LEDGER_TRANSACTIONS.labels(USAGE_KIND, "replayed").inc()
            return Debited(row.original_id, row.original_request_hash, True, row.wallet)
        if row.outcome == "limited":
            raise _read(Refusal, record).error()
        if row.wallet is None:
            raise insufficient_balance(0, debit.amount_micros)
        raise await self._not_covered(debit.user_id, debit.amount_micros, last=last)

    async def _not_covered(
        self, user_id: str, amount_micros: int, *, last: bool = True
    ) -> InsufficientBalance | _StaleLots:
        # The statement's own read of the wallet is as of its start, before it waited for the
        # row lock; the refusal tells the balance the UPDATE actually saw, so read it again.
        # Covered after all: a lot was credited after the statement's snapshot (its lots did
        # not add up to the wallet's tracked sum), so the statement is to run again.
        current = await self.wallet(user_id)
        available = current.available_micros if current else 0
        if available >= amount_micros and not last:
            return _StaleLots()
        return insufficient_balance(available, amount_micros)

    async def _replay(self, reference: str, user_id: str) -> Debited:
        async with self._pool.acquire() as conn:
            original = await conn.fetchrow(_TRANSACTION_BY_REFERENCE, reference)
            wallet_row = await conn.fetchrow(_WALLET_BY_USER, user_id, self.clock())
        if original is None:  # pragma: no cover - the conflicting row is committed
            raise RuntimeError(f"reference {reference!r} conflicted but cannot be read")
        LEDGER_TRANSACTIONS.labels(USAGE_KIND, "replayed").inc()
        wallet = _read(WalletRow, wallet_row) if wallet_row is not None else None
        return Debited(original["id"], original["request_hash"], True, wallet)

    async def apply_batch(self, debits: Sequence[UsageDebit]) -> list[BatchOutcome]:
        """A batch request's `debits` (sorted by user id, stably) decided as if applied one by
        one in that order: as ONE batch with those of the batch requests that arrived while
        one was in flight, one request after the other in arrival order (group commit,
        `app.usage.combining.BatchGroups`), each answered with its own debits' outcomes."""
        return await self._batches.submit(debits)

    @_outage_is_503
    async def debit_batch(self, debits: Sequence[UsageDebit]) -> list[BatchOutcome]:
        """`debits` decided as if applied one by one in their order (each batch request's
        sorted by user id, stably; a group's one request after the other), in ONE database
        transaction (a batch is applied whole or not at all): the
        autocommit statement that applies the batch when it can decide every user whole
        (`_batch_sql`), else, when it wrote nothing (replays, refusals, credit lots), the
        planned path in a transaction of its own (`_plan_and_write`)."""
        for attempt in range(_BATCH_ATTEMPTS):
            try:
                return await finish(self._debit_batch_once(debits))
            except (
                asyncpg.DeadlockDetectedError,
                asyncpg.SerializationError,
                asyncpg.UniqueViolationError,
                _StaleLots,
            ):
                # A concurrent writer took one of our references first (or, in theory, a
                # deadlock): the transaction rolled back whole; decide again on what is there.
                if attempt == _BATCH_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _debit_batch_once(self, debits: Sequence[UsageDebit]) -> list[BatchOutcome]:
        transaction_id = new_id("txn")
        now = self.clock()
        args = (
            *_event_columns(debits),
            now,
            *Windows.at(now),
            transaction_id,
            f"{BATCH_REFERENCE_PREFIX}{transaction_id}",
        )
        plan: BatchPlan | None = None
        planned_after: list[str] = []
        async with self._pool.acquire() as conn:
            with commits_watched(conn):
                # Autocommit: the statement's locks end with it, not with a COMMIT this
                # process would send once its event loop gets to it.
                try:
                    rows = await conn.fetch(_sql().batch, *args)
                except asyncpg.UniqueViolationError:
                    # A reference applied before (or twice in the batch): the statement
                    # wrote nothing; the planned path tells replays from new events.
                    rows = []
                if not rows:  # it wrote nothing (`transaction_id` is still free)
                    async with conn.transaction():
                        plan, planned_after = await self._plan_and_write(
                            conn, debits, transaction_id, now
                        )
        outcomes: list[Any] = [None] * len(debits)
        micros = 0
        for ord_, wallet_id, user_id, balance, held, expired, remaining, _ in rows:
            debit = debits[ord_ - 1]
            micros += debit.amount_micros
            wallet = WalletRow(wallet_id, user_id, balance, held, None, expired)  # positional
            outcomes[ord_ - 1] = Debited(
                transaction_id, debit.request_hash, False, wallet, remaining
            )
        applied = len(rows)
        if rows and (after_commit := rows[0]["after_commit"]):
            # Committed: the same queue as a session's commit.
            users = {row["user_id"] for row in rows}
            run_after_commit((job, (users,)) for job in BALANCE_EVENTS.jobs_for(after_commit))
        if plan is not None:
            if planned_after:  # committed
                users = {w.debit.user_id for w in plan.writes}
                run_after_commit((job, (users,)) for job in BALANCE_EVENTS.jobs_for(planned_after))
            outcomes = list(plan.outcomes)
            applied += len(plan.writes)
            micros += sum(w.debit.amount_micros for w in plan.writes)
            replayed = sum(isinstance(o, Debited) and o.replayed for o in plan.outcomes)
            if replayed:
                LEDGER_TRANSACTIONS.labels(USAGE_KIND, "replayed").inc(replayed)
        if applied:
            _USAGE_POSTED.inc(applied)
            _USAGE_MICROS.inc(micros)
        return cast(list[BatchOutcome], outcomes)

    async def _plan_and_write(
        self,
        conn: asyncpg.Connection,
        debits: Sequence[UsageDebit],
        transaction_id: str,
        now: datetime,
    ) -> tuple[BatchPlan, list[str]]:
        """A batch `_batch_sql` could not apply whole, event by event, in the caller's
        transaction: its limits, wallets and lots locked (in that order, as every writer), the
        references applied before, the plan (`app.usage.batch.plan_batch`), and its write
        (`_write_batch_sql`), with the balance subscribers it recorded for (to run after the
        commit)."""
        references = [usage_reference(d.request_id) for d in debits]
        users = sorted({d.user_id for d in debits})
        pairs = limit_scopes(debits)
        counters = [
            (row["user_id"], _read(Counter, row))
            for row in await conn.fetch(
                _LOCK_LIMITS, [p[0] for p in pairs], [p[1] for p in pairs], *Windows.at(now)
            )
        ]
        locked = await conn.fetch(_LOCK_WALLETS, users)
        wallets = {row["user_id"]: _read(WalletRow, row) for row in locked}
        lots: dict[str, list[LotRow]] = {}
        tracking = [row["user_id"] for row in locked if row["tracked_micros"]]
        if tracking:
            for row in await conn.fetch(_LOCK_LOTS, tracking):
                lots.setdefault(row["user_id"], []).append(_read(LotRow, row))
        for row in locked:
            user_lots = lots.get(row["user_id"], ())
            if row["tracked_micros"] != sum(lot.remaining_micros for lot in user_lots):
                raise _StaleLots  # (the wallets are locked: no lot can be credited now)
        existing = {
            row["reference"]: _read(ExistingDebit, row)
            for row in await conn.fetch(_EXISTING_REFERENCES, references)
        }
        plan = plan_batch(debits, wallets, existing, lambda: transaction_id, counters, lots, now)
        after_commit: list[str] = []
        if plan.writes:
            writes = plan.writes
            spent = plan.counters.values()
            granted: dict[str, int] = {}
            for w in writes:
                granted[w.account_id] = granted.get(w.account_id, 0) + w.granted_micros
            after_commit = await conn.fetchval(
                _sql().write_batch,
                *_event_columns([w.debit for w in writes]),
                now,
                transaction_id,
                f"{BATCH_REFERENCE_PREFIX}{transaction_id}",
                list(plan.totals),
                list(plan.totals.values()),
                [plan.lots_drawn.get(account_id, 0) for account_id in plan.totals],
                [granted.get(account_id, 0) for account_id in plan.totals],
                list(plan.lot_remaining),
                list(plan.lot_remaining.values()),
                [c.id for c in spent],
                [c.window_start for c in spent],
                [c.spent_micros for c in spent],
                [w.balance_after_micros for w in writes],
            )
        return plan, after_commit

    async def reserve(self, request: HoldRequest) -> HoldResult:
        """Reserve once: alone, or past the bound of statements in flight with the reserves
        that wait (`reserve_batch`)."""
        return await self._reserves.submit(request)

    @_outage_is_503
    async def reserve_batch(self, requests: Sequence[HoldRequest]) -> list[HoldResult | Exception]:
        """`requests` decided as if each went alone, one by one in this order: ONE statement
        applies those of the users it can decide whole (`_reserve_batch_sql`), then the others
        go alone, in order."""
        now = self.clock()
        args = (
            [r.hold_id for r in requests],
            [r.user_id for r in requests],
            [r.amount_micros for r in requests],
            [r.request_hash for r in requests],
            [_json(r.details) for r in requests],
            [r.expires_at(now) for r in requests],
            [r.api_key_id for r in requests],
            now,
            *Windows.at(now),
        )
        try:
            rows = await self._write_all(_sql().reserve_batch, args)
        except asyncpg.UniqueViolationError:
            rows = []  # a twin of one of them committed first: each alone answers it
        results: list[HoldResult | Exception | None] = [None] * len(requests)
        for record in rows:
            request = requests[record["ord"] - 1]
            row = _read(HoldStatementRow, record)
            if record["tracks_lots"]:
                self._remember_lot_hold(request.hold_id)
            wallet = row.wallet
            assert wallet is not None
            results[record["ord"] - 1] = HoldResult(
                row.hold, wallet, False, tightest(row.limit_remaining_micros)
            )
        _RESERVES_COMBINED.inc(len(rows))
        # The users it left (a replay, a refusal, a repeated id): each reserve alone, in order.
        return [
            result if result is not None else await _outcome(self._reserve_alone, request)
            for request, result in zip(requests, results, strict=True)
        ]

    def _remember_lot_hold(self, hold_id: str) -> None:
        if len(self._lot_holds) >= _LOT_WALLETS_REMEMBERED:
            self._lot_holds.clear()
        self._lot_holds.add(hold_id)

    async def _write_all(self, sql: str, args: Sequence[Any]) -> list[Any]:
        """`_write` for a statement answering rows."""

        async def rows() -> list[Any]:
            async with self._pool.acquire() as conn:
                with commits_watched(conn):
                    return cast(list[Any], await conn.fetch(sql, *args))

        return await finish(rows())

    @_outage_is_503
    async def _reserve_alone(self, request: HoldRequest) -> HoldResult:
        now = self.clock()
        try:
            record = await self._write(
                _sql().reserve,
                request.hold_id,
                request.user_id,
                request.amount_micros,
                request.request_hash,
                _json(request.details),
                request.expires_at(now),
                now,
                request.api_key_id,
                *Windows.at(now),
            )
            outcome = record["outcome"]
        except asyncpg.UniqueViolationError:
            # A twin with the same hold id committed first: answer from it.
            record = await self._pool.fetchrow(_HOLD_WITH_WALLET, request.hold_id)
            if record is None:  # pragma: no cover - the conflicting hold is committed
                raise
            outcome = "existing"
        row = _read(HoldStatementRow, record)
        wallet = row.wallet
        if outcome == "reserved" and record["tracks_lots"]:
            self._remember_lot_hold(request.hold_id)
        if outcome == "insufficient":
            if wallet is None:  # no wallet, so nothing to hold (and no hold by that id)
                raise insufficient_balance(0, request.amount_micros)
            raise await self._not_covered(request.user_id, request.amount_micros)
        if outcome == "limited":
            raise _read(Refusal, record).error()
        hold = row.hold
        assert wallet is not None
        if outcome == "reserved":
            return HoldResult(hold, wallet, False, tightest(row.limit_remaining_micros))
        if hold.request_hash != request.request_hash:
            raise IdempotencyConflict(
                f"Hold {request.hold_id!r} was reserved before with a different request."
            )
        return HoldResult(hold, wallet, replayed=True)

    async def capture(self, capture: HoldCapture) -> HoldResult:
        """Capture once: alone, or past the bound of statements in flight with the captures
        that wait (`capture_batch`)."""
        return await self._captures.submit(capture)

    @_outage_is_503
    async def capture_batch(self, captures: Sequence[HoldCapture]) -> list[HoldResult | Exception]:
        """`captures` decided as if each went alone, one by one in this order: ONE statement
        applies those of the wallets it can decide whole (`_capture_batch_sql`), then the
        others go alone, in order."""
        now = self.clock()
        multiples = {c.max_hold_multiple for c in captures}
        rows: list[Any] = []
        if len(multiples) == 1:
            usage = [c.details or {} for c in captures]
            args = (
                [c.hold_id for c in captures],
                [c.amount_micros for c in captures],
                [c.resolution_hash for c in captures],
                new_id("txn"),
                [_json(c.details) for c in captures],
                [u.get("model") for u in usage],
                [u.get("input_tokens") for u in usage],
                [u.get("output_tokens") for u in usage],
                multiples.pop(),
                now,
                *Windows.at(now),
            )
            rows = await self._write_all(_sql().capture_batch, args)
        results: list[HoldResult | Exception | None] = [None] * len(captures)
        posted = micros = 0
        for record in rows:
            capture = captures[record["ord"] - 1]
            self._lot_holds.discard(capture.hold_id)
            if capture.amount_micros > 0:
                posted += 1
                micros += capture.amount_micros
            results[record["ord"] - 1] = self._resolved(_read(HoldStatementRow, record))
        _CAPTURES_COMBINED.inc(len(rows))
        if posted:
            _CAPTURE_POSTED.inc(posted)
            _CAPTURE_MICROS.inc(micros)
        # The wallets it left (a watch, a lot credited meanwhile, a replay, a refusal): each
        # alone, in order.
        return [
            result if result is not None else await _outcome(self._capture_alone, capture)
            for capture, result in zip(captures, results, strict=True)
        ]

    @_outage_is_503
    async def _capture_alone(self, capture: HoldCapture) -> HoldResult:
        hold_id, amount_micros, resolution_hash, details, max_hold_multiple = capture
        now = self.clock()
        usage = details or {}
        args = (
            hold_id,
            amount_micros,
            resolution_hash,
            now,
            new_id("txn"),
            _json(details),
            *Windows.at(now),
            usage.get("model"),
            usage.get("input_tokens"),
            usage.get("output_tokens"),
            max_hold_multiple,
        )
        statements = _sql()
        lots = hold_id in self._lot_holds
        if lots:
            self._lot_holds.discard(hold_id)
        else:
            try:
                record = await self._write(statements.capture, *args)
                lots = record["id"] is None and record["lots"]
            except asyncpg.SerializationError:
                # Its wallet's first lot was credited after the statement's snapshot: nothing
                # was written; the lots statement captures it.
                lots = True
        if lots:
            record = await self._write(statements.capture_lots, *args)
        if record is None or record["id"] is None:
            captured = HoldStatus.CAPTURED
            return await self._resolved_before(hold_id, captured, resolution_hash, capture)
        if amount_micros > 0:
            _CAPTURE_POSTED.inc()
            _CAPTURE_MICROS.inc(amount_micros)
        return self._resolved(_read(HoldStatementRow, record))

    @_outage_is_503
    async def release(self, *, hold_id: str, resolution_hash: str) -> HoldResult:
        now = self.clock()
        record = await self._write(
            _sql().release, hold_id, resolution_hash, now, *Windows.at(now), HoldStatus.RELEASED
        )
        if record is None:
            return await self._resolved_before(hold_id, HoldStatus.RELEASED, resolution_hash)
        return self._resolved(_read(HoldStatementRow, record))

    @_outage_is_503
    async def due_holds(self, now: datetime, limit: int) -> list[str]:
        """Up to `limit` active holds whose TTL has passed, soonest first."""
        return [row["id"] for row in await self._pool.fetch(_DUE_HOLDS, now, limit)]

    @_outage_is_503
    async def expire(self, hold_id: str, now: datetime) -> bool:
        """Release a due hold as expired (the release statement); False when it was resolved
        meanwhile (a capture, a release, another instance's expiry)."""
        record = await self._write(
            _sql().release, hold_id, None, now, *Windows.at(now), HoldStatus.EXPIRED
        )
        return record is not None

    @staticmethod
    def _resolved(row: HoldStatementRow) -> HoldResult:
        wallet = row.wallet
        assert wallet is not None
        return HoldResult(row.hold, wallet, False, tightest(row.limit_remaining_micros))

    async def _resolved_before(
        self,
        hold_id: str,
        status: str,
        resolution_hash: str,
        capture: HoldCapture | None = None,
    ) -> HoldResult:
        record = await self._pool.fetchrow(_HOLD_WITH_WALLET, hold_id)
        if record is None:
            raise NotFound(f"No hold {hold_id!r}.")
        row = _read(HoldStatementRow, record)
        hold = row.hold
        if hold.status == HoldStatus.ACTIVE and (refused := capture_exceeds_hold(hold, capture)):
            raise refused
        if hold.status != status:
            raise InvalidStateTransition(
                f"Hold {hold_id!r} is {hold.status} and cannot be {status}.",
                hold_status=hold.status,
            )
        if hold.resolution_hash != resolution_hash:
            raise IdempotencyConflict(
                f"Hold {hold_id!r} was {status} before with a different request."
            )
        wallet = row.wallet
        if wallet is None:  # pragma: no cover - a hold's wallet is never deleted
            raise RuntimeError(f"wallet of {hold.user_id!r} is missing")
        return HoldResult(hold, wallet, replayed=True)

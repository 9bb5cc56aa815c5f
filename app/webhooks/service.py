"""Receiving Stripe events: verify, claim the event id, apply, record — no transaction open
while Stripe is asked.

Stripe delivers every event at least once, sometimes twice at the same moment, and out of order.
Following the transaction policy (`app/db.py`):

1. a short transaction stores the event id (ON CONFLICT DO NOTHING) and claims it with a lease
   (`lease_until`); an id already applied is a duplicate (200), an id another delivery holds
   right now is a 409 `event_in_progress` (Stripe delivers it again later);
2. the handler runs with no transaction open: it re-reads the object from Stripe (the event is
   only a trigger), then applies what Stripe says under the row lock of what it changes, in a
   short transaction of its own — every handler is idempotent (unique ledger references, moves
   that only go forward), so a delivery that dies half-way is simply applied again;
3. a short transaction records the outcome and ends the lease. 200 only after it.

An event whose signed payload already says all its change needs (a paid top-up:
`fulfillment.credit_from_events`) is applied by the type's at-once handler inside step 1's
transaction instead: claim, order lock, credit and outcome commit together, Stripe is not asked
before, and what the payload lacks (the receipt, the saved card) is read after the commit by a
job. When the payload is not enough (the at-once handler returns None) steps 1 to 3 run as above.

Step 1's transaction is shared: deliveries that arrive while a claim transaction is in flight
are claimed (and applied at once) together in the next one, one COMMIT for the group
(`_ClaimGroups`; a lone delivery is a group of one, through the same code); an at-once handler
is called once with all of the group's deliveries of its types, so a burst of paid top-ups is
credited by one statement per table. Each answers only
after the commit that holds its claim; a group that fails is tried again one delivery at a time,
so only the delivery that fails gets the 5xx.

A handler that fails (Stripe unreachable past the deadline, the database down) leaves the event
unapplied and its lease released: the answer is a 5xx and Stripe's retry applies it afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import session_scope
from app.errors import EventInProgress, InvalidSignature, NotFound
from app.metrics import STRIPE_EVENTS
from app.models.base import utcnow
from app.models.orders import StripeEvent, WebhookOutcome
from app.stripe_gateway import StripeGateway
from app.waiting import PerLoop, answer_waiting, fail_waiting
from app.webhooks import repository
from app.webhooks.registry import (
    AtOnceHandler,
    WebhookContext,
    at_once_handler_for,
    handler_for,
    outcome_of,
)
from app.webhooks.repository import Claim

log = structlog.get_logger(__name__)


def lease_length(settings: Settings) -> timedelta:
    """How long a delivery may hold an event: its Stripe work is bounded by the deadline, the
    two short transactions by the pool timeout."""
    return timedelta(
        seconds=settings.stripe_deadline_seconds + settings.database_pool_timeout_seconds + 5
    )


@dataclass(frozen=True, slots=True)
class Receipt:
    """What became of a delivery."""

    event_id: str
    type: str
    duplicate: bool
    outcome: WebhookOutcome | None
    """None for a duplicate (what the first delivery did is stored with the event)."""
    outcome_detail: str | None = None
    object_id: str | None = None
    """The id of the Stripe object the event is about."""


async def _apply(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    stripe: StripeGateway,
    event: dict[str, Any],
) -> tuple[WebhookOutcome, str | None]:
    handler = handler_for(event["type"])
    if handler is None:
        return WebhookOutcome.UNHANDLED, None
    try:
        text = await handler(WebhookContext(maker, settings, stripe, str(event["id"])), event)
        return outcome_of(text)
    except Exception:
        STRIPE_EVENTS.labels(event["type"], "failed").inc()
        log.warning("stripe_event_failed", event_id=event["id"], type=event["type"], exc_info=True)
        raise


def _applied(
    event_id: str,
    event_type: str,
    outcome: WebhookOutcome,
    detail: str | None,
    *,
    replayed: bool = False,
) -> None:
    """Count an event whose handlers ran in `/metrics` (`applied`, `unhandled` or `replayed`)
    and log it with its outcome."""
    if replayed:
        counted_as = "replayed"
    else:
        counted_as = "unhandled" if outcome == WebhookOutcome.UNHANDLED else "applied"
    STRIPE_EVENTS.labels(event_type, counted_as).inc()
    log.info(
        "stripe_event_replayed" if replayed else "stripe_event_applied",
        event_id=event_id,
        type=event_type,
        outcome=outcome.value,
        detail=detail,
    )


Claimed = tuple[Claim, tuple[WebhookOutcome, str] | None]
"""What a delivery's claim transaction did: the claim, and the at-once handler's outcome when it
applied the event there (None: not applied in it)."""


async def _apply_at_once(
    session: AsyncSession,
    maker: async_sessionmaker[AsyncSession],
    at_once: AtOnceHandler,
    deliveries: list[_Delivery],
) -> list[tuple[WebhookOutcome, str] | None]:
    """Step 1 for claimed deliveries of one at-once handler's types (ours to apply), in the
    claim's transaction, together: applied there when the payloads say all it takes; each
    one's outcome, or None (not applied in it)."""
    # The payloads may say all it takes: applied in this transaction, with the claims and the
    # outcomes, and no Stripe call before the commit (what Stripe still has to say is read
    # after it, by a job the handler queued).
    parts = [
        (WebhookContext(maker, settings, stripe, str(event["id"])), event)
        for settings, stripe, event, _ in deliveries
    ]
    try:
        texts = await at_once(session, parts)
        # Written now, so that a failure is this group's (not the outcome statement's).
        await session.flush()
    except Exception:
        if len(deliveries) == 1:
            event = deliveries[0][2]
            STRIPE_EVENTS.labels(str(event["type"]), "failed").inc()
            log.warning(
                "stripe_event_failed", event_id=event["id"], type=event["type"], exc_info=True
            )
        else:  # tried again one delivery at a time, where the one that fails is counted
            log.warning(
                "stripe_event_group_failed",
                event_ids=[str(event["id"]) for _, _, event, _ in deliveries],
                exc_info=True,
            )
        raise
    return [outcome_of(text) if text is not None else None for text in texts]


_Delivery = tuple[Settings, StripeGateway, dict[str, Any], "asyncio.Future[Claimed]"]
"""A delivery waiting for its claim: settings, gateway, event, its answer."""


GROUP_WRITERS = 1
"""Claim transactions in flight at once per process. One: every delivery that arrives while it
is in flight waits for the next (groups of ~15 at 32 connections). Measured on `make bench`'s
webhook scenario, four in flight made smaller groups, more CPU per event (service and
PostgreSQL) and wallet-lock waits between the groups (p99 0.9-1.8 s), for no more events/s."""


def _lock_order(delivery: _Delivery) -> tuple[str, str, str]:
    """The order a group applies its deliveries in: by the user and order its object names (its
    metadata, ours), then event id; one that names none goes first. (The locks themselves are
    taken by the credit's statements in one order whatever the group: orders by id, then
    wallets by user id, so groups in flight at once — the workers of a multi-process service
    each have theirs — cannot deadlock.)"""
    obj = delivery[2]["data"].get("object") or {}
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    user_id, order_id = metadata.get("user_id"), metadata.get("order_id")
    return (
        user_id if isinstance(user_id, str) else "",
        order_id if isinstance(order_id, str) else "",
        str(delivery[2]["id"]),
    )


class _ClaimGroups:
    """Group commit of the claim transactions of one process (per session maker): a delivery
    hands its verified event over and waits for the commit; deliveries that arrive while a
    claim transaction is in flight go together in the next one (`_commit`: one claim
    statement, the claimed ones applied at once by one call of their at-once handler, in
    `_lock_order`, one outcome statement, one COMMIT), so a burst of paid top-ups pays one
    BEGIN, COMMIT, connection checkout, claim, credit statement per table and outcome per
    group instead of per event, and a lone delivery waits for nothing (a group of one). Each
    delivery answers only after the commit that holds its claim (and credit). A group that
    fails is tried again one delivery at a time, so that one bad event fails alone (its 5xx
    makes Stripe deliver it again); a failure of a group of one fails that delivery, as
    before."""

    def __init__(self, maker: async_sessionmaker[AsyncSession]) -> None:
        self._maker = maker
        self._pending: list[_Delivery] = []
        self._writers: set[asyncio.Task[None]] = set()

    async def claim(
        self, settings: Settings, stripe: StripeGateway, event: dict[str, Any]
    ) -> Claimed:
        done: asyncio.Future[Claimed] = asyncio.get_running_loop().create_future()
        self._pending.append((settings, stripe, event, done))
        if len(self._writers) < GROUP_WRITERS:
            # In a context of its own: the transaction is no request's (its log lines name
            # the events and orders it applies).
            writer = asyncio.create_task(self._drain(), context=contextvars.Context())
            self._writers.add(writer)
        return await done

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = sorted(self._pending, key=_lock_order), []
                if not await self._settle(batch, last_try=len(batch) == 1):
                    for delivery in batch:
                        await self._settle([delivery], last_try=True)
        except BaseException as exc:  # cancelled (the service stops), or a failure outside a group
            # The deliveries queued behind the group would otherwise wait for a later arrival
            # to start a writer: with no other writer left, they get the same end.
            if not self._writers - {asyncio.current_task()}:
                queued, self._pending = self._pending, []
                fail_waiting((done for *_, done in queued), exc)
            raise
        finally:
            # Out of the set as soon as it stops taking deliveries (no await in between): a
            # delivery queued after this always finds a writer or starts one.
            writer = asyncio.current_task()
            if writer is not None:
                self._writers.discard(writer)

    async def _settle(self, batch: list[_Delivery], *, last_try: bool) -> bool:
        """Commit the batch's claims and answer each delivery; False when it failed and is
        not the last try (its deliveries are then not answered)."""
        try:
            results = await self._commit(batch)
        except BaseException as exc:
            if last_try or not isinstance(exc, Exception):
                fail_waiting((done for *_, done in batch), exc)
            if not isinstance(exc, Exception):
                raise
            return last_try
        answer_waiting((done, result) for (*_, done), result in zip(batch, results, strict=True))
        return True

    async def _commit(self, batch: list[_Delivery]) -> list[Claimed]:
        """Step 1 for the batch in one transaction: every event claimed by one statement
        (`repository.claim_events`), the claimed ones applied at once when they can be (each
        at-once handler called once with its deliveries, in lock order: one statement per
        table for the group's credits), their outcomes recorded by one statement; a second
        copy of an event in the batch is claimed after that, as it would be after the first's
        transaction (a duplicate when the first was applied, else busy)."""
        firsts: dict[str, int] = {}
        for index, (_, _, event, _done) in enumerate(batch):
            firsts.setdefault(str(event["id"]), index)
        settings = batch[0][0]
        now = utcnow()
        lease_until = now + lease_length(settings)
        results: list[Claimed | None] = [None] * len(batch)
        async with session_scope(self._maker) as session:
            claims = await repository.claim_events(
                session, [batch[i][2] for i in firsts.values()], now, lease_until
            )
            handlers: dict[AtOnceHandler, list[int]] = {}
            for index, claim in zip(firsts.values(), claims, strict=True):
                results[index] = (claim, None)
                at_once = at_once_handler_for(str(batch[index][2]["type"]))
                if at_once is not None and claim in (Claim.NEW, Claim.RETRY):
                    handlers.setdefault(at_once, []).append(index)
            outcomes: list[tuple[str, WebhookOutcome, str | None]] = []
            for at_once, indexes in handlers.items():
                deliveries = [batch[index] for index in indexes]
                applied = await _apply_at_once(session, self._maker, at_once, deliveries)
                for index, outcome in zip(indexes, applied, strict=True):
                    if outcome is not None:
                        claimed = results[index]
                        assert claimed is not None
                        results[index] = (claimed[0], outcome)
                        outcomes.append((str(batch[index][2]["id"]), *outcome))
            if outcomes:
                await repository.set_outcomes(session, outcomes)
            for index, (_, _, event, _) in enumerate(batch):
                if results[index] is None:
                    (again,) = await repository.claim_events(session, [event], now, lease_until)
                    results[index] = (again, None)
        return [result for result in results if result is not None]


_claims: PerLoop[async_sessionmaker[AsyncSession], _ClaimGroups] = PerLoop(_ClaimGroups)
"""The running loop's claim groups of each session maker."""


async def receive_event(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    stripe: StripeGateway,
    payload: bytes,
    signature: str | None,
) -> Receipt:
    """Verify the delivery on its raw body, claim the event id and apply the event."""
    try:
        event = stripe.construct_event(payload, signature)
    except InvalidSignature as exc:
        STRIPE_EVENTS.labels("unknown", "invalid_signature").inc()
        log.warning("stripe_event_invalid_signature", reason=exc.detail)
        raise
    event_id, event_type = str(event["id"]), str(event["type"])
    claim, applied = await _claims(maker).claim(settings, stripe, event)
    if applied is not None:
        _applied(event_id, event_type, *applied)
        return Receipt(event_id, event_type, False, *applied, _object_id(event))
    if claim is Claim.APPLIED:
        STRIPE_EVENTS.labels(event_type, "duplicate").inc()
        log.info("stripe_event_duplicate", event_id=event_id, type=event_type)
        return Receipt(event_id, event_type, duplicate=True, outcome=None)
    if claim is Claim.BUSY:
        STRIPE_EVENTS.labels(event_type, "in_progress").inc()
        raise EventInProgress(f"Event {event_id} is being applied by another delivery.")
    try:
        outcome, detail = await _apply(maker, settings, stripe, event)
        async with session_scope(maker) as session:
            await repository.set_outcome(session, event_id, outcome, detail)
    except BaseException:
        # Give the lease back so Stripe's next delivery applies it at once (best effort: with
        # the database gone it lapses by itself).
        with contextlib.suppress(Exception):
            async with session_scope(maker) as session:
                await repository.release_event(session, event_id)
        raise
    _applied(event_id, event_type, outcome, detail)
    return Receipt(event_id, event_type, False, outcome, detail, _object_id(event))


def _object_id(event: dict[str, Any]) -> str | None:
    obj = event["data"].get("object") or {}
    return obj.get("id") if isinstance(obj.get("id"), str) else None


async def replay_event(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    stripe: StripeGateway,
    event_id: str,
) -> StripeEvent:
    """Apply a stored event again through the same idempotent handlers (an operator's repair
    after a fix); its recorded outcome is replaced by the replay's (the detail says `replayed`)."""
    async with session_scope(maker) as session:
        row = await repository.get_event(session, event_id)
        if row is None:
            raise NotFound(f"No Stripe event {event_id}.")
        payload, event_type = dict(row.payload), row.type
    outcome, detail = await _apply(maker, settings, stripe, payload)
    replayed = f"replayed: {detail}" if detail else "replayed"
    async with session_scope(maker) as session:
        await repository.set_outcome(session, event_id, outcome, replayed)
        row = await repository.get_event(session, event_id)
        assert row is not None
    _applied(event_id, event_type, outcome, detail, replayed=True)
    return row

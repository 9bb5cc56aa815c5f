"""Fulfillment: what Stripe says about an order's payment, applied to the order once.

`apply_payment()` is the one function that moves an order after its Stripe object was created.
It is reached from four places — the webhook (`apply_event`), the result page, the user's or an
operator's sync, and the reconciler (all through `refresh_order`) — and believes only our order
row and Stripe's answer (`StripePayment`, read from the API, or from a verified event when the
API is down): amount, currency and livemode must match the order, and the payment must be
complete (`payment_status == "paid"` for a Checkout Session, `status == "succeeded"` for a
PaymentIntent). Anything else that does not match flags the order for an operator; a flagged
order is never credited automatically.

It is idempotent: the credit is the ledger posting `topup:<payment_intent_id>`, which exists at
most once, and statuses only move forward (`app/orders/state.py`), so a late or repeated answer
is recorded and ignored. One exception is deliberate: Stripe saying the money was received
always credits, even an order we had closed, because the money is the user's either way.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import after_commit, session_scope
from app.errors import PaymentProviderUnavailable, StripeRequestFailed
from app.ledger import lots
from app.models.base import utcnow
from app.models.ledger import LotSource, Txn
from app.models.orders import Order, OrderKind, OrderMode
from app.money import cents_to_micros, micros_to_cents
from app.notifications import events
from app.notifications.service import Outgoing, enqueue_many, fill_receipt_urls
from app.orders import repository as orders_repository
from app.orders.state import (
    CLOSED_UNPAID_STATUSES,
    PAID_AFTER_CLOSE,
    PAID_STATUSES,
    OrderStatus,
    transition,
)
from app.payment_methods.service import record_saved_card, saved_card_of_payment_intent
from app.stripe_gateway import (
    StripeGateway,
    StripeJSON,
    StripeObjectNotFound,
    StripeOutcomeUnknown,
)
from app.stripe_gateway.deadline import stripe_budget, without_budget
from app.stripe_gateway.payments import (
    StripePayment,
    metadata_order_id,
    payment_from_checkout_session,
    payment_from_event,
    payment_from_payment_intent,
    string_or_none,
)
from app.waiting import PerLoop, answer_waiting, fail_waiting

log = structlog.get_logger(__name__)


class RefreshOutcome(StrEnum):
    """What `refresh_order` found before anything could be applied (callers branch on these;
    everything else it returns is `apply_payment`'s description of what it did)."""

    NO_ORDER = "no order"
    NO_STRIPE_OBJECT = "no Stripe object yet"
    STRIPE_OBJECT_MISSING = "flagged: the Stripe object does not exist"


def expected_livemode(settings: Settings) -> bool:
    """Whether our Stripe key is a live-mode key (objects of the other mode are not ours)."""
    key = settings.stripe_secret_key.get_secret_value() if settings.stripe_secret_key else ""
    return key.startswith(("sk_live_", "rk_live_"))


# -- reading Stripe ------------------------------------------------------------------------------


async def read_payment(
    stripe: StripeGateway,
    order: Order,
    *,
    payment_intent_id: str | None = None,
    checkout_session_id: str | None = None,
) -> StripePayment | None:
    """Ask Stripe about the order's payment: its Checkout Session (with the PaymentIntent and
    charge) or its PaymentIntent (with the charge). None when no Stripe object is known yet.
    The ids given are used when the order does not know its own yet (an event told us)."""
    session_id = order.stripe_checkout_session_id or checkout_session_id
    intent_id = order.stripe_payment_intent_id or payment_intent_id
    if order.mode == "checkout" and session_id:
        return payment_from_checkout_session(await stripe.retrieve_checkout_session(session_id))
    if intent_id:
        return payment_from_payment_intent(await stripe.retrieve_payment_intent(intent_id))
    return None


# -- applying it ---------------------------------------------------------------------------------


def _mismatch(order: Order, payment: StripePayment, livemode: bool) -> str | None:
    """Why Stripe's answer is not about this order as we wrote it, if it is not."""
    if payment.order_id is not None and payment.order_id != order.id:
        return f"{payment.object_id} belongs to order {payment.order_id}"
    if (
        payment.payment_intent_id
        and order.stripe_payment_intent_id
        and payment.payment_intent_id != order.stripe_payment_intent_id
    ):
        return (
            f"PaymentIntent {payment.payment_intent_id} is not the order's "
            f"{order.stripe_payment_intent_id}"
        )
    if (
        payment.checkout_session_id
        and order.stripe_checkout_session_id
        and payment.checkout_session_id != order.stripe_checkout_session_id
    ):
        return f"Checkout Session {payment.checkout_session_id} is not the order's"
    mismatch = _amount_mismatch(order, payment)
    if mismatch is not None:
        return mismatch
    if (payment.currency or "").lower() != order.currency.lower():
        return f"currency {payment.currency} at Stripe, {order.currency} on the order"
    want_livemode = order.livemode if order.livemode is not None else livemode
    if payment.livemode is not want_livemode:
        return f"livemode {payment.livemode} at Stripe, {want_livemode} expected"
    return None


def _amount_mismatch(order: Order, payment: StripePayment) -> str | None:
    """The amount before tax must be the order's (its credit); the tax is Stripe Tax's: read
    from the object when it says (a Checkout Session), else the one the order's invoice
    computed (`tax_micros`), so the PaymentIntent's amount is the total."""
    expected_cents = micros_to_cents(order.amount_micros)
    if payment.tax_cents is not None and payment.amount_cents is not None:
        pre_tax = payment.amount_cents - payment.tax_cents
        if pre_tax != expected_cents:
            return f"amount {pre_tax} cents before tax at Stripe, {expected_cents} on the order"
        return None
    total_cents = micros_to_cents(order.amount_micros + order.tax_micros)
    if payment.amount_cents != total_cents:
        return f"amount {payment.amount_cents} cents at Stripe, {total_cents} on the order"
    return None


async def apply_payment(
    session: AsyncSession,
    settings: Settings,
    order: Order,
    payment: StripePayment,
    *,
    source: str,
) -> str:
    """Apply Stripe's answer to the order (locked by the caller); returns what it did, e.g.
    `credited`, `already paid`, `ignored: paid -> processing is backwards`, `flagged: …`. An
    order alone: `apply_payments`."""
    (outcome,) = await apply_payments(session, settings, [(order, payment, source)])
    return outcome


async def apply_payments(
    session: AsyncSession,
    settings: Settings,
    items: Sequence[tuple[Order, StripePayment, str]],
) -> list[str]:
    """`apply_payment` for several distinct orders (each locked by the caller), each with
    Stripe's answer and its source, in their order: what each did. The credits among them are
    posted together (`_credit_all`: one statement per table for all of them)."""
    if len({order.id for order, _, _ in items}) != len(items):
        raise ValueError("apply_payments takes each order once")
    outcomes: list[str | None] = []
    credits: list[_Credit] = []
    for order, payment, source in items:
        outcome = await _apply(session, settings, order, payment, source)
        if isinstance(outcome, _Credit):
            credits.append(outcome)
            outcomes.append(None)
        else:
            outcomes.append(outcome)
    if credits:
        await _credit_all(session, credits)
    return [outcome or "credited" for outcome in outcomes]


async def _apply(
    session: AsyncSession, settings: Settings, order: Order, payment: StripePayment, source: str
) -> str | _Credit:
    """One order's part of `apply_payments`: what it did, or the credit it is owed."""
    bound = log.bind(order_id=order.id, source=source, stripe_object=payment.object_id)
    if order.flagged_reason:
        return "ignored: order flagged for review"
    mismatch = _mismatch(order, payment, expected_livemode(settings))
    if mismatch is not None:
        order.flagged_reason = mismatch[:500]
        bound.error("order_flagged", reason=mismatch, state=payment.state)
        return f"flagged: {mismatch}"

    _fill_empty(order, payment, _STRIPE_IDS)
    if payment.tax_cents is not None and order.status not in PAID_STATUSES:
        order.tax_micros = cents_to_micros(payment.tax_cents)

    if payment.state == "paid":
        return await _credit(session, settings, order, payment, bound, source)
    if payment.state == "processing":
        if order.status == OrderStatus.PROCESSING:
            return "processing"
        if transition(order, OrderStatus.PROCESSING, reason=source):
            return "processing"
        return f"ignored: {order.status} -> processing is backwards"
    if payment.state == "open":
        if payment.failure_message is None:
            return f"no change ({order.status})"
        if order.status == OrderStatus.PENDING:
            # A declined card: the customer may try again with the same payment.
            order.failure_code = (payment.failure_code or "")[:100] or None
            order.failure_message = payment.failure_message[:500]
            bound.info("payment_attempt_failed", failure_code=payment.failure_code)
            return f"payment failed, order stays pending: {payment.failure_message}"
        if order.status == OrderStatus.PROCESSING and transition(
            order, OrderStatus.FAILED, reason=source
        ):
            _record_failure(order, payment)
            return "failed"
        return f"ignored: {order.status} after a failed attempt"
    # canceled / expired / failed
    closed = OrderStatus(payment.state)
    if order.status == closed:
        return f"already {closed}"
    if transition(order, closed, reason=source):
        if closed == OrderStatus.FAILED:
            _record_failure(order, payment)
        return closed
    return f"ignored: {order.status} -> {payment.state} is backwards"


_STRIPE_IDS = (
    ("stripe_payment_intent_id", "payment_intent_id"),
    ("stripe_checkout_session_id", "checkout_session_id"),
    ("stripe_invoice_id", "invoice_id"),
)
"""(order column, answer field): the Stripe objects an answer ties to the order."""

_DETAILS = (
    ("stripe_charge_id", "charge_id"),
    ("receipt_url", "receipt_url"),
    ("stripe_invoice_id", "invoice_id"),
)
"""(order column, answer field): what a paid order shows of its payment."""


def _fill_empty(order: Order, payment: StripePayment, fields: tuple[tuple[str, str], ...]) -> None:
    """Stripe's answer on the order's empty fields only (what is recorded stays)."""
    for column, field in fields:
        value = getattr(payment, field)
        if value and getattr(order, column) is None:
            setattr(order, column, value)


def _fill_from_stripe(order: Order, payment: StripePayment) -> None:
    """The charge, receipt and invoice Stripe's answer names, where the order has none."""
    _fill_empty(order, payment, _DETAILS)


def _record_failure(order: Order, payment: StripePayment) -> None:
    order.failure_code = (payment.failure_code or "")[:100] or None
    order.failure_message = (payment.failure_message or "The payment failed.")[:500]


@dataclass(slots=True)
class _Credit:
    """An order owed its credit (`apply_payments` posts them together)."""

    order: Order
    payment: StripePayment
    bound: Any
    source: str
    lot: lots.LotCredit


async def _credit(
    session: AsyncSession,
    settings: Settings,
    order: Order,
    payment: StripePayment,
    bound: Any,
    source: str,
) -> str | _Credit:
    if order.status in PAID_STATUSES:
        _fill_from_stripe(order, payment)
        if order.details_due_at is not None and has_details(payment):
            # A read (a sync, the result page) brought what the credit's event lacked: the
            # order's changes written first, the row read back for the caller after.
            await session.flush()
            await _record_details(session, [(order.id, payment)])
            await session.refresh(order)
        return "already paid"
    pi_id = payment.payment_intent_id
    if pi_id is None:
        order.flagged_reason = "paid at Stripe without a PaymentIntent"
        bound.error("order_flagged", reason=order.flagged_reason)
        return f"flagged: {order.flagged_reason}"
    details: dict[str, Any] = {"order_id": order.id}
    if order.tax_micros:
        details["tax_micros"] = order.tax_micros
    return _Credit(
        order,
        payment,
        bound,
        source,
        lots.LotCredit(
            Txn(f"topup:{pi_id}", "topup", "Top-up", details=details),
            user_id=order.user_id,
            amount_micros=order.amount_micros,
            source=LotSource.AUTO_TOPUP if order.kind == OrderKind.AUTO else LotSource.PURCHASE,
            account="stripe",
            expires_at=lots.paid_expiry(settings.paid_credit_expiry_days, utcnow()),
            order_id=order.id,
            passed_on=("tax_payable", order.tax_micros) if order.tax_micros else None,
        ),
    )


async def _credit_all(session: AsyncSession, credits: list[_Credit]) -> None:
    """Post the credits (`lots.credit_many`: one statement per table), then move each order to
    paid and tell its user (the notifications in one statement)."""
    results = await lots.credit_many(session, [credit.lot for credit in credits])
    notices: list[Outgoing] = []
    for credit, result in zip(credits, results, strict=True):
        order, payment, bound, source = credit.order, credit.payment, credit.bound, credit.source
        # Filled after the credit's inserts, so that the order's changes are one UPDATE (one
        # row version) when the session flushes next.
        _fill_from_stripe(order, payment)
        # Stripe took the money after we had closed the order: credit it anyway (logged).
        closed = order.status in CLOSED_UNPAID_STATUSES
        old = order.status
        # One line for the credit and the move it makes (not `order_transition` besides).
        moved = transition(
            order,
            OrderStatus.PAID,
            reason=PAID_AFTER_CLOSE if closed else source,
            logged_by_caller=True,
        )
        assert moved, f"{order.status} -> paid"
        bound.info(
            "order_paid", old=old, replayed=result.replayed, amount_micros=order.amount_micros
        )
        if not has_details(payment):
            # Credited from a signed event alone: its receipt, charge and saved card are read
            # after the commit (`fetch_details`, queued by the caller that can), else by the
            # reconciler.
            order.details_due_at = utcnow() + DETAILS_GRACE
        notice = await _after_credit(session, order, payment)
        if notice is not None:
            notices.append(notice)
    await enqueue_many(session, notices)


OrderCredited = Callable[[AsyncSession, Order], Awaitable[bool]]
"""`await hook(session, order)` in the crediting transaction: True when it told the user itself
(no `topup.succeeded`)."""

_ON_CREDITED: dict[OrderKind, OrderCredited] = {}


def on_credited(kind: OrderKind, hook: OrderCredited) -> None:
    """Subscribe the domain that made orders of `kind` (auto top-up: `auto`) to their crediting
    (`app.wiring.wire()`): orders know nothing of auto top-ups."""
    existing = _ON_CREDITED.setdefault(kind, hook)
    if existing is not hook:
        raise RuntimeError(f"two hooks for {kind} orders: {existing} and {hook}")


async def _after_credit(
    session: AsyncSession, order: Order, payment: StripePayment
) -> Outgoing | None:
    """In the crediting transaction (once: the order just became paid): record the card the
    payment saved (read from the PaymentIntent already at hand, no Stripe call), and tell the
    user — the `topup.succeeded` returned (the caller enqueues it), or for an auto top-up's
    order the attempt's success (`auto_topup.succeeded`, which also ends its backoff)."""
    saved = saved_card_of_payment_intent(payment.payment_intent) if payment.payment_intent else None
    if saved is not None:
        await record_saved_card(session, order.user_id, saved)
    credited = _ON_CREDITED.get(OrderKind(order.kind))
    if credited is not None and await credited(session, order):
        return None
    return Outgoing(
        order.user_id,
        "topup.succeeded",
        events.topup_succeeded(
            order_id=order.id, amount_micros=order.amount_micros, receipt_url=order.receipt_url
        ),
        order.email,
    )


# -- credits from the event alone, details after the commit ------------------------------------

AT_ONCE_TYPES = frozenset({"payment_intent.succeeded", "checkout.session.completed"})
"""The events whose payload can say all a credit needs (`credit_from_events`)."""

DETAILS_GRACE = timedelta(minutes=2)
"""After a credit from an event alone: when the reconciler may first ask for what the event
lacked (the job queued after the commit normally has it long before)."""

DETAILS_RETRY_DELAYS: tuple[float, ...] = (2.0,)
"""The job's in-process retries after the first read (seconds before each); past them the
reconciler asks, with a backoff, `DETAILS_MAX_ATTEMPTS` times at most."""

DETAILS_MAX_ATTEMPTS = 10
"""How often the reconciler asks for an order's details before it gives up (logged; the
user's or an operator's sync can still fetch them)."""

DETAILS_CONCURRENCY = 16
"""Detail reads in flight at once per process: a burst of credits (a backlog after an outage)
reads at a pace Stripe's per-account read limit tolerates, behind the credits, never before."""

_GATE: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
"""The running loop's gate of detail reads (made again for another loop: tests)."""


def has_details(payment: StripePayment) -> bool:
    """Whether Stripe's answer carries the charge (a read with `latest_charge` expanded), so
    nothing is left to ask about a paid order; an event's payload does not."""
    pi = payment.payment_intent
    return pi is not None and isinstance(pi.get("latest_charge"), dict)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _complete(event: StripeJSON, payment: StripePayment) -> bool:
    """Whether a verified event's payload alone says a payment was received in full: a
    terminal, paid state, the amount received, the currency, livemode, our order id and the
    PaymentIntent (the credit's reference)."""
    if event.get("type") not in AT_ONCE_TYPES or payment.state != "paid":
        return False
    if None in (payment.order_id, payment.payment_intent_id, payment.amount_cents):
        return False
    if payment.currency is None or payment.livemode is None:
        return False
    if payment.livemode is not bool(event.get("livemode", False)):
        return False
    if payment.object_type == "payment_intent":
        obj = event["data"]["object"]
        return _int(obj.get("amount_received")) == payment.amount_cents
    return True


async def credit_from_events(
    session: AsyncSession,
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    events: Sequence[StripeJSON],
) -> list[str | None]:
    """Paid top-ups' events applied from their signed payloads alone, in the caller's
    transaction (the webhook's claim group), in their order: their orders locked by one
    statement (id order) and each checked against its payload (amount — with tax, the total —,
    currency, livemode, its Stripe ids), credited through `apply_payments` (one statement per
    table for the group), and the read of what a payload lacks queued after the commit
    (`fetch_details`). No Stripe call. For each event its outcome, or None when its payload is
    not enough or not plain: not a paid, complete event; no such order; a mismatch; an order
    flagged, processing (an asynchronous method) or closed — the caller then re-reads Stripe
    as for any event. Two events of one order go in turn (the second sees the first's
    change)."""
    outcomes: list[str | None] = [None] * len(events)
    owed: list[Order] = []  # credited: their details read after the commit, together
    candidates: list[tuple[int, StripePayment]] = []
    for index, event in enumerate(events):
        payment = payment_from_event(event)
        if _complete(event, payment):
            candidates.append((index, payment))
    while candidates:
        # A round takes each order once; a later event of an order waits for the next round.
        round_: list[tuple[int, StripePayment]] = []
        later: list[tuple[int, StripePayment]] = []
        taken: set[str | None] = set()
        for index, payment in candidates:
            (later if payment.order_id in taken else round_).append((index, payment))
            taken.add(payment.order_id)
        candidates = later
        if session.dirty:
            # The last round's changes written first: its orders are re-read (and locked) from
            # the database, which must see them.
            await session.flush()
        orders = await orders_repository.lock_orders(
            session, [p.order_id for _, p in round_ if p.order_id is not None]
        )
        items: list[tuple[int, Order, StripePayment, str]] = []
        for index, payment in round_:
            assert payment.order_id is not None
            order = orders.get(payment.order_id)
            if order is None or not _plain(settings, order, payment):
                continue
            items.append((index, order, payment, f"webhook:{events[index]['id']}"))
        applied = await apply_payments(session, settings, [(o, p, src) for _, o, p, src in items])
        for (index, order, _, _), outcome in zip(items, applied, strict=True):
            outcomes[index] = outcome
            if outcome == "credited" and order.details_due_at is not None:
                owed.append(order)
    if owed:
        after_commit(session, fetch_details, maker, stripe, settings, owed)
    return outcomes


def _plain(settings: Settings, order: Order, payment: StripePayment) -> bool:
    """Whether a complete event's payment may be applied to its (locked) order from the
    payload alone: not flagged, of the order's mode, matching it, and pending or paid."""
    if order.flagged_reason:
        return False
    if payment.object_type == "checkout.session" and order.mode != OrderMode.CHECKOUT:
        return False
    if _mismatch(order, payment, expected_livemode(settings)) is not None:
        return False
    return order.status in PAID_STATUSES or order.status == OrderStatus.PENDING


def fetch_details(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    orders: Sequence[Order],
) -> asyncio.Task[bool]:
    """The after-commit job of credits from events alone (a claim group's): read each order's
    payment from Stripe (one read each, at once behind `DETAILS_CONCURRENCY`) and record their
    receipts, charges and saved cards in one write once they answered. Runs as a task outside
    the delivering requests' Stripe budget; what did not answer is asked again in-process
    after `DETAILS_RETRY_DELAYS`, then left to the reconciler (`details_due_at`)."""
    return asyncio.create_task(
        _fetch_details(maker, stripe, settings, list(orders)), context=without_budget()
    )


def _gate() -> asyncio.Semaphore:
    global _GATE
    loop = asyncio.get_running_loop()
    if _GATE is None or _GATE[0] is not loop:
        _GATE = (loop, asyncio.Semaphore(DETAILS_CONCURRENCY))
    return _GATE[1]


async def _fetch_details(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    orders: list[Order],
) -> bool:
    for delay in (0.0, *DETAILS_RETRY_DELAYS):
        if delay:
            await asyncio.sleep(delay)
        reads = [_read(stripe, settings, order) for order in orders]
        answers: list[tuple[bool, StripePayment | None]] = []
        for order, answer in zip(
            orders, await asyncio.gather(*reads, return_exceptions=True), strict=True
        ):
            if isinstance(answer, BaseException):  # one order's bug is not the group's
                log.error("order_details_failed", order_id=order.id, exc_info=answer)
                answer = (False, None)
            answers.append(answer)
        read = [(o.id, payment) for o, (_, payment) in zip(orders, answers, strict=True) if payment]
        if read:
            await _writer(maker).record(read)
        orders = [o for o, (answered, _) in zip(orders, answers, strict=True) if not answered]
        if not orders:
            return True
    for order in orders:
        log.warning("order_details_deferred", order_id=order.id)
    return False


async def _read(
    stripe: StripeGateway, settings: Settings, order: Order
) -> tuple[bool, StripePayment | None]:
    """One read of a paid order's payment: whether Stripe answered (or never will: the object
    does not exist), and its answer (None: none, or nothing to read)."""
    try:
        async with _gate():
            with stripe_budget(settings.stripe_deadline_seconds):
                payment = await read_payment(stripe, order)
    except (PaymentProviderUnavailable, StripeRequestFailed) as exc:
        log.info("order_details_unavailable", order_id=order.id, error=type(exc).__name__)
        return isinstance(exc, StripeObjectNotFound), None  # nothing to read, ever
    return True, payment


async def read_details(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    order: Order,
) -> bool:
    """One read of a paid order's payment and what it says recorded under the order's lock;
    False when Stripe did not answer (asked again later). Idempotent: only empty fields are
    filled, the saved card is recorded once."""
    answered, payment = await _read(stripe, settings, order)
    if payment is not None:
        await _writer(maker).record([(order.id, payment)])
    return answered


async def _record_details(session: AsyncSession, payments: list[tuple[str, StripePayment]]) -> None:
    """What reads say beyond the credit, on paid orders whose details are owed (order id and
    Stripe's answer, one per order): their empty charges, receipts and invoices filled and the
    wait ended in one statement (under the rows' locks), the receipts put into the credits'
    notifications not delivered yet (one statement), and the cards the payments saved
    recorded, once."""
    unique: dict[str, StripePayment] = {}
    for order_id, payment in payments:
        unique.setdefault(order_id, payment)  # two reads of one order: the first is written
    payments = list(unique.items())
    users = await orders_repository.record_details(
        session,
        [
            orders_repository.Details(order_id, p.charge_id, p.receipt_url, p.invoice_id)
            for order_id, p in payments
        ],
    )
    recorded = [(users[order_id], order_id, p) for order_id, p in payments if order_id in users]
    # The credits' notifications were written before the receipts were known.
    await fill_receipt_urls(
        session,
        [(user_id, order_id, p.receipt_url) for user_id, order_id, p in recorded if p.receipt_url],
    )
    for user_id, _, p in recorded:
        saved = saved_card_of_payment_intent(p.payment_intent) if p.payment_intent else None
        if saved is not None:
            await record_saved_card(session, user_id, saved)


class _DetailsWriter:
    """Group commit of the detail reads of one process (per session maker): a read (or a claim
    group's reads, once all answered: `_fetch_details`) hands its answers over and waits for
    the commit; answers that arrive while a write is in flight go
    together in the next one, so a burst of credits writes its details in a few transactions
    (one statement per table each) instead of one transaction per order, and a lone read waits
    for nothing. A failed write fails every read it carried (each is asked again later, as a
    read that failed alone would be)."""

    def __init__(self, maker: async_sessionmaker[AsyncSession]) -> None:
        self._maker = maker
        self._pending: list[tuple[list[tuple[str, StripePayment]], asyncio.Future[None]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def record(self, payments: list[tuple[str, StripePayment]]) -> None:
        """Write what reads said (order id and answer each) and wait for the commit."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((payments, done))
        if self._writing is None:
            # In a context of its own: the writes are no request's (nor its log context).
            self._writing = asyncio.create_task(self._drain(), context=contextvars.Context())
        await done

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    async with session_scope(self._maker) as session:
                        await _record_details(session, [r for read, _ in batch for r in read])
                except BaseException as exc:
                    fail_waiting((done for *_, done in batch), exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    answer_waiting((done, None) for *_, done in batch)
        finally:
            self._writing = None


_writer: PerLoop[async_sessionmaker[AsyncSession], _DetailsWriter] = PerLoop(_DetailsWriter)
"""The running loop's details writer of each session maker."""


def details_retry_delay(attempts: int) -> timedelta:
    """The reconciler's wait before asking again for an order's details: doubling from two
    minutes, at most six hours."""
    factor: int = 2 ** min(max(0, attempts - 1), 16)
    return min(DETAILS_GRACE * factor, timedelta(hours=6))


async def fill_missing_details(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    *,
    now: datetime | None = None,
    batch_size: int = 50,
) -> tuple[int, int]:
    """The reconciler's pass over paid orders whose details are due (the job after the credit
    died or Stripe stayed down): each claimed (FOR UPDATE SKIP LOCKED, `details_due_at` moved
    past the backoff; one asked `DETAILS_MAX_ATTEMPTS` times is given up instead, logged), then
    read. Returns (asked, answered)."""
    asked = answered = 0
    if not stripe.configured:
        return asked, answered
    started = now or utcnow()
    while True:
        async with session_scope(maker) as session:
            batch, given_up = await orders_repository.claim_orders_missing_details(
                session,
                now=started,
                max_attempts=DETAILS_MAX_ATTEMPTS,
                backoff=details_retry_delay,
                limit=batch_size,
            )
        for order_id in given_up:
            log.warning("order_details_given_up", order_id=order_id)
        for order in batch:
            asked += 1
            if await read_details(maker, stripe, settings, order):
                answered += 1
        if len(batch) + len(given_up) < batch_size:
            break
    return asked, answered


# -- the four doors ------------------------------------------------------------------------------


async def refresh_order(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    order_id: str,
    *,
    source: str,
) -> tuple[Order | None, str]:
    """Ask Stripe about the order and apply the answer (result page, sync, reconciler, resume).
    Stripe is called outside any transaction; the answer is applied under the order's lock.
    Raises StripeOutcomeUnknown when Stripe does not answer."""
    async with session_scope(maker) as session:
        order = await orders_repository.find_order(session, order_id=order_id)
    if order is None:
        return None, RefreshOutcome.NO_ORDER
    try:
        payment = await read_payment(stripe, order)
    except StripeObjectNotFound:
        async with session_scope(maker) as session:
            locked = await orders_repository.find_order(session, order_id=order_id, for_update=True)
            assert locked is not None
            if not locked.flagged_reason:
                locked.flagged_reason = "the Stripe object does not exist"
                log.error("order_flagged", order_id=order_id, reason=locked.flagged_reason)
        return locked, RefreshOutcome.STRIPE_OBJECT_MISSING
    async with session_scope(maker) as session:
        locked = await orders_repository.find_order(session, order_id=order_id, for_update=True)
        assert locked is not None
        if payment is None:
            return locked, RefreshOutcome.NO_STRIPE_OBJECT
        outcome = await apply_payment(session, settings, locked, payment, source=source)
    return locked, outcome


async def _order_for_event(
    session: AsyncSession, obj: StripeJSON, *, for_update: bool = False
) -> Order | None:
    """The order an event is about: by the Stripe id we stored, else by the order id Stripe
    carries for us (a Checkout payment's PaymentIntent before the session completed)."""
    obj_id = string_or_none(obj.get("id"))
    if obj.get("object") == "checkout.session":
        order = await orders_repository.find_order(
            session, checkout_session_id=obj_id, for_update=for_update
        )
        hint = string_or_none(obj.get("client_reference_id")) or metadata_order_id(obj)
        stored = "stripe_checkout_session_id"
    else:
        order = await orders_repository.find_order(
            session, payment_intent_id=obj_id, for_update=for_update
        )
        hint = metadata_order_id(obj)
        stored = "stripe_payment_intent_id"
    if order is not None or hint is None:
        return order
    order = await orders_repository.find_order(session, order_id=hint, for_update=for_update)
    if order is not None and getattr(order, stored) not in (None, obj_id):
        return None
    return order


async def apply_event(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    stripe: StripeGateway,
    event: StripeJSON,
) -> str:
    """A verified payment event (webhook or replay): the event says *that* something happened;
    what happened is read from Stripe now — outside any transaction — so events arriving late,
    twice or out of order all apply the current truth, under the order's row lock. When Stripe's
    API does not answer, a `paid` event is applied from its own (signed) payload so the balance
    is not held back; any other event is refused (5xx) so that Stripe delivers it again later."""
    obj = event["data"]["object"]
    async with session_scope(maker) as session:
        order = await _order_for_event(session, obj)
    if order is None:
        return "ignored: no matching order"
    is_session = obj.get("object") == "checkout.session"
    try:
        payment = await read_payment(
            stripe,
            order,
            payment_intent_id=None if is_session else string_or_none(obj.get("id")),
            checkout_session_id=string_or_none(obj.get("id")) if is_session else None,
        )
    except StripeOutcomeUnknown:
        payment = payment_from_event(event)
        if payment.state != "paid":
            raise
        log.warning("webhook_applied_from_payload", order_id=order.id, event_id=event["id"])
    except StripeObjectNotFound:
        payment = None
    if payment is None:
        return "ignored: the Stripe object is unknown"
    async with session_scope(maker) as session:
        locked = await orders_repository.find_order(session, order_id=order.id, for_update=True)
        assert locked is not None
        return await apply_payment(
            session, settings, locked, payment, source=f"webhook:{event['id']}"
        )

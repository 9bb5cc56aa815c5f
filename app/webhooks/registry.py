"""Which function applies which Stripe event type.

Capabilities register their handlers with `@handles("type", ...)` in their own module
(`app/purchase/webhooks.py`, `app/refunds/webhooks.py`, …), imported once by `load_handlers()`
at start-up (the lifespan), which freezes the table that `handler_for` reads. A handler runs
with no transaction open, after the event id was claimed: it asks Stripe for the object (outside
any transaction) and applies the answer in a short transaction of its own under the row lock of
what it changes (`app/db.py`'s transaction policy); it returns a short text that `outcome_of`
turns into the stored `WebhookOutcome` and its detail: `ignored: <why>` (changed nothing on
purpose), `flagged: <mismatch>` (the order was flagged), anything else what it did (`credited`,
`refund recorded`, …). Types with no handler are acknowledged (200) and recorded as `unhandled`.

A type may also have an *at-once* handler (`@handles_at_once(...)`): it runs inside the very
transaction that claims the event, with no Stripe call, and either applies the event from its
signed payload alone (returning its text: the claim, the change and the outcome commit
together, one short transaction) or returns None when the payload does not say enough (the
event then takes the regular handler: claim committed, Stripe asked, applied, outcome).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.models.orders import WebhookOutcome
from app.stripe_gateway import StripeGateway


@dataclass(frozen=True, slots=True)
class WebhookContext:
    """What a handler gets besides the event."""

    maker: async_sessionmaker[AsyncSession]
    """For the handler's own short transactions."""
    settings: Settings
    stripe: StripeGateway
    """Handlers may ask Stripe for the authoritative object."""
    event_id: str


Handler = Callable[[WebhookContext, dict[str, Any]], Awaitable[str]]
"""`await handler(ctx, event)` where `event` is the verified event as a plain dict."""

AtOnceHandler = Callable[
    [AsyncSession, Sequence[tuple[WebhookContext, dict[str, Any]]]], Awaitable[list[str | None]]
]
"""`await at_once(session, deliveries)` in the claim's transaction, for the claim group's
deliveries of its types (each a context and an event, in the group's lock order; a lone
delivery is a group of one): for each, in order, the outcome text, or None to leave that event
to the regular handler. It must not call Stripe (work after the commit goes through
`app.db.after_commit`); when it raises, nothing of the group is kept (the group is tried again
one delivery at a time)."""

_HANDLERS: dict[str, Handler] = {}
"""What `@handles` registered so far (filled while `load_handlers()` imports the modules)."""

_TABLE: Mapping[str, Handler] | None = None
"""The frozen handler table, built once by `load_handlers()`."""

_AT_ONCE: dict[str, AtOnceHandler] = {}
"""What `@handles_at_once` registered (frozen with the table: registering after is refused)."""

_PREFIXED = (WebhookOutcome.IGNORED, WebhookOutcome.FLAGGED)


def outcome_of(text: str) -> tuple[WebhookOutcome, str]:
    """A handler's text as the stored outcome and detail: `ignored: no matching order` is
    (`ignored`, `no matching order`), `credited` is (`processed`, `credited`)."""
    for outcome in _PREFIXED:
        prefix = f"{outcome}: "
        if text.startswith(prefix):
            return outcome, text[len(prefix) :]
    return WebhookOutcome.PROCESSED, text


HANDLER_MODULES = (
    "app.purchase.webhooks",
    "app.refunds.webhooks",
    "app.payment_methods.webhooks",
    "app.billing.webhooks",
    "app.orders.webhooks",
)
"""Modules that register handlers."""


def _register(table: dict[str, Any], kind: str, func: Any, event_types: tuple[str, ...]) -> None:
    """Put `func` in `table` for each event type, before the table is frozen; one per type."""
    if _TABLE is not None:
        raise RuntimeError(f"the webhook handler table is frozen; cannot register {func}")
    for event_type in event_types:
        existing = table.get(event_type)
        if existing is not None and existing is not func:
            raise RuntimeError(f"two {kind}s for {event_type}: {existing} and {func}")
        table[event_type] = func


def handles(*event_types: str) -> Callable[[Handler], Handler]:
    """Register the decorated coroutine as the handler of these event types (at import time of
    a module in HANDLER_MODULES, before the table is frozen)."""

    def register(func: Handler) -> Handler:
        _register(_HANDLERS, "handler", func, event_types)
        return func

    return register


def handles_at_once(*event_types: str) -> Callable[[AtOnceHandler], AtOnceHandler]:
    """Register the decorated coroutine as the at-once handler of these event types (each must
    also have a regular handler, for the events it leaves alone)."""

    def register(func: AtOnceHandler) -> AtOnceHandler:
        _register(_AT_ONCE, "at-once handler", func, event_types)
        return func

    return register


def load_handlers() -> Mapping[str, Handler]:
    """Import every handler module and freeze the table: called once at start-up (the
    lifespan); later calls return the same table without importing anything."""
    global _TABLE
    if _TABLE is None:
        for name in HANDLER_MODULES:
            importlib.import_module(name)
        missing = set(_AT_ONCE) - set(_HANDLERS)
        if missing:
            raise RuntimeError(f"at-once handlers without a regular handler: {sorted(missing)}")
        _TABLE = MappingProxyType(dict(_HANDLERS))
    return _TABLE


def handler_for(event_type: str) -> Handler | None:
    """The handler of an event type, if any: one lookup in the frozen table (built here if
    the lifespan has not, e.g. a service called outside the app)."""
    table = _TABLE if _TABLE is not None else load_handlers()
    return table.get(event_type)


def at_once_handler_for(event_type: str) -> AtOnceHandler | None:
    """The at-once handler of an event type, if any (after the table is frozen)."""
    if _TABLE is None:
        load_handlers()
    return _AT_ONCE.get(event_type)

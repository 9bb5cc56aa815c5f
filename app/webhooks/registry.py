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
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
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

_HANDLERS: dict[str, Handler] = {}
"""What `@handles` registered so far (filled while `load_handlers()` imports the modules)."""

_TABLE: Mapping[str, Handler] | None = None
"""The frozen handler table, built once by `load_handlers()`."""

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


def handles(*event_types: str) -> Callable[[Handler], Handler]:
    """Register the decorated coroutine as the handler of these event types (at import time of
    a module in HANDLER_MODULES, before the table is frozen)."""

    def register(func: Handler) -> Handler:
        if _TABLE is not None:
            raise RuntimeError(f"the webhook handler table is frozen; cannot register {func}")
        for event_type in event_types:
            existing = _HANDLERS.get(event_type)
            if existing is not None and existing is not func:
                raise RuntimeError(f"two handlers for {event_type}: {existing} and {func}")
            _HANDLERS[event_type] = func
        return func

    return register


def load_handlers() -> Mapping[str, Handler]:
    """Import every handler module and freeze the table: called once at start-up (the
    lifespan); later calls return the same table without importing anything."""
    global _TABLE
    if _TABLE is None:
        for name in HANDLER_MODULES:
            importlib.import_module(name)
        _TABLE = MappingProxyType(dict(_HANDLERS))
    return _TABLE


def handler_for(event_type: str) -> Handler | None:
    """The handler of an event type, if any: one lookup in the frozen table (built here if
    the lifespan has not, e.g. a service called outside the app)."""
    table = _TABLE if _TABLE is not None else load_handlers()
    return table.get(event_type)

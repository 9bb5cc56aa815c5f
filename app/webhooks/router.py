"""Stripe's webhook endpoint."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.deps import SessionMakerDep, SettingsDep, StripeDep
from app.errors import (
    EventInProgress,
    InvalidSignature,
    PaymentProviderUnavailable,
    PaymentsNotConfigured,
)
from app.models.orders import WebhookOutcome
from app.openapi import problem_responses
from app.stripe_gateway import StripeGateway, StripeRequestFailed
from app.webhooks import service

router = APIRouter(tags=["webhooks"])


class WebhookAckOut(BaseModel):
    """The event was stored and applied (or was a repeat)."""

    received: bool = True
    event_id: str
    type: str
    duplicate: bool
    outcome: WebhookOutcome | None = Field(
        description="What applying it did; null for a duplicate (applied before)."
    )
    outcome_detail: str | None = Field(
        description="The specifics, e.g. `credited`, `no matching order`.",
        examples=["credited"],
    )


@router.post(
    "/webhooks/stripe",
    summary="Receive a Stripe event",
    # A 5xx means not stored: Stripe delivers the event again later.
    responses=problem_responses(
        InvalidSignature,
        EventInProgress,
        StripeRequestFailed,
        PaymentProviderUnavailable,
        PaymentsNotConfigured,
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "A Stripe event, signed in the `Stripe-Signature` header.",
        }
    },
)
async def receive_stripe_event(
    request: Request,
    maker: SessionMakerDep,
    stripe: StripeDep,
    settings: SettingsDep,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> WebhookAckOut:
    """Verify the signature on the raw body, claim the event id, apply it (Stripe is asked
    outside any transaction) and record the outcome; 200 only after that commit."""
    return await acknowledge(maker, settings, stripe, await request.body(), stripe_signature)


STRIPE_WEBHOOK_PATH = "/v1/webhooks/stripe"
"""Where Stripe delivers (this router's path under the API prefix), also served by
`answer_stripe_event` without FastAPI's routing."""


async def acknowledge(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    stripe: StripeGateway,
    payload: bytes,
    signature: str | None,
) -> WebhookAckOut:
    """A delivery received and its answer: what both doors of the endpoint run."""
    receipt = await service.receive_event(maker, settings, stripe, payload, signature)
    # The receipt's fields are the answer's (as admin/webhooks.py renders a stored event).
    return WebhookAckOut.model_validate(receipt, from_attributes=True)


ErrorHandler = Callable[[Request, Any], Response | Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class _Route:
    """What the access metrics read of a matched route (`middleware.route_template`)."""

    path_format: str


_ROUTE = _Route(STRIPE_WEBHOOK_PATH)


async def answer_stripe_event(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    stripe: StripeGateway,
    handlers: Mapping[Any, ErrorHandler],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """`POST /v1/webhooks/stripe` as an ASGI app of its own, for `BillingApp` to call inside
    the request middleware (request id, access log, body limit, Stripe budget) but without
    FastAPI's routing over every route, its dependency solving and response validation
    (~15% of a delivery's CPU, issue 22): the same `acknowledge`, the same answer bytes, and
    an error rendered by the application's own exception handlers (`handlers`, looked up by
    the error's class as Starlette does; one none takes reaches the middleware's 500)."""
    scope["route"] = _ROUTE
    request = Request(scope, receive)
    try:
        ack = await acknowledge(
            maker, settings, stripe, await request.body(), request.headers.get("stripe-signature")
        )
        response = Response(ack.model_dump_json(), media_type="application/json")
    except Exception as exc:
        handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
        if handler is None:
            raise
        answer = handler(request, exc)
        response = await answer if inspect.isawaitable(answer) else answer
    await response(scope, receive, send)

"""Steps the purchase, webhook and reconciler tests share: buy, pay at the peer, deliver."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import after_commit_settled, session_scope
from app.models.ledger import LedgerTransaction
from app.models.orders import Order
from testing.stripe_peer import StripePeer


async def buy(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    *,
    amount: str = "20.00",
    mode: str = "elements",
    key: str | None = None,
) -> httpx.Response:
    """POST /v1/purchase (with an Idempotency-Key when given)."""
    extra = {"Idempotency-Key": key} if key else {}
    return await client.post(
        "/v1/purchase", json={"amount": amount, "mode": mode}, headers={**headers, **extra}
    )


async def bought(
    client: httpx.AsyncClient, headers: dict[str, str], **kwargs: Any
) -> dict[str, Any]:
    """A successful purchase's body."""
    response = await buy(client, headers, **kwargs)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


Maker = async_sessionmaker[AsyncSession]


async def order_row(maker: Maker, order_id: str) -> Order:
    """The order as stored."""
    async with session_scope(maker) as session:
        order = await session.get(Order, order_id)
    assert order is not None
    return order


async def pay(peer: StripePeer, maker: Maker, order_id: str, **kw: Any) -> dict[str, Any]:
    """The customer pays the order at the peer (Elements popup or hosted Checkout)."""
    order = await order_row(maker, order_id)
    if order.mode == "checkout":
        assert order.stripe_checkout_session_id
        return await peer.pay_checkout(order.stripe_checkout_session_id, **kw)
    assert order.stripe_payment_intent_id
    return await peer.pay_payment_intent(order.stripe_payment_intent_id, **kw)


async def deliver_all(
    peer: StripePeer, client: httpx.AsyncClient, *, since: int = 0, type: str | None = None
) -> list[httpx.Response]:
    """Deliver the peer's events (after `since`, of `type`) in order; each must be accepted."""
    responses = await peer.deliver_all(client, since=since, type=type)
    for response in responses:
        assert response.status_code == 200, response.text
    await after_commit_settled()  # and the work they queued after their commits is done
    return responses


async def shown_order(client: httpx.AsyncClient, headers: dict[str, str], order_id: str) -> Any:
    """`GET /v1/orders/{order_id}`'s body, whatever its status."""
    return (await client.get(f"/v1/orders/{order_id}", headers=headers)).json()


async def balance(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.get("/v1/balance", headers=headers)
    assert response.status_code == 200, response.text
    value: str = response.json()["balance"]
    return value


async def topups(maker: Maker, user_id: str | None = None) -> int:
    """How many top-up credits the ledger holds (for one user)."""
    stmt = select(func.count()).where(LedgerTransaction.kind == "topup")
    if user_id is not None:
        stmt = stmt.where(LedgerTransaction.user_id == user_id)
    async with session_scope(maker) as session:
        return int((await session.execute(stmt)).scalar_one())


async def ledger_size(maker: Maker) -> int:
    async with session_scope(maker) as session:
        return int((await session.execute(select(func.count(LedgerTransaction.id)))).scalar_one())

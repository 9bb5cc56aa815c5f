"""Refund requests: who may ask for what, and every refusal with its reason."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.db import session_scope
from app.models.base import utcnow
from app.orders import repository as orders_repository
from testing.factories import paid_order, pending_order, spend

Headers = Callable[..., dict[str, str]]


async def _request(
    client: httpx.AsyncClient, headers: dict[str, str], order_id: str, **body: Any
) -> httpx.Response:
    return await client.post(
        f"/v1/orders/{order_id}/refund-requests",
        json={"reason": "Paid the wrong amount", **body},
        headers=headers,
    )


def _refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["code"] == "refund_not_eligible"
    assert body["reason"] == reason
    assert body["detail"]


async def test_a_refund_request_defaults_to_the_refundable_amount(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers
) -> None:
    order = await paid_order(session_maker, user_id="alice", amount_micros=20_000_000)
    response = await _request(client, user_headers("alice"), order.id)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert body["amount"] == "20.00"
    assert body["order_id"] == order.id
    listed = (await client.get("/v1/refund-requests", headers=user_headers("alice"))).json()
    assert [r["id"] for r in listed["data"]] == [body["id"]]
    assert (await client.get("/v1/refund-requests", headers=user_headers("bob"))).json()[
        "data"
    ] == []
    detail = (await client.get(f"/v1/orders/{order.id}", headers=user_headers("alice"))).json()
    assert detail["refund_eligibility"]["reason"] == "refund_request_open"


async def test_spent_credit_is_not_refundable(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers
) -> None:
    order = await paid_order(session_maker, user_id="alice", amount_micros=20_000_000)
    await spend(session_maker, "alice", 15_000_000)
    _refused(
        await _request(client, user_headers("alice"), order.id, amount="5.01"),
        "exceeds_available_balance",
    )
    ok = await _request(client, user_headers("alice"), order.id)
    assert ok.json()["amount"] == "5.00"


async def test_fully_spent_credit_is_refused_as_balance_spent(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers
) -> None:
    order = await paid_order(session_maker, user_id="alice", amount_micros=20_000_000)
    await spend(session_maker, "alice", 20_000_000)
    _refused(await _request(client, user_headers("alice"), order.id), "balance_spent")


async def test_a_request_outside_the_window_is_refused(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers
) -> None:
    order = await paid_order(session_maker, user_id="alice", paid_at=utcnow() - timedelta(days=31))
    _refused(await _request(client, user_headers("alice"), order.id), "refund_window_closed")


async def test_more_than_the_unrefunded_amount_is_refused(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers
) -> None:
    order = await paid_order(
        session_maker,
        user_id="alice",
        amount_micros=20_000_000,
        refunded_micros=15_000_000,
        status="partially_refunded",
    )
    await paid_order(session_maker, user_id="alice", amount_micros=50_000_000)
    _refused(
        await _request(client, user_headers("alice"), order.id, amount="5.01"), "exceeds_unrefunded"
    )
    assert (
        await _request(client, user_headers("alice"), order.id, amount="5.00")
    ).status_code == 201


async def test_a_second_open_request_is_refused(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers
) -> None:
    order = await paid_order(session_maker, user_id="alice", amount_micros=20_000_000)
    assert (
        await _request(client, user_headers("alice"), order.id, amount="1.00")
    ).status_code == 201
    _refused(
        await _request(client, user_headers("alice"), order.id, amount="1.00"),
        "refund_request_open",
    )


async def test_a_disputed_order_is_refused(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers
) -> None:
    order = await paid_order(session_maker, user_id="alice")
    async with session_scope(session_maker) as session:
        row = await orders_repository.get_order(session, order.id)
        assert row is not None
        row.status = "disputed"
    _refused(await _request(client, user_headers("alice"), order.id), "disputed")


async def test_an_unpaid_order_is_refused(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers
) -> None:
    order = await pending_order(session_maker, user_id="alice")
    _refused(await _request(client, user_headers("alice"), order.id), "not_paid")


async def test_someone_elses_order_is_404(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers
) -> None:
    order = await paid_order(session_maker, user_id="bob")
    response = await _request(client, user_headers("alice"), order.id)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [
        {"amount": "0.00"},
        {"amount": "1.001"},
        {"amount": "-1"},
        {"amount": "lots"},
        {"reason": ""},
        {"colour": "red"},
    ],
)
async def test_bad_request_bodies_are_422(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers, body: dict[str, Any]
) -> None:
    order = await paid_order(session_maker, user_id="alice")
    response = await _request(client, user_headers("alice"), order.id, **body)
    assert response.status_code == 422, response.text


async def test_an_admin_denies_with_a_note_and_the_action_is_audited(
    client: httpx.AsyncClient,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    order = await paid_order(session_maker, user_id="alice")
    created = (await _request(client, user_headers("alice"), order.id)).json()
    pending = await client.get(
        "/v1/admin/refund-requests", params={"status": "pending"}, headers=admin_headers
    )
    assert [r["id"] for r in pending.json()["data"]] == [created["id"]]
    assert pending.json()["data"][0]["user_id"] == "alice"
    denied = await client.post(
        f"/v1/admin/refund-requests/{created['id']}/deny",
        json={"note": "Credit was used"},
        headers=admin_headers,
    )
    assert denied.status_code == 200
    assert denied.json()["status"] == "denied"
    again = await client.post(
        f"/v1/admin/refund-requests/{created['id']}/deny",
        json={"note": "twice"},
        headers=admin_headers,
    )
    assert again.status_code == 409
    mine = (await client.get("/v1/refund-requests", headers=user_headers("alice"))).json()
    assert mine["data"][0]["review_note"] == "Credit was used"
    audit = await client.get(
        "/v1/admin/audit-log", params={"subject_id": created["id"]}, headers=admin_headers
    )
    (entry,) = audit.json()["data"]
    assert entry["action"] == "refund.deny"
    assert entry["actor_user_id"] == "admin-1"
    assert entry["reason"] == "Credit was used"
    # A new request may follow a denied one.
    assert (await _request(client, user_headers("alice"), order.id)).status_code == 201


async def test_users_cannot_review(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers
) -> None:
    order = await paid_order(session_maker, user_id="alice")
    created = (await _request(client, user_headers("alice"), order.id)).json()
    response = await client.post(
        f"/v1/admin/refund-requests/{created['id']}/approve", headers=user_headers("alice")
    )
    assert response.status_code == 403

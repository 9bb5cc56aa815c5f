"""Order history: the user's own orders, newest first, paginated and filtered."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx

from app.models.base import utcnow
from testing.factories import paid_order, pending_order, spend


async def test_history_lists_only_my_orders_newest_first_with_receipts(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Callable[..., dict[str, str]]
) -> None:
    first = await paid_order(session_maker, user_id="alice", amount_micros=20_000_000)
    second = await pending_order(session_maker, user_id="alice", amount_micros=10_000_000)
    await paid_order(session_maker, user_id="bob")
    response = await client.get("/v1/orders", headers=user_headers("alice"))
    assert response.status_code == 200
    body = response.json()
    assert [o["id"] for o in body["data"]] == [second.id, first.id]
    assert body["next_cursor"] is None
    paid = body["data"][1]
    assert paid["status"] == "paid"
    assert paid["amount"] == "20.00"
    assert paid["currency"] == "usd"
    assert paid["refunded_amount"] == "0.00"
    assert paid["receipt_url"].startswith("https://")
    assert paid["refund_eligibility"] == {
        "eligible": True,
        "reason": None,
        "message": None,
        "max_amount": "20.00",
    }
    assert paid["resumable"] is False
    pending = body["data"][0]
    assert pending["refund_eligibility"]["eligible"] is False
    assert pending["refund_eligibility"]["reason"] == "not_paid"


async def test_pages_follow_the_cursor_without_gaps_or_repeats(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Callable[..., dict[str, str]]
) -> None:
    created = [await pending_order(session_maker, user_id="alice") for _ in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        body = (await client.get("/v1/orders", params=params, headers=user_headers("alice"))).json()
        seen += [o["id"] for o in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [o.id for o in reversed(created)]


async def test_filters_by_status_and_date_range(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Callable[..., dict[str, str]]
) -> None:
    now = utcnow()
    old = await paid_order(session_maker, user_id="alice", paid_at=now - timedelta(days=10))
    new = await paid_order(session_maker, user_id="alice")
    open_order = await pending_order(session_maker, user_id="alice")
    headers = user_headers("alice")
    paid = (await client.get("/v1/orders", params={"status": "paid"}, headers=headers)).json()
    assert {o["id"] for o in paid["data"]} == {old.id, new.id}
    both = await client.get(
        "/v1/orders", params=[("status", "paid"), ("status", "pending")], headers=headers
    )
    assert {o["id"] for o in both.json()["data"]} == {old.id, new.id, open_order.id}
    recent = await client.get(
        "/v1/orders",
        params={"created_from": (now - timedelta(days=1)).isoformat()},
        headers=headers,
    )
    assert {o["id"] for o in recent.json()["data"]} == {new.id, open_order.id}
    older = await client.get(
        "/v1/orders",
        params={"created_to": (now - timedelta(days=1)).isoformat()},
        headers=headers,
    )
    assert [o["id"] for o in older.json()["data"]] == [old.id]


async def test_bad_filters_and_cursors_are_422(
    client: httpx.AsyncClient, user_headers: Callable[..., dict[str, str]]
) -> None:
    headers = user_headers("alice")
    for params in (
        {"status": "bogus"},
        {"cursor": "%%%"},
        {"limit": 101},
        {"limit": 0},
        {"created_from": "yesterday"},
        # A number is not an ISO 8601 date-time (pydantic alone would read a Unix timestamp).
        {"created_from": "0.5"},
        {"created_to": "1700000000"},
    ):
        response = await client.get("/v1/orders", params=params, headers=headers)
        assert response.status_code == 422, params
        assert response.json()["code"] == "validation_error"


async def test_another_users_order_is_404_never_403(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Callable[..., dict[str, str]]
) -> None:
    order = await paid_order(session_maker, user_id="bob")
    mine = await client.get(f"/v1/orders/{order.id}", headers=user_headers("bob"))
    assert mine.status_code == 200
    theirs = await client.get(f"/v1/orders/{order.id}", headers=user_headers("alice"))
    assert theirs.status_code == 404
    assert theirs.json()["code"] == "not_found"
    missing = await client.get("/v1/orders/ord_nope", headers=user_headers("alice"))
    assert missing.json() == {
        **theirs.json(),
        "detail": missing.json()["detail"],
        "request_id": missing.json()["request_id"],
    }


async def test_eligibility_explains_spent_credit_and_a_closed_window(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Callable[..., dict[str, str]]
) -> None:
    old = await paid_order(session_maker, user_id="alice", paid_at=utcnow() - timedelta(days=31))
    recent = await paid_order(session_maker, user_id="alice", amount_micros=10_000_000)
    headers = user_headers("alice")
    body = (await client.get(f"/v1/orders/{old.id}", headers=headers)).json()
    assert body["refund_eligibility"]["reason"] == "refund_window_closed"
    # 30 USD credited; spend all but 4.567 USD: at most 4.56 USD is refundable.
    await spend(session_maker, "alice", 25_433_000)
    body = (await client.get(f"/v1/orders/{recent.id}", headers=headers)).json()
    assert body["refund_eligibility"] == {
        "eligible": True,
        "reason": None,
        "message": None,
        "max_amount": "4.56",
    }
    await spend(session_maker, "alice", 4_567_000)
    body = (await client.get(f"/v1/orders/{recent.id}", headers=headers)).json()
    assert body["refund_eligibility"]["reason"] == "balance_spent"
    assert body["refund_eligibility"]["max_amount"] == "0.00"


async def test_admin_sees_any_users_orders(
    client: httpx.AsyncClient,
    session_maker: Any,
    user_headers: Callable[..., dict[str, str]],
    admin_headers: dict[str, str],
) -> None:
    a = await paid_order(session_maker, user_id="alice")
    b = await paid_order(session_maker, user_id="bob")
    listed = await client.get("/v1/admin/orders", params={"user_id": "bob"}, headers=admin_headers)
    assert [o["id"] for o in listed.json()["data"]] == [b.id]
    assert listed.json()["data"][0]["user_id"] == "bob"
    everyone = await client.get("/v1/admin/orders", headers=admin_headers)
    assert {o["id"] for o in everyone.json()["data"]} == {a.id, b.id}
    one = await client.get(f"/v1/admin/orders/{a.id}", headers=admin_headers)
    assert one.json()["user_id"] == "alice"
    forbidden = await client.get("/v1/admin/orders", headers=user_headers("alice"))
    assert forbidden.status_code == 403

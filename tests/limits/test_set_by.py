"""Who set a spend limit: an operator's limit is the operator's to change. The user cannot remove,
raise or stretch it, only add a stricter limit of their own beside it; the gateway enforces both
(single debits, holds and batches), and both sides' changes are audited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from testing.helpers.ledger import debit, deposit
from testing.helpers.limits import Clock, at, reserve

USER = "guarded-user"
ADMIN_ID = "admin-1"  # the `sub` of the `admin_headers` fixture's token
BASE = f"/v1/admin/users/{USER}/spend-limits"


@pytest.fixture(autouse=True)
def clock(app: Any) -> Clock:
    clock = Clock(at(2026, 11, 27, 12))
    app.state.clock = clock
    return clock


@pytest.fixture
async def me(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: Callable[..., dict[str, str]],
) -> dict[str, str]:
    await deposit(client, admin_headers, USER, 100_000_000)
    headers: dict[str, str] = user_headers(USER)
    return headers


def _rows(listed: dict[str, Any]) -> list[tuple[str, str, str, str, str | None]]:
    return [
        (d["scope"], d["set_by"], d["limit"], d["period"], d["set_by_operator"])
        for d in listed["data"]
    ]


async def test_a_user_cannot_remove_raise_or_stretch_an_operators_limit(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    me: dict[str, str],
) -> None:
    week = {"limit": "5.00", "period": "week"}
    set_ = await client.put(f"{BASE}/account", json=week, headers=admin_headers)
    assert set_.status_code == 200, set_.text

    removed = await client.delete("/v1/spend-limits/account", headers=me)
    assert removed.status_code == 409
    assert removed.headers["content-type"] == "application/problem+json"
    problem = removed.json()
    assert problem["code"] == "spend_limit_set_by_operator"
    assert (problem["scope"], problem["limit"], problem["period"]) == ("account", "5.00", "week")
    for loosening in (
        {"limit": "100.00", "period": "week"},  # raised
        {"limit": "5.00", "period": "week"},  # the same again: adds nothing
        {"limit": "5.00", "period": "day"},  # a shorter window: 5 a day is 35 a week
        {"limit": "9.00", "period": "day"},
    ):
        refused = await client.put("/v1/spend-limits/account", json=loosening, headers=me)
        assert refused.status_code == 409, (loosening, refused.text)
        assert refused.json()["code"] == "spend_limit_set_by_operator"

    assert set_.json()["set_by"] == "operator"
    assert set_.json()["set_by_operator"] == ADMIN_ID
    listed = (await client.get("/v1/spend-limits", headers=me)).json()
    assert _rows(listed) == [("account", "operator", "5.00", "week", ADMIN_ID)]
    over = await debit(client, gateway_headers, USER, 5_000_001)
    assert over.status_code == 402
    assert over.json()["code"] == "spend_limit_exceeded"
    assert (await debit(client, gateway_headers, USER, 5_000_000)).status_code == 201


async def test_a_users_own_stricter_limit_applies_beside_the_operators(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    me: dict[str, str],
    clock: Clock,
) -> None:
    # The user's limit first: an operator's later one does not overwrite it, nor the reverse.
    mine = await client.put(
        "/v1/spend-limits/keys/k1", json={"limit": "2.00", "period": "day"}, headers=me
    )
    assert mine.status_code == 200, mine.text
    operators = await client.put(
        f"{BASE}/keys/k1", json={"limit": "5.00", "period": "week"}, headers=admin_headers
    )
    assert operators.status_code == 200, operators.text
    listed = (await client.get(BASE, headers=admin_headers)).json()
    assert len(listed["data"]) == 2, listed
    assert (mine.json()["set_by"], mine.json()["set_by_operator"]) == ("user", None)
    assert _rows(listed) == [
        ("key:k1", "operator", "5.00", "week", ADMIN_ID),
        ("key:k1", "user", "2.00", "day", None),
    ]

    # The user's 2/day decides today...
    refused = await debit(client, gateway_headers, USER, 2_000_001, api_key_id="k1")
    assert refused.status_code == 402
    assert (refused.json()["scope"], refused.json()["limit"]) == ("key:k1", "2.000000")
    assert (await debit(client, gateway_headers, USER, 2_000_000, api_key_id="k1")).is_success
    # ...and the operator's 5/week the next days, for a debit, a hold and a batch alike.
    clock.now = at(2026, 11, 28, 12)
    assert (await debit(client, gateway_headers, USER, 2_000_000, api_key_id="k1")).is_success
    clock.now = at(2026, 11, 29, 12)
    held = await reserve(client, gateway_headers, USER, 1_000_001, api_key_id="k1")
    assert held.status_code == 402
    assert (held.json()["scope"], held.json()["limit"]) == ("key:k1", "5.000000")
    events = [
        {"user_id": USER, "request_id": "b1", "amount_micros": 1_000_000, "api_key_id": "k1"},
        {"user_id": USER, "request_id": "b2", "amount_micros": 1, "api_key_id": "k1"},
    ]
    batch = await client.post(
        "/v1/internal/usage/batch", json={"events": events}, headers=gateway_headers
    )
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["status"] for r in results] == ["applied", "spend_limit_exceeded"]
    assert results[1]["scope"] == "key:k1"  # the operator's: the user's 2/day left room

    # The user removes their own; the operator's stays until an operator removes it.
    assert (await client.delete("/v1/spend-limits/keys/k1", headers=me)).status_code == 204
    listed = (await client.get("/v1/spend-limits", headers=me)).json()
    assert _rows(listed) == [("key:k1", "operator", "5.00", "week", ADMIN_ID)]
    again = await client.delete("/v1/spend-limits/keys/k1", headers=me)
    assert again.status_code == 409
    assert again.json()["code"] == "spend_limit_set_by_operator"
    assert (await client.delete(f"{BASE}/keys/k1", headers=admin_headers)).status_code == 204
    assert (await client.get("/v1/spend-limits", headers=me)).json()["data"] == []


async def test_a_user_may_add_an_own_limit_the_operators_does_not_imply(
    client: httpx.AsyncClient, admin_headers: dict[str, str], me: dict[str, str]
) -> None:
    day = {"limit": "5.00", "period": "day"}
    assert (await client.put(f"{BASE}/account", json=day, headers=admin_headers)).is_success
    for stricter in (
        {"limit": "4.99", "period": "day"},
        {"limit": "20.00", "period": "week"},  # 5 a day allows 35 a week
        {"limit": "5.00", "period": "total"},
    ):
        response = await client.put("/v1/spend-limits/account", json=stricter, headers=me)
        assert response.status_code == 200, (stricter, response.text)
        assert response.json()["set_by"] == "user"
    listed = (await client.get("/v1/spend-limits", headers=me)).json()
    assert _rows(listed) == [
        ("account", "operator", "5.00", "day", ADMIN_ID),
        ("account", "user", "5.00", "total", None),
    ]


async def test_a_users_own_changes_are_audited(
    client: httpx.AsyncClient, admin_headers: dict[str, str], me: dict[str, str]
) -> None:
    body = {"limit": "3.00", "period": "month"}
    assert (await client.put("/v1/spend-limits/keys/k7", json=body, headers=me)).is_success
    assert (await client.delete("/v1/spend-limits/keys/k7", headers=me)).status_code == 204
    log = (
        await client.get(
            "/v1/admin/audit-log", params={"actor_user_id": USER}, headers=admin_headers
        )
    ).json()["data"]
    entries = [(e["actor_user_id"], e["action"], e["subject_id"], e["details"]) for e in log]
    assert entries == [
        (USER, "spend_limit_removed", USER, {"scope": "key:k7", "set_by": "user"}),
        (
            USER,
            "spend_limit_set",
            USER,
            {"scope": "key:k7", "limit": "3.00", "period": "month", "set_by": "user"},
        ),
    ]

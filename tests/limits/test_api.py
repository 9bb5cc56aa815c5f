"""The portal's and the operators' spend-limit endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from testing.helpers.ledger import debit, deposit
from testing.helpers.limits import Clock, at, set_limit


@pytest.fixture(autouse=True)
def clock(app: Any) -> Clock:
    clock = Clock(at(2026, 11, 27, 12))
    app.state.clock = clock
    return clock


async def test_limits_are_listed_account_first_and_paged(
    client: httpx.AsyncClient, user_headers: Callable[..., dict[str, str]]
) -> None:
    me = user_headers("ann")
    assert (await client.get("/v1/spend-limits", headers=me)).json() == {
        "data": [],
        "next_cursor": None,
    }
    await set_limit(client, me, "3", "week", key="zeta")
    await set_limit(client, me, "2.5", "month", key="alpha")
    await set_limit(client, me, "10.00", "day")
    page = (await client.get("/v1/spend-limits", params={"limit": 2}, headers=me)).json()
    assert [(d["scope"], d["limit"], d["period"]) for d in page["data"]] == [
        ("account", "10.00", "day"),
        ("key:alpha", "2.50", "month"),
    ]
    rest = (
        await client.get(
            "/v1/spend-limits", params={"limit": 2, "cursor": page["next_cursor"]}, headers=me
        )
    ).json()
    assert [d["scope"] for d in rest["data"]] == ["key:zeta"]
    assert rest["data"][0]["resets_at"] == "2026-11-30T00:00:00Z"
    assert rest["next_cursor"] is None


async def test_a_limit_is_removed_once(
    client: httpx.AsyncClient, user_headers: Callable[..., dict[str, str]]
) -> None:
    me = user_headers("ann")
    await set_limit(client, me, "1", "day", key="k1")
    assert (await client.delete("/v1/spend-limits/keys/k1", headers=me)).status_code == 204
    gone = await client.delete("/v1/spend-limits/keys/k1", headers=me)
    assert gone.status_code == 404
    assert gone.json()["code"] == "not_found"
    assert (await client.delete("/v1/spend-limits/account", headers=me)).status_code == 404


async def test_the_same_key_id_of_another_user_is_another_limit(
    client: httpx.AsyncClient,
    user_headers: Callable[..., dict[str, str]],
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    ann, bob = user_headers("ann"), user_headers("bob")
    await deposit(client, admin_headers, "ann", 10_000_000)
    await set_limit(client, ann, "1", "day", key="shared")
    await set_limit(client, bob, "9", "day", key="shared")
    listed = (await client.get("/v1/spend-limits", headers=ann)).json()["data"]
    assert [d["limit"] for d in listed] == ["1.00"]
    assert (await client.delete("/v1/spend-limits/keys/shared", headers=bob)).status_code == 204
    refused = await debit(client, gateway_headers, "ann", 1_000_001, api_key_id="shared")
    assert refused.status_code == 402


@pytest.mark.parametrize(
    "body",
    [
        {"limit": "0", "period": "day"},
        {"limit": "0.00", "period": "day"},
        {"limit": "1.001", "period": "day"},
        {"limit": "-1", "period": "day"},
        {"limit": 5, "period": "day"},
        {"limit": "5", "period": "year"},
        {"limit": "5"},
        {"limit": "5", "period": "day", "currency": "usd"},
    ],
)
async def test_a_bad_limit_is_a_422(
    client: httpx.AsyncClient, user_headers: Callable[..., dict[str, str]], body: Any
) -> None:
    response = await client.put("/v1/spend-limits/account", json=body, headers=user_headers("ann"))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


async def test_an_operator_sets_and_reads_any_users_limits(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: Callable[..., dict[str, str]],
) -> None:
    base = "/v1/admin/users/ann/spend-limits"
    body = {"limit": "4.00", "period": "month"}
    assert (
        await client.put(f"{base}/account", json=body, headers=admin_headers)
    ).status_code == 200
    assert (
        await client.put(f"{base}/keys/k9", json=body, headers=admin_headers)
    ).status_code == 200
    listed = (await client.get(base, headers=admin_headers)).json()["data"]
    assert [d["scope"] for d in listed] == ["account", "key:k9"]
    mine = (await client.get("/v1/spend-limits", headers=user_headers("ann"))).json()["data"]
    assert mine == listed
    assert (await client.delete(f"{base}/keys/k9", headers=admin_headers)).status_code == 204
    assert (await client.delete(f"{base}/account", headers=admin_headers)).status_code == 204
    assert (await client.get(base, headers=admin_headers)).json()["data"] == []
    # A user is not an operator.
    forbidden = await client.get(base, headers=user_headers("ann"))
    assert forbidden.status_code == 403


async def test_an_operators_change_is_audited(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = {"limit": "4.00", "period": "week"}
    await client.put("/v1/admin/users/ann/spend-limits/keys/k1", json=body, headers=admin_headers)
    await client.delete("/v1/admin/users/ann/spend-limits/keys/k1", headers=admin_headers)
    log = (await client.get("/v1/admin/audit-log", headers=admin_headers)).json()["data"]
    entries = [(e["action"], e["subject_id"], e["details"]) for e in log]
    removed_details = {"scope": "key:k1", "set_by": "operator"}
    assert ("spend_limit_removed", "ann", removed_details) in entries
    set_details = {"scope": "key:k1", "limit": "4.00", "period": "week", "set_by": "operator"}
    assert ("spend_limit_set", "ann", set_details) in entries


async def test_an_operators_change_for_the_longest_user_id_is_audited(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # make fuzz found it: the audit's subject was "<user_id>:<scope>", past its 255 characters.
    user_id = "u" * 255
    body = {"limit": "4.00", "period": "week"}
    for path in ("account", "keys/" + "k" * 200):
        url = f"/v1/admin/users/{user_id}/spend-limits/{path}"
        assert (await client.put(url, json=body, headers=admin_headers)).status_code == 200
        assert (await client.delete(url, headers=admin_headers)).status_code == 204

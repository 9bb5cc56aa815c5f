"""The authorization matrix, generated from the app's routes so a new route cannot escape it.

Every route that takes an id is called by the object's owner, another user, the gateway, an
admin and anonymously: another user's object is a 404 (never a 403, which would confirm that it
exists), a missing credential a 401, a credential of the wrong kind or role a 403. Every portal
list is read by another user and must not show the owner's data.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.auth.dependencies import get_admin_user, get_current_user
from app.db import session_scope
from app.ids import new_id
from app.models.orders import StripeEvent
from app.openapi import api_routes
from app.usage.router import OPERATIONS as GATEWAY_OPERATIONS
from testing.factories import paid_order, saved_card
from testing.helpers.purchase import Maker

pytestmark = pytest.mark.usefixtures("stripe_peer")

OWNER = "matrix-owner"
OTHER = "matrix-other"

Kind = str  # "portal" | "admin" | "gateway" | "public"


def _kind(route: Any) -> Kind:
    calls: list[Any] = []
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        calls.append(dep.call)
        stack.extend(dep.dependencies)
    if get_admin_user in calls:
        return "admin"
    if get_current_user in calls:
        return "portal"
    return "public"


@dataclass
class Route:
    method: str
    path: str
    kind: Kind
    params: list[str]

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


def _routes(app: FastAPI) -> list[Route]:
    """FastAPI's routes (their kind read from the credential they depend on) and the lean
    gateway app's operations; every operation of the OpenAPI document must be among them."""
    routes = []
    for route in api_routes(app):
        for method in sorted(route.methods):
            routes.append(
                Route(
                    method,
                    route.path_format,
                    _kind(route),
                    re.findall(r"{(\w+)}", route.path_format),
                )
            )
    for operation in GATEWAY_OPERATIONS:
        routes.append(
            Route(
                operation.method,
                operation.path,
                "gateway",
                re.findall(r"{(\w+)}", operation.path),
            )
        )
    served = {(r.method, r.path) for r in routes}
    documented = {
        (method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item
    }
    assert documented <= served, f"documented but not in the matrix: {documented - served}"
    return routes


class World:
    """Objects of the owner, made fresh for each call so that one call cannot change what the
    next one sees."""

    def __init__(self, client: httpx.AsyncClient, maker: Maker, headers: dict[str, Any]) -> None:
        self.client = client
        self.maker = maker
        self.headers = headers

    async def order_id(self) -> str:
        return (await paid_order(self.maker, user_id=OWNER)).id

    async def request_id(self) -> str:
        order_id = await self.order_id()
        response = await self.client.post(
            f"/v1/orders/{order_id}/refund-requests",
            json={"reason": "matrix", "amount": "1.00"},
            headers=self.headers["owner"],
        )
        assert response.status_code == 201, response.text
        value: str = response.json()["id"]
        return value

    async def event_id(self) -> str:
        event_id = f"evt_{new_id('m')}"
        async with session_scope(self.maker) as session:
            session.add(
                StripeEvent(
                    id=event_id,
                    type="customer.created",
                    livemode=False,
                    object_id=None,
                    payload={"id": event_id, "type": "customer.created", "data": {"object": {}}},
                    outcome="unhandled",
                )
            )
        return event_id

    async def hold_id(self) -> str:
        await self.order_id()  # a balance to hold
        hold_id = new_id("hold")
        response = await self.client.post(
            "/v1/internal/holds",
            json={"user_id": OWNER, "hold_id": hold_id, "amount_micros": 1_000_000},
            headers=self.headers["gateway"],
        )
        assert response.status_code == 201, response.text
        return hold_id

    async def user_id(self) -> str:
        await self.order_id()
        return OWNER

    async def payment_method_id(self) -> str:
        return (await saved_card(self.maker, user_id=OWNER)).id

    async def api_key_id(self) -> str:
        """An API key of the owner's with a spend limit of their own on it, and an operator's."""
        api_key_id = new_id("key")
        response = await self.client.put(
            f"/v1/spend-limits/keys/{api_key_id}",
            json={"limit": "5.00", "period": "day"},
            headers=self.headers["owner"],
        )
        assert response.status_code == 200, response.text
        response = await self.client.put(
            f"/v1/admin/users/{OWNER}/spend-limits/keys/{api_key_id}",
            json={"limit": "9.00", "period": "week"},
            headers=self.headers["admin"],
        )
        assert response.status_code == 200, response.text
        return api_key_id


MAKERS: dict[str, Callable[[World], Awaitable[str]]] = {
    "order_id": World.order_id,
    "request_id": World.request_id,
    "event_id": World.event_id,
    "hold_id": World.hold_id,
    "user_id": World.user_id,
    "payment_method_id": World.payment_method_id,
    "api_key_id": World.api_key_id,
}
"""How to make the owner's object for each kind of id a path takes. A route with a new kind of
id fails the matrix until it is added here."""

BODIES: dict[str, dict[str, Any]] = {
    "POST /v1/orders/{order_id}/refund-requests": {"reason": "matrix", "amount": "1.00"},
    "POST /v1/admin/refund-requests/{request_id}/deny": {"note": "matrix"},
    "POST /v1/admin/accounts/{user_id}/adjustments": {
        "amount_micros": 1_000_000,
        "reason": "matrix",
        "idempotency_key": "matrix",
    },
    "POST /v1/admin/users/{user_id}/grants": {
        "amount": "1.00",
        "reason": "matrix",
        "idempotency_key": "matrix",
    },
    "POST /v1/internal/holds/{hold_id}/capture": {"amount_micros": 500_000},
    "PUT /v1/spend-limits/keys/{api_key_id}": {"limit": "5.00", "period": "day"},
    "PUT /v1/admin/users/{user_id}/spend-limits/account": {"limit": "5.00", "period": "day"},
    "PUT /v1/admin/users/{user_id}/spend-limits/keys/{api_key_id}": {
        "limit": "5.00",
        "period": "day",
    },
}
"""A valid body for each route that needs one, so that every call reaches the authorization."""

OWN_NAMESPACE: set[str] = {"PUT /v1/spend-limits/keys/{api_key_id}"}
"""Portal routes whose id names the caller's own object (a spend limit on one of the caller's
API keys): another user who sends the owner's id sets a limit of their own (200), and the
owner's is untouched (checked in tests/limits/test_api.py)."""

LIST_QUERIES: dict[str, dict[str, str]] = {
    "GET /v1/payments/result": {"order_id": "{order_id}"},
}
"""Query parameters a portal GET without path ids needs to look at someone's object."""


@pytest.fixture
def headers(user_headers: Callable[..., dict[str, str]], gateway_headers: dict[str, str]) -> Any:
    return {
        "owner": user_headers(OWNER),
        "other": user_headers(OTHER),
        "admin": user_headers("matrix-admin", admin=True),
        "gateway": gateway_headers,
        "anonymous": {},
    }


def _expected(kind: Kind, role: str) -> set[int] | None:
    """The statuses `role` must get on a route of `kind` about the owner's object (None: any
    answer that is not a refusal of the caller)."""
    if role == "anonymous":
        return {401}
    if kind == "portal":
        if role == "gateway":
            return {403}
        if role in ("other", "admin"):
            # To a portal route an admin is a user like any other.
            return {404}
        return None
    if kind == "admin":
        return None if role == "admin" else {403}
    if kind == "gateway":
        return None if role == "gateway" else {403}
    raise AssertionError(kind)


ROLES_IN_ORDER = ("anonymous", "gateway", "other", "admin", "owner")


async def test_every_route_with_an_id_answers_each_role_as_the_matrix_says(
    app: FastAPI, client: httpx.AsyncClient, session_maker: Maker, headers: Any
) -> None:
    world = World(client, session_maker, headers)
    with_ids = [r for r in _routes(app) if r.params]
    assert len(with_ids) >= 12, [r.name for r in with_ids]
    checked = []
    for route in with_ids:
        assert route.kind != "public", f"{route.name} takes an id but no credential"
        for role in ROLES_IN_ORDER:
            values = {}
            for param in route.params:
                assert param in MAKERS, f"{route.name}: add a maker for {{{param}}} to MAKERS"
                values[param] = await MAKERS[param](world)
            url = route.path.format(**values)
            body = BODIES.get(route.name)
            response = await client.request(route.method, url, json=body, headers=headers[role])
            expected = _expected(route.kind, role)
            if route.name in OWN_NAMESPACE and role in ("other", "admin"):
                expected = {200}
            where = f"{route.name} as {role}: {response.status_code} {response.text}"
            if expected is None:
                assert response.status_code not in (401, 403, 404, 422), where
            else:
                assert response.status_code in expected, where
            if response.status_code >= 400:
                assert response.headers["content-type"] == "application/problem+json", where
            if role != "owner" and route.kind == "portal":
                # The refusal names nothing of the owner's (the id echoed is the caller's own).
                assert OWNER not in response.text, where
            checked.append((route.name, role))
    assert len(checked) == len(with_ids) * len(ROLES_IN_ORDER)


async def test_no_portal_list_shows_another_users_data(
    app: FastAPI, client: httpx.AsyncClient, session_maker: Maker, headers: Any
) -> None:
    world = World(client, session_maker, headers)
    request_id = await world.request_id()
    order_id = (await paid_order(session_maker, user_id=OWNER)).id
    lists = [r for r in _routes(app) if r.kind == "portal" and r.method == "GET" and not r.params]
    assert len(lists) >= 6, [r.name for r in lists]
    for route in lists:
        params = {
            k: v.format(order_id=order_id) for k, v in LIST_QUERIES.get(route.name, {}).items()
        }
        owner = await client.get(route.path, params=params, headers=headers["owner"])
        assert owner.status_code == 200, f"{route.name}: {owner.text}"
        other = await client.get(route.path, params=params, headers=headers["other"])
        where = f"{route.name} as another user: {other.status_code} {other.text}"
        assert other.status_code in (200, 404), where
        for secret in (OWNER, order_id, request_id):
            assert secret not in other.text, where
    # The owner does see their own: the lists above could have shown it.
    mine = (await client.get("/v1/orders", headers=headers["owner"])).json()
    assert order_id in {o["id"] for o in mine["data"]}
    requests = (await client.get("/v1/refund-requests", headers=headers["owner"])).json()
    assert request_id in {r["id"] for r in requests["data"]}

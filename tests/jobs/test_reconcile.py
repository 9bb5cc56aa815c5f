"""The reconciler: orders whose webhooks were lost are settled from Stripe's answer, once, by
however many instances run it at the same time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app import cli
from app.db import session_scope
from app.jobs.reconcile import run_reconciler
from app.models.base import utcnow
from app.models.orders import Order
from app.orders.reconcile import reconcile_orders
from testing.fixtures.app import RACE_POOL_SIZE
from testing.helpers.purchase import (
    Maker,
    balance,
    bought,
    buy,
    deliver_all,
    order_row,
    pay,
    topups,
)
from testing.stripe_peer import StripePeer

Headers = Callable[..., dict[str, str]]

pytestmark = pytest.mark.usefixtures("stripe_peer")


async def _age(maker: Maker, order_id: str, seconds: float) -> None:
    """Pretend the order was created `seconds` ago."""
    async with session_scope(maker) as session:
        await session.execute(
            update(Order)
            .where(Order.id == order_id)
            .values(created_at=utcnow() - timedelta(seconds=seconds))
        )


async def _status(client: httpx.AsyncClient, headers: dict[str, str], order_id: str) -> str:
    status: str = (await client.get(f"/v1/orders/{order_id}", headers=headers)).json()["status"]
    return status


@pytest.mark.parametrize("mode", ["elements", "checkout"])
async def test_the_reconciler_credits_an_order_whose_webhook_was_lost_once(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    mode: str,
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers, mode=mode))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id)
    await _age(session_maker, order_id, 600)

    summary = await run_reconciler(session_maker, app.state.stripe, app.state.settings)
    assert summary.checked == 1
    assert summary.outcomes == {"paid": 1}
    assert summary.errors == 0
    order = (await client.get(f"/v1/orders/{order_id}", headers=headers)).json()
    assert order["status"] == "paid"
    assert order["receipt_url"]
    # A second run has nothing to do, and the late webhook finds the work done.
    assert (await run_reconciler(session_maker, app.state.stripe, app.state.settings)).checked == 0
    await deliver_all(stripe_peer, client)
    assert await balance(client, headers) == "20.000000"
    assert await topups(session_maker) == 1


async def test_the_reconciler_marks_an_expired_checkout_session_expired(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers, mode="checkout"))["order"]["id"]
    session_id = (await order_row(session_maker, order_id)).stripe_checkout_session_id
    await stripe_peer.expire_checkout(str(session_id))
    await _age(session_maker, order_id, 3600)
    summary = await reconcile_orders(session_maker, app.state.stripe, app.state.settings)
    assert summary.outcomes == {"expired": 1}
    assert await _status(client, headers, order_id) == "expired"


async def test_the_reconciler_leaves_young_orders_and_backs_off_from_unpaid_ones(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers("alice")
    young = (await bought(client, headers))["order"]["id"]
    old = (await bought(client, headers))["order"]["id"]
    await _age(session_maker, old, 3600)
    first = await reconcile_orders(session_maker, app.state.stripe, app.state.settings)
    assert first.checked == 1
    assert first.outcomes == {"pending (unchanged)": 1}
    row = await order_row(session_maker, old)
    assert row.next_check_at is not None
    assert row.next_check_at - utcnow() > timedelta(minutes=25)  # half its age
    # Asked again only when due; the young order waits for its webhook.
    assert (
        await reconcile_orders(session_maker, app.state.stripe, app.state.settings)
    ).checked == 0
    assert (await order_row(session_maker, young)).next_check_at is None


async def test_the_reconciler_closes_an_order_whose_payment_was_never_created(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers("alice")
    await bought(client, headers)  # the customer exists
    await stripe_peer.inject_fault("POST", "/v1/payment_intents", status=500, times=3)
    failed = await buy(client, headers, amount="30.00")
    assert failed.status_code == 503
    pending = (await client.get("/v1/purchase/pending", headers=headers)).json()["data"]
    stuck = next(o["id"] for o in pending if o["amount"] == "30.00")

    # Younger than a Stripe call can take: its creation might still be in flight.
    await _age(session_maker, stuck, 5)
    summary = await reconcile_orders(
        session_maker, app.state.stripe, app.state.settings, min_age_seconds=0
    )
    assert summary.outcomes["pending (unchanged)"] == 2
    assert await _status(client, headers, stuck) == "pending"

    await _age(session_maker, stuck, 3600)
    async with session_scope(session_maker) as session:
        await session.execute(update(Order).values(next_check_at=None))
    summary = await reconcile_orders(session_maker, app.state.stripe, app.state.settings)
    assert summary.outcomes["failed"] == 1
    order = (await client.get(f"/v1/orders/{stuck}", headers=headers)).json()
    assert (order["status"], order["resumable"]) == ("failed", False)
    assert order["failure_message"] == "The payment could not be started; nothing was charged."
    assert await topups(session_maker) == 0


async def test_the_reconciler_counts_an_order_stripe_does_not_answer_about_and_asks_later(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id)
    await _age(session_maker, order_id, 600)
    await stripe_peer.inject_fault("GET", "/v1/payment_intents", status=500, times=3)
    summary = await reconcile_orders(session_maker, app.state.stripe, app.state.settings)
    assert (summary.checked, summary.errors) == (1, 1)
    assert await _status(client, headers, order_id) == "pending"
    async with session_scope(session_maker) as session:
        await session.execute(update(Order).values(next_check_at=None))
    summary = await reconcile_orders(session_maker, app.state.stripe, app.state.settings)
    assert summary.outcomes == {"paid": 1}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"database_pool_size": RACE_POOL_SIZE}


async def test_concurrent_reconcilers_share_the_orders_and_credit_each_once(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    orders: list[tuple[str, str]] = []
    for n in range(12):
        user = f"user-{n % 4}"
        order_id = (await bought(client, user_headers(user), amount="10.00"))["order"]["id"]
        await pay(stripe_peer, session_maker, order_id)
        await _age(session_maker, order_id, 600)
        orders.append((user, order_id))
    summaries = await asyncio.gather(
        *(
            reconcile_orders(session_maker, app.state.stripe, app.state.settings, batch_size=2)
            for _ in range(4)
        )
    )
    assert sum(s.checked for s in summaries) == 12
    assert sum(s.outcomes["paid"] for s in summaries) == 12
    assert await topups(session_maker) == 12
    for user in {u for u, _ in orders}:
        assert await balance(client, user_headers(user)) == "30.000000"


async def test_the_reconcile_command_prints_progress_and_a_summary(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id)
    args = cli.build_parser().parse_args(["reconcile", "--min-age", "0", "--verbose"])
    assert await cli._reconcile(args, app.state.settings) == 0
    out, err = capsys.readouterr()
    assert "reconciling orders pending longer than 0 s ..." in err
    assert f"{order_id} (pending): paid" in err
    summary = (
        "reconcile done: checked 1 orders, 1 paid, 0 Stripe errors, 0 receipts asked for, "
        "0 refunds retried"
    )
    assert summary in out.splitlines()
    assert await balance(client, headers) == "20.000000"


async def test_every_instance_runs_the_reconciler_as_a_periodic_job(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    from app.main import _jobs

    (job,) = [j for j in _jobs(app, app.state.settings) if j.name == "reconcile"]
    assert job.interval == app.state.settings.reconcile_interval_seconds
    headers = user_headers("alice")
    order_id = (await bought(client, headers))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id)
    await _age(session_maker, order_id, 600)
    await job.func()
    assert await _status(client, headers, order_id) == "paid"

"""A batch's statement writes its lots' draws by each lot's key, never through a join with the
wallets it updated: in the generic plan (the one the gateway's connections keep once a statement
has run five times) that `UPDATE … RETURNING` is estimated at one row, and the join became a
nested loop over every draw for each wallet (1,000 wallets by 2,000 lots: ~300 ms of a
1,000-event batch with three lots per wallet, against ~33 ms written by key)."""

from __future__ import annotations

import json
from typing import Any

from app.limits.periods import Windows
from app.models.base import utcnow
from app.usage import repository
from app.usage.store import UsageDebit


def _nodes(plan: dict[str, Any], *, init_plans: bool = True) -> list[dict[str, Any]]:
    children = [
        child
        for child in plan.get("Plans", ())
        if init_plans or child.get("Parent Relationship") != "InitPlan"
    ]
    return [plan, *(n for child in children for n in _nodes(child, init_plans=init_plans))]


async def test_a_batch_writes_its_lot_draws_by_key_not_joined_with_its_wallets(app: Any) -> None:
    users = sorted(f"user-{i}" for i in range(1000))
    debits = [UsageDebit(user, f"r-{user}", 7000, "d" * 64, None) for user in users]
    now = utcnow()
    args = (*repository._event_columns(debits), now, *Windows.at(now), "txn_x", "usage-batch:x")
    async with app.state.usage_store.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = json.loads(
            await conn.fetchval("EXPLAIN (FORMAT JSON) " + repository._sql().batch, *args)
        )[0]["Plan"]
    draws = [
        n
        for n in _nodes(plan)
        if n["Node Type"] == "ModifyTable" and n.get("Relation Name") == "credit_lots"
    ]
    assert len(draws) == 1
    # The wallets only asked whether there are any (an InitPlan), never joined.
    assert [n for n in _nodes(draws[0]) if n.get("CTE Name") == "wallets"]
    assert not [n for n in _nodes(draws[0], init_plans=False) if n.get("CTE Name") == "wallets"]

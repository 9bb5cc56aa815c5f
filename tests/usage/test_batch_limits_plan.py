"""A batch's statement reaches the spend limits of its users through the table's unique index,
one probe per (user, scope), whatever the planner knows of the table: on a seq scan,
`user_id = ANY(the batch's users)` compared every limit with every user of the batch (a
thousand by a thousand: 17 ms of a 45 ms batch of 1,000 events, `bench.batch_costs`)."""

from __future__ import annotations

import json
from typing import Any

from app.limits.periods import Windows
from app.models.base import utcnow
from app.usage import repository
from app.usage.store import UsageDebit


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", ()) for n in _nodes(child))]


async def test_a_batch_probes_its_users_limits_by_index(app: Any) -> None:
    # As `make bench` has them: a limit for every user's key, freshly written (unanalyzed),
    # which the batch's events do not name: the old plan scanned the table.
    users = sorted(f"user-{i}" for i in range(1000))
    debits = [UsageDebit(user, f"r-{user}", 7000, "d" * 64, None) for user in users]
    now = utcnow()
    args = (*repository._event_columns(debits), now, *Windows.at(now), "txn_x", "usage-batch:x")
    async with app.state.usage_store.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO spend_limits (id, user_id, scope, limit_micros, period, window_start, "
            "spent_micros, created_at, updated_at) "
            "SELECT 'lim_' || i, 'user-' || i, 'key:k', 10, 'month', now(), "
            "0, now(), now() FROM generate_series(0, 999) i"
        )
        # The plan the gateway's connections use once the statement has run five times.
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + repository._sql().batch, *args, column=0
        )
    scans = [
        (n["Node Type"], n.get("Index Name"))
        for n in _nodes(json.loads(plan)[0]["Plan"])
        if n.get("Relation Name") == "spend_limits" and n["Node Type"] != "ModifyTable"
    ]
    # The limits probed by the unique index; the counters written (`spend`) by the primary key.
    assert ("Index Scan", "uq_spend_limits_user_id") in scans
    assert {kind for kind, _ in scans} == {"Index Scan"}, scans

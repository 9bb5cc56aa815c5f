"""The plan PostgreSQL makes of a gateway statement, as the gateway's connections run it."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", ()) for n in _nodes(child))]


async def generic_plan_scans(
    conn: asyncpg.Connection, sql: str, *args: Any, tables: tuple[str, ...]
) -> set[tuple[str, str, str | None]]:
    """(node type, table, index) of each node reading one of `tables` (writes left out) in the
    generic plan of `sql`: the plan the gateway's connections keep once a statement has run
    five times. Run inside the caller's transaction (`SET LOCAL`)."""
    await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args, column=0)
    return {
        (n["Node Type"], n["Relation Name"], n.get("Index Name"))
        for n in _nodes(json.loads(plan)[0]["Plan"])
        if n.get("Relation Name") in tables and n["Node Type"] != "ModifyTable"
    }

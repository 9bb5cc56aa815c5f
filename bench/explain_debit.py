"""`python -m bench.explain_debit`: where the usage debit's time goes in PostgreSQL.

On a fresh database funded as `make bench` funds it (1,000 wallets, one paid lot each):

1. `EXPLAIN (ANALYZE, BUFFERS, WAL)` of the statement the store sends (`_sql().debit`), once
   with the parameters bound (the custom plan asyncpg gets for its first five executions) and
   once as a prepared statement's generic plan (`plan_cache_mode=force_generic_plan`), after a
   warm-up of `--warm` debits; both plans printed;
2. one connection running `--debits` debits one after another with `plan_cache_mode` `auto`
   and then `force_generic_plan`, alternating `--rounds` times: the client's wall time per
   debit and the backend's CPU per debit (`/proc/<pid>/stat`), so the planning a generic plan
   saves shows in both; and how many generic and custom plans PostgreSQL ran in each mode
   (`pg_prepared_statements`: `auto` switches to the generic plan after five custom ones when
   it costs no more, planning included).

    python -m bench.explain_debit [--warm 200] [--debits 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import time
import uuid
from typing import Any

import asyncpg

from bench.pgstats import TICK, backend_ticks
from bench.run import dsn, prepare_service_database, scratch_database, sqlalchemy_url


def debit_args(user: str) -> tuple[Any, ...]:
    from app.limits.periods import Windows
    from app.models.base import utcnow

    now = utcnow()
    request_id = uuid.uuid4().hex
    return (
        f"usage:{request_id}",
        f"txn_{request_id[:26]}",
        user,
        7000,
        "h" * 64,
        None,
        now,
        None,
        *Windows.at(now),
        request_id,
        "gpt-4o-mini",
        1200,
        300,
    )


def literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


async def run(args: argparse.Namespace) -> None:
    from app.usage.repository import _sql
    from app.wiring import wire

    wire()
    sql = _sql().debit
    name = f"billing_explain_{secrets.token_hex(3)}"
    async with scratch_database(name):
        await prepare_service_database(sqlalchemy_url(dsn(name)))
        conn = await asyncpg.connect(dsn(name))
        try:
            for _ in range(args.warm):
                await conn.fetchrow(sql, *debit_args(f"user-{random.randrange(1000)}"))
            plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, WAL) " + sql, *debit_args("user-1"))
            print("== custom plan (parameters bound) ==")
            print("\n".join(r[0] for r in plan))
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE debit AS {sql}")
            values = ", ".join(literal(v) for v in debit_args("user-2"))
            plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, WAL) EXECUTE debit({values})")
            print("== generic plan (force_generic_plan) ==")
            print("\n".join(r[0] for r in plan))
            await conn.execute("DEALLOCATE debit")
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            results: dict[str, list[tuple[float, float]]] = {"auto": [], "generic": []}
            kept: list[Any] = []
            for _ in range(args.rounds):
                for mode in ("auto", "generic", "generic", "auto"):
                    setting = "auto" if mode == "auto" else "force_generic_plan"
                    # A new statement per mode: plan_cache_mode is read when a plan is chosen.
                    await conn.execute(f"SET plan_cache_mode = {setting}")
                    statement = await conn.prepare(sql + f"\n-- {mode} {uuid.uuid4().hex}")
                    kept.append(statement)  # not closed before pg_prepared_statements is read
                    for _ in range(10):
                        await statement.fetchrow(*debit_args(f"user-{random.randrange(1000)}"))
                    ticks = backend_ticks(pid)
                    began = time.perf_counter()
                    for _ in range(args.debits):
                        await statement.fetchrow(*debit_args(f"user-{random.randrange(1000)}"))
                    wall = (time.perf_counter() - began) / args.debits * 1e6
                    cpu = ((backend_ticks(pid) or 0) - (ticks or 0)) * TICK / args.debits * 1e6
                    results[mode].append((wall, cpu))
                    print(f"{mode:>8}: {wall:,.0f} µs wall, {cpu:,.0f} µs backend CPU per debit")
            plans = await conn.fetch(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            )
            for mode in ("auto", "generic"):
                generic = sum(r["generic_plans"] for r in plans if f"-- {mode} " in r["statement"])
                custom = sum(r["custom_plans"] for r in plans if f"-- {mode} " in r["statement"])
                print(f"{mode:>8}: PostgreSQL ran {generic:,} generic and {custom:,} custom plans")
            for mode, rows in results.items():
                walls = [w for w, _ in rows]
                cpus = [c for _, c in rows]
                print(
                    f"{mode:>8}: median {statistics.median(walls):,.0f} µs wall "
                    f"({min(walls):,.0f}-{max(walls):,.0f}), {statistics.median(cpus):,.0f} µs "
                    f"CPU ({min(cpus):,.0f}-{max(cpus):,.0f}) per debit"
                )
        finally:
            await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.explain_debit")
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--debits", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args()))

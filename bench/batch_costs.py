"""What a usage batch costs, one at a time on one connection: the statement's plan (EXPLAIN
ANALYZE), its backend's CPU, the client's time (Python building the arguments, the round trip),
rows written and index insertions per event. A probe, not a load test, against its own database.

    python -m bench.batch_costs [--batches 20] [--group 8] [--explain] [--drop INDEX ...]
        [--lots 3] [--key]

Three shapes: 1,000 events over 1,000 wallets (the batch scenario), `--group` such batches of
1,000 as ONE batch (what group commit sends when that many batch requests arrived while one was
in flight) and 31 events of one wallet (what debit combining sends for a hot wallet). `--drop`
drops indexes (or unique constraints) from the probe's database first, to measure what each
costs a batch event.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from typing import Any

import asyncpg

from bench.hold_costs import _cpu_seconds, _delta, _stats
from bench.run import (
    LIMITED_KEY,
    WALLETS,
    dsn,
    prepare_service_database,
    scratch_database,
    sqlalchemy_url,
)


async def main(
    batches: int, explain: bool, drop: list[str], group: int, jit: bool, lots: int, key: bool
) -> None:
    from app.limits.periods import Windows
    from app.usage import repository
    from app.usage.repository import UsageStore
    from app.usage.store import UsageDebit
    from app.wiring import wire

    wire()
    # The gateway's connection settings (JIT off), or with `--jit` the server's own.
    settings = {k: v for k, v in repository.SERVER_SETTINGS.items() if not (jit and k == "jit")}
    name = f"billing_batchcost_{secrets.token_hex(3)}"
    url = dsn(name)
    tag = secrets.token_hex(3)
    details = {"model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300}
    api_key = LIMITED_KEY if key else None  # every wallet has a limit on it
    async with scratch_database(name):
        await prepare_service_database(sqlalchemy_url(url), lots)
        if drop:
            conn = await asyncpg.connect(url)
            for index in drop:
                table = await conn.fetchval(
                    "SELECT conrelid::regclass::text FROM pg_constraint WHERE conname = $1", index
                )
                if table is not None:
                    await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{index}"')
                else:
                    await conn.execute(f'DROP INDEX "{index}"')
            await conn.close()

        def spread(b: int) -> list[UsageDebit]:
            events = [
                UsageDebit(f"user-{i}", f"s-{tag}-{b}-{i}", 7000, "d" * 64, details, api_key)
                for i in range(WALLETS)
            ]
            return sorted(events, key=lambda d: d.user_id)

        def grouped(b: int) -> list[UsageDebit]:
            return [d for g in range(group) for d in spread(b * group + g)]

        def hot(b: int) -> list[UsageDebit]:
            return [
                UsageDebit("user-7", f"h-{tag}-{b}-{i}", 7000, "d" * 64, details, api_key)
                for i in range(31)
            ]

        shapes = [("1,000 events, 1,000 wallets", spread)]
        if group > 1:
            shapes.append((f"{group} x 1,000 events grouped, 1,000 wallets", grouped))
        shapes.append(("31 events, 1 wallet", hot))
        for label, make in shapes:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=1, server_settings=settings)
            store = UsageStore(pool)
            for b in range(-6, 0):  # warm: statement cache, generic plans
                await store.debit_batch(make(b))
            if explain:
                debits = make(10_000)
                args = (
                    *repository._event_columns(debits),
                    store.clock(),
                    *Windows.at(store.clock()),
                    "txn_explain",
                    "usage-batch:txn_explain",
                )
                async with pool.acquire() as conn:
                    # The plan the gateway's connections use after 5 runs: the generic one.
                    await conn.execute("SET plan_cache_mode = force_generic_plan")
                    tr = conn.transaction()
                    await tr.start()
                    plan = await conn.fetch(
                        "EXPLAIN (ANALYZE, BUFFERS, TIMING) " + repository._sql().batch, *args
                    )
                    await tr.rollback()
                    await conn.execute("RESET plan_cache_mode")
                print(f"--- EXPLAIN ANALYZE, {label}")
                print("\n".join(r[0] for r in plan))
            await store.close()
            before = await _stats(url)
            pool = await asyncpg.create_pool(url, min_size=1, max_size=1, server_settings=settings)
            store = UsageStore(pool)
            async with pool.acquire() as conn:
                backend = conn.get_server_pid()
            events = 0
            made = [make(b) for b in range(batches)]
            cpu = _cpu_seconds(backend)
            began = time.perf_counter()
            for debits in made:
                await store.debit_batch(debits)
                events += len(debits)
            took = time.perf_counter() - began
            cpu = _cpu_seconds(backend) - cpu
            # Python's share: the arguments alone, timed apart.
            p0 = time.perf_counter()
            for debits in made:
                repository._event_columns(debits)
            args_took = time.perf_counter() - p0
            await store.close()
            after = await _stats(url)
            print(
                f"{label}: per event {cpu / events * 1e6:.1f} µs backend CPU, "
                f"{took / events * 1e6:.1f} µs wall, {args_took / events * 1e6:.2f} µs "
                f"building arguments; per batch {took / batches * 1e3:.1f} ms wall, "
                f"{cpu / batches * 1e3:.1f} ms backend CPU"
            )
            print(_delta(before, after, events))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--group", type=int, default=8, help="batches of 1,000 in a group")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--jit", action="store_true", help="JIT as the server has it")
    parser.add_argument("--drop", action="append", default=[], help="an index to drop first")
    parser.add_argument(
        "--lots", type=int, default=1, choices=(1, 3), help="credit lots per wallet (bench.run)"
    )
    parser.add_argument(
        "--key", action="store_true", help="every event carries bench-key (a limit on every wallet)"
    )
    args: Any = parser.parse_args()
    asyncio.run(
        main(args.batches, args.explain, args.drop, args.group, args.jit, args.lots, args.key)
    )

"""`python -m bench.hold_ab`: reserve + capture pairs against usage debits at the store
(`UsageStore`, no HTTP), with the gateway's write statements grouped past the bound
(`grouped`: `gateway_combine_debits` on, `--bound` in flight and `--holds-bound` for reserves and
captures, as the service runs) and without
(`alone`: every debit, reserve and capture its own statement), interleaved in one process so the
machine's drift hits each alike.

Each round runs `--tasks` concurrent workers for `--seconds` over wallets `user-0..999` (funded
as `make bench` funds them): debits of 7,000 µUSD, or pairs (reserve 10,000, then capture 7,000
of it), or pairs whose captures go in batches (`batched`, `--capture-batch` a batch), in the
order A B B A per variant and kind, repeated `--repeats` times. Prints each
round, then per variant the pairs/s ÷ debits/s of its rounds (the issue's target: ≥ 0.8), with
the spread of the per-round ratios, and the PostgreSQL backends' CPU per pair and per debit
(`/proc`), which a machine busy with other work disturbs far less than the throughput.

    python -m bench.hold_ab [--seconds 3] [--tasks 32] [--pool 10] [--bound 4] [--holds-bound 2]
        [--repeats 2] [--capture-batch 50]
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
import uvloop

from bench.pgstats import BackendCpu
from bench.run import ADMIN_DSN, dsn, prepare_service_database, scratch_database, sqlalchemy_url

VARIANTS = ("alone", "grouped")
KINDS = ("debits", "pairs", "batched")
"""`batched`: pairs whose captures go in batches (`UsageStore.capture_batch`, what `POST
/v1/internal/holds/captures` calls) of `--capture-batch`, gathered across the workers; a worker
goes on reserving once its capture is queued, and the one that fills the batch sends it."""


async def load(
    usage_store: Any, kind: str, seconds: float, tasks: int, capture_batch: int = 50
) -> int:
    from app.ledger.holds_repository import HoldCapture, HoldRequest
    from app.usage.store import UsageDebit

    done = 0
    stop = time.monotonic() + seconds
    details = {"model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300}
    queued: list[Any] = []

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            user = f"user-{random.randrange(1000)}"
            if kind == "debits":
                await usage_store.debit(UsageDebit(user, uuid.uuid4().hex, 7000, "h" * 64, details))
            elif kind == "pairs":
                hold_id = uuid.uuid4().hex
                await usage_store.reserve(HoldRequest(user, hold_id, 10_000, 600, "h" * 64))
                await usage_store.capture(HoldCapture(hold_id, 7000, "r" * 64, details, 2.0))
            else:
                hold_id = uuid.uuid4().hex
                await usage_store.reserve(HoldRequest(user, hold_id, 10_000, 600, "h" * 64))
                queued.append(HoldCapture(hold_id, 7000, "r" * 64, details, 2.0))
                if len(queued) < capture_batch:
                    continue
                batch = queued[:]
                queued.clear()
                outcomes = await usage_store.capture_batch(batch)
                failed = [o for o in outcomes if isinstance(o, Exception)]
                if failed:
                    raise failed[0]
                done += len(batch)
                continue
            done += 1

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return done


async def main(args: argparse.Namespace) -> None:
    from app.primary import BillingConnection, Primary
    from app.usage import repository
    from app.wiring import wire

    wire()
    name = f"billing_hold_ab_{secrets.token_hex(3)}"
    async with scratch_database(name):
        url = sqlalchemy_url(dsn(name))
        await prepare_service_database(url)
        primary = Primary(url)

        async def pool_of(size: int) -> asyncpg.Pool:
            return await asyncpg.create_pool(
                connect=primary.connect,
                connection_class=BillingConnection,
                min_size=size,
                max_size=size,
                command_timeout=60,
                reset=repository._reset,
                server_settings=repository.SERVER_SETTINGS,  # as the service's (JIT off)
            )

        pool = await pool_of(args.pool)
        reads = await pool_of(repository.read_pool_size(args.pool))
        try:
            stores = {
                "alone": repository.UsageStore(pool, reads=reads),
                "grouped": repository.UsageStore(
                    pool,
                    reads=reads,
                    combine_debits=True,
                    debits_in_flight=args.bound,
                    holds_in_flight=args.holds_bound or None,
                ),
            }
            for v in VARIANTS:  # warm-up: prepared statements, caches
                for kind in KINDS:
                    await load(stores[v], kind, 1, args.tasks, args.capture_batch)
            rate: dict[tuple[str, str], list[float]] = {(v, k): [] for v in VARIANTS for k in KINDS}
            cpu: dict[tuple[str, str], list[float]] = {(v, k): [] for v in VARIANTS for k in KINDS}
            order = [(v, k) for v in VARIANTS for k in KINDS]
            for _ in range(args.repeats):
                for v, kind in [*order, *reversed(order)]:
                    backends = BackendCpu(ADMIN_DSN, [name])
                    await backends.start()
                    count = await load(
                        stores[v], kind, args.seconds, args.tasks, args.capture_batch
                    )
                    await backends.stop()
                    pg = backends.per_event_us(count) or 0.0
                    rate[v, kind].append(count / args.seconds)
                    cpu[v, kind].append(pg)
                    print(
                        f"{v:>8} {kind:>6}: {count / args.seconds:,.0f}/s, "
                        f"{pg:,.0f} µs PostgreSQL CPU each",
                        flush=True,
                    )
            for v in VARIANTS:
                debits = rate[v, "debits"]
                for kind in KINDS[1:]:
                    pairs = rate[v, kind]
                    ratios = [p / d for p, d in zip(pairs, debits, strict=True)]
                    print(
                        f"{v:>8} {kind:>7}: {statistics.mean(pairs):,.0f} pairs/s, "
                        f"{statistics.mean(debits):,.0f} debits/s: pairs ÷ debits "
                        f"{sum(pairs) / sum(debits):.2f}x (per round {min(ratios):.2f}-"
                        f"{max(ratios):.2f}); PostgreSQL CPU per pair median "
                        f"{statistics.median(cpu[v, kind]):,.0f} µs "
                        f"({min(cpu[v, kind]):,.0f}-{max(cpu[v, kind]):,.0f}), per debit "
                        f"{statistics.median(cpu[v, 'debits']):,.0f} µs "
                        f"({min(cpu[v, 'debits']):,.0f}-{max(cpu[v, 'debits']):,.0f})"
                    )
        finally:
            await pool.close()
            await reads.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.hold_ab")
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--bound", type=int, default=4)
    parser.add_argument(
        "--holds-bound", type=int, default=2, help="reserves' and captures' own bound (0: none)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--capture-batch", type=int, default=50, help="captures per batch of the `batched` kind"
    )
    uvloop.run(main(parser.parse_args()))

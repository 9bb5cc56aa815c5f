"""`python -m bench.store_ab`: the gateway's usage debit at the store (`UsageStore.debit`, no
HTTP), in variants interleaved in one process so the machine's drift hits each alike:

- `base`: the code as it is;
- `no-finish`: `_write` without `app.primary.finish` (the write not shielded from a cancel);
- `no-watch`: without `commits_watched` (no log listener added and removed per write);
- `generic`: the gateway pool's connections with `plan_cache_mode=force_generic_plan`;
- `shared-reads`: the balance reads on the writes' pool (as before the read pool).

With `--reads RATE`, each round also reads balances (`UsageStore.wallet`) at that fixed rate
(open loop, each read's latency counted from its scheduled time) and prints their p50 and p99.

Only `base` and `generic` are safe to ship as they are; the other two are measured to know what
the protection costs. One database migrated by this code, wallets `user-0..999` funded as
`make bench` funds them; rounds of every variant, each `--seconds` long with `--tasks`
concurrent debits on a pool of `--pool` connections, in the order A B C D D C B A, repeated
`--repeats` times; `--hot` debits `user-0` only (one hot wallet), else random wallets. Prints each
round, then per variant the sum, the ratio to `base` and the spread of the per-pair ratios, and
the CPU per debit of this process (what `finish` and `commits_watched` cost is client CPU) and of
the PostgreSQL backends (`/proc`), which a machine busy with other work disturbs far less than
the throughput.

    python -m bench.store_ab [--hot] [--seconds 3] [--tasks 32] [--pool 10] [--repeats 2]
        [--variants base,no-finish,no-watch,generic]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

import asyncpg
import uvloop

from bench.pgstats import BackendCpu
from bench.run import ADMIN_DSN, dsn, prepare_service_database, scratch_database, sqlalchemy_url

_T = TypeVar("_T")
VARIANTS = (
    "base",
    "no-finish",
    "no-watch",
    "generic",
    "shared-reads",
)


async def _direct(work: Awaitable[_T]) -> _T:
    return await work


@contextlib.contextmanager
def _unwatched(connection: Any) -> Iterator[None]:
    yield


@contextlib.contextmanager
def variant(name: str, usage_store: Any) -> Iterator[None]:
    """The repository's module and the store as the variant wants them, for the block."""
    from app.usage import repository

    # The names the repository module imported from app.primary, swapped for the block.
    saved = {name: getattr(repository, name) for name in ("finish", "commits_watched")}
    reads = getattr(usage_store, "_reads", None)
    if name == "no-finish":
        setattr(repository, "finish", _direct)  # noqa: B010
    elif name == "no-watch":
        setattr(repository, "commits_watched", _unwatched)  # noqa: B010
    elif name == "shared-reads":
        if reads is None:
            raise SystemExit("this code has no read pool")
        usage_store._reads = usage_store._pool
    try:
        yield
    finally:
        for saved_name, value in saved.items():
            setattr(repository, saved_name, value)
        if reads is not None:
            usage_store._reads = reads


@contextlib.asynccontextmanager
async def store(
    url: str, pool_size: int, settings: dict[str, str], read_pool: int = 0
) -> AsyncIterator[Any]:
    """A `UsageStore` on a pool made as `UsageStore.open` makes it, with `settings` added."""
    from app.primary import BillingConnection, Primary
    from app.usage import repository

    primary = Primary(url)

    async def pool_of(size: int) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            connect=primary.connect,
            connection_class=BillingConnection,
            min_size=size,
            max_size=size,
            command_timeout=60,
            reset=repository._reset,
            server_settings={"application_name": repository.APPLICATION_NAME} | settings,
        )

    pool = await pool_of(pool_size)
    sizing = getattr(repository, "read_pool_size", None)
    reads = await pool_of(read_pool or sizing(pool_size)) if sizing is not None else None
    try:
        if reads is not None:
            yield repository.UsageStore(pool, reads=reads)
        else:
            yield repository.UsageStore(pool)
    finally:
        await pool.close()
        if reads is not None:
            await reads.close()


async def read_balances(usage_store: Any, seconds: float, rate: float) -> list[float]:
    """Balance reads at `rate` per second for `seconds` (open loop); their latencies from
    each one's scheduled time."""
    latencies: list[float] = []

    async def one(due: float) -> None:
        await usage_store.wallet(f"user-{random.randrange(1000)}")
        latencies.append(time.perf_counter() - due)

    tasks = []
    start = time.perf_counter()
    for i in range(int(seconds * rate)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def load(
    usage_store: Any, seconds: float, tasks: int, hot: bool, reads: float = 0
) -> tuple[int, list[float]]:
    from app.usage.store import UsageDebit

    done = 0
    stop = time.monotonic() + seconds
    details = {"model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300}

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            user = "user-0" if hot else f"user-{random.randrange(1000)}"
            debit = UsageDebit(user, uuid.uuid4().hex, 7000, "h" * 64, details)
            await usage_store.debit(debit)
            done += 1

    reader = asyncio.create_task(read_balances(usage_store, seconds, reads)) if reads else None
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return done, (await reader if reader is not None else [])


async def main(args: argparse.Namespace) -> None:
    from app.wiring import wire

    wire()
    name = f"billing_store_ab_{secrets.token_hex(3)}"
    async with scratch_database(name):
        url = sqlalchemy_url(dsn(name))
        await prepare_service_database(url)
        async with (
            store(url, args.pool, {}, args.read_pool) as plain,
            store(url, args.pool, {"plan_cache_mode": "force_generic_plan"}) as generic,
        ):
            stores = {v: generic if v == "generic" else plain for v in args.variants}
            for v in args.variants:  # warm-up: prepared statements, caches
                with variant(v, stores[v]):
                    await load(stores[v], 1, args.tasks, args.hot, args.reads)
            rounds: dict[str, list[float]] = {v: [] for v in args.variants}
            client: dict[str, list[float]] = {v: [] for v in args.variants}
            server: dict[str, list[float]] = {v: [] for v in args.variants}
            read_p99: dict[str, list[float]] = {v: [] for v in args.variants}
            order = [*args.variants, *reversed(args.variants)]
            for _ in range(args.repeats):
                for v in order:
                    backends = BackendCpu(ADMIN_DSN, [name])
                    await backends.start()
                    began = time.process_time()
                    with variant(v, stores[v]):
                        count, latencies = await load(
                            stores[v], args.seconds, args.tasks, args.hot, args.reads
                        )
                    cpu = (time.process_time() - began) / count * 1e6
                    await backends.stop()
                    pg = backends.per_event_us(count) or 0.0
                    rounds[v].append(count / args.seconds)
                    client[v].append(cpu)
                    server[v].append(pg)
                    p99 = percentile(latencies, 0.99) * 1000
                    read_p99[v].append(p99)
                    reads = (
                        f"; balance reads p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
                        f"p99 {p99:.1f} ms"
                        if latencies
                        else ""
                    )
                    print(
                        f"{v:>10}: {count / args.seconds:,.0f} debits/s, {cpu:,.0f} µs client "
                        f"CPU, {pg:,.0f} µs PostgreSQL CPU per debit{reads}",
                        flush=True,
                    )
        base = rounds[args.variants[0]]
        for v in args.variants:
            pairs = [r / b for r, b in zip(rounds[v], base, strict=True)]
            print(
                f"{v:>10}: mean {statistics.mean(rounds[v]):,.0f} debits/s, "
                f"{sum(rounds[v]) / sum(base):.3f}x {args.variants[0]} "
                f"(per round {min(pairs):.2f}-{max(pairs):.2f}); client CPU per debit median "
                f"{statistics.median(client[v]):,.0f} µs ({min(client[v]):,.0f}-"
                f"{max(client[v]):,.0f}), PostgreSQL {statistics.median(server[v]):,.0f} µs "
                f"({min(server[v]):,.0f}-{max(server[v]):,.0f})"
                + (
                    f"; balance read p99 median {statistics.median(read_p99[v]):.1f} ms "
                    f"({min(read_p99[v]):.1f}-{max(read_p99[v]):.1f})"
                    if args.reads
                    else ""
                )
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.store_ab")
    parser.add_argument("--hot", action="store_true", help="one hot wallet")
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--read-pool", type=int, default=0, help="the read pool's size (default: the code's)"
    )
    parser.add_argument(
        "--reads", type=float, default=0, help="balance reads per second during each round"
    )
    parser.add_argument(
        "--variants",
        type=lambda s: [x for x in s.split(",") if x],
        default=list(VARIANTS),
        help=f"comma-separated among {','.join(VARIANTS)}; the first is the reference",
    )
    uvloop.run(main(parser.parse_args()))

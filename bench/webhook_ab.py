"""`python -m bench.webhook_ab --base <dir>`: `make bench`'s webhook row (signed
`payment_intent.succeeded` for distinct orders, 1 worker, closed loop, 32 connections) of this
checkout against another checkout's (the base: a worktree of main with its own `make install`),
alternated in one run (ABBA).

The paid orders are made once: a database is migrated and funded, `--orders` top-ups are made
through this checkout's `POST /v1/purchase` and paid at the Stripe peer, and the database is kept
as a template. Each pass copies it (`CREATE DATABASE … TEMPLATE`), starts the side's service on
the copy and delivers a warm-up (the first `--warm` events) then the rest, measuring throughput
and the service's and PostgreSQL's CPU per event over the measured deliveries, as `make bench`
does. Both sides must run the same schema (no migration between them). Prints each pass and the
sums' ratios (this ÷ base); checks every delivered order was credited exactly once."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.pgstats import BackendCpu
from bench.run import (
    ADMIN_DSN,
    create_paid_orders,
    drain,
    dsn,
    orders_paid_once,
    prepare_service_database,
    process_tree_ticks,
    service_env,
    sqlalchemy_url,
    stripe_peer,
    write_deliveries,
)
from bench.server import ROOT, Uvicorn, production_command
from bench.wrk import Load

TICK = 1 / os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"webhook_ab: {message}", file=sys.stderr, flush=True)


@dataclass
class Side:
    key: str
    root: Path
    rates: list[float] = field(default_factory=list)
    service_us: list[float] = field(default_factory=list)
    pg_us: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    bad: int = 0


async def admin_exec(*statements: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def replay(server: Uvicorn, path: Path, connections: int, seconds: float) -> Load:
    command = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "replay",
        "--port",
        str(server.port),
        "--path",
        "/v1/webhooks/stripe",
        "--requests",
        str(path),
        "--connections",
        str(connections),
        "--seconds",
        str(seconds),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return Load.parse(done.stdout)


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.webhook_ab", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--base", type=Path, required=True, help="the base checkout (installed)")
    parser.add_argument("--passes", type=int, default=4, help="ABBA: an even number")
    parser.add_argument("--orders", type=int, default=1000, help="orders delivered per pass")
    parser.add_argument("--warm", type=int, default=100, help="of which the warm-up")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--profile", help="py-spy binary: record this checkout's passes")
    args = parser.parse_args(argv)
    base = args.base.resolve()
    if not (base / ".venv" / "bin" / "python").exists():
        parser.error(f"{base} has no .venv: run `make install` there")
    started = time.monotonic()
    template = f"billing_wab_{os.getpid()}_{secrets.token_hex(3)}"
    sides = [Side("A", base), Side("B", ROOT)]
    failed = False
    asyncio.run(admin_exec(f'CREATE DATABASE "{template}"'))
    try:
        url = sqlalchemy_url(dsn(template))
        asyncio.run(prepare_service_database(url, 1))
        with stripe_peer() as peer_url, tempfile.TemporaryDirectory(prefix="wab-") as tmp:
            maker = Uvicorn("wab-setup", production_command(), service_env(url, peer_url))
            maker.start()
            try:
                log(f"making {args.orders} paid orders ...")
                orders = asyncio.run(
                    create_paid_orders(maker.url, peer_url, args.orders, buyers="wab")
                )
            finally:
                maker.close()
            asyncio.run(drain([template]))
            files = [Path(tmp, "warm.jsonl"), Path(tmp, "measured.jsonl")]
            for number in range(args.passes):
                order = sides if number % 2 == 0 else sides[::-1]
                for s in order:
                    # Signed now: Stripe's signatures are good for 300 s.
                    for path, part in zip(
                        files, (orders[: args.warm], orders[args.warm :]), strict=True
                    ):
                        write_deliveries(path, [payload for _, _, payload in part])
                    database = f"{template}_p{number}{s.key.lower()}"
                    asyncio.run(admin_exec(f'CREATE DATABASE "{database}" TEMPLATE "{template}"'))
                    try:
                        command = production_command(s.root / "Dockerfile")
                        command[0] = str(s.root / ".venv" / "bin" / "python")
                        env = service_env(sqlalchemy_url(dsn(database)), peer_url)
                        server = Uvicorn(f"wab-{s.key}", command, env, cwd=s.root)
                        server.start()
                        spy = None
                        try:
                            replay(server, files[0], args.connections, args.seconds)
                            asyncio.run(drain([database]))
                            cpu = BackendCpu(ADMIN_DSN, [database])
                            asyncio.run(cpu.start())
                            assert server.pid is not None
                            ticks = process_tree_ticks(server.pid)
                            if args.profile and s.key == "B":
                                spy = subprocess.Popen(
                                    [
                                        args.profile,
                                        "record",
                                        "-p",
                                        str(server.pid),
                                        "-o",
                                        f"/tmp/wab_{number}.txt",
                                        "-f",
                                        "raw",
                                        "-r",
                                        "200",
                                    ],
                                    stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL,
                                )
                            load = replay(server, files[1], args.connections, args.seconds)
                            ticks = process_tree_ticks(server.pid) - ticks
                            asyncio.run(cpu.stop())
                            if spy is not None:
                                spy.send_signal(2)
                                spy.wait()
                        finally:
                            server.close()
                        events = max(load.requests, 1)
                        s.rates.append(load.rate)
                        s.service_us.append(ticks * TICK / events * 1e6)
                        s.pg_us.append((cpu.seconds or 0.0) / events * 1e6)
                        s.p99.append(load.p99_ms)
                        s.bad += load.non2xx + load.socket_error_count
                        problems = asyncio.run(
                            orders_paid_once(
                                sqlalchemy_url(dsn(database)), orders[: args.warm + load.taken]
                            )
                        )
                        if problems:
                            log("; ".join(problems))
                            s.bad += 1
                    finally:
                        asyncio.run(drain([database]))
                        asyncio.run(admin_exec(f'DROP DATABASE IF EXISTS "{database}" (FORCE)'))
                log(
                    f"pass {number + 1} ({' '.join(s.key for s in order)}): "
                    + "; ".join(
                        f"{s.key} {s.rates[-1]:,.0f} events/s (p99 {s.p99[-1]:,.0f} ms), "
                        f"service {s.service_us[-1]:,.0f} µs + PostgreSQL {s.pg_us[-1]:,.0f} µs "
                        "per event"
                        for s in sides
                    )
                )
    finally:
        asyncio.run(admin_exec(f'DROP DATABASE IF EXISTS "{template}" (FORCE)'))
    a, b = sides
    lines = [
        f"webhook_ab: base {base} = A vs this checkout = B; {args.passes} passes ABBA, "
        f"{args.orders - args.warm} measured deliveries each, -c{args.connections}; "
        f"{(time.monotonic() - started) / 60:.1f} min"
    ]
    for s in sides:
        lines.append(
            f"- {s.key}: {mean(s.rates):,.0f} events/s ({spread(s.rates)}); service CPU "
            f"{mean(s.service_us):,.0f} µs/event ({spread(s.service_us)}); PostgreSQL "
            f"{mean(s.pg_us):,.0f} µs/event ({spread(s.pg_us)}); p99 {spread(s.p99)} ms"
        )
    per_pass = [x / y for x, y in zip(b.rates, a.rates, strict=True) if y]
    lines.append(
        f"- B / A: throughput {sum(b.rates) / sum(a.rates):.2f}x (passes "
        f"{min(per_pass):.2f}-{max(per_pass):.2f}x), service CPU "
        f"{sum(b.service_us) / sum(a.service_us):.2f}x, PostgreSQL "
        f"{sum(b.pg_us) / sum(a.pg_us):.2f}x"
    )
    if a.bad or b.bad:
        lines.append(f"- failures: A {a.bad}, B {b.bad}")
        failed = True
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

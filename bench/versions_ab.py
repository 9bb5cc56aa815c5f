"""`python -m bench.versions_ab --base <dir>` (`make bench-ab BASE=<dir>`): the usage debit
(`POST /v1/internal/usage`, 1 worker, 1,000 wallets, wrk as `make bench` drives it) of this
checkout against another checkout's (the base: e.g. the code before credit lots, a worktree of
8200cc9 with its own `make install`), interleaved in one run so the machine's drift weighs on
every scenario alike.

Four scenarios, each on its own database and server process, all started once:

- Y: the raw-asyncpg yardstick (bench/yardstick.py), as `make bench`'s ratios divide by;
- A: the base checkout's service, its database migrated and funded by the base's own
  `bench.run.prepare_service_database` (one balance per wallet);
- B1: this checkout's service, each wallet funded with one never-expiring paid lot;
- B3: this checkout's service, each wallet with three live lots (`python -m bench --lots 3`:
  a grant expiring in 30 days, a top-up expiring in a year and the paid lot).

Each pass measures the four, in the order Y A B1 B3, the next pass in the reverse order (ABBA),
`--passes` short passes (a warm-up before each measurement of the first two only). Prints each
pass's req/s with its ratio to that pass's yardstick, then each scenario's ratio to the
yardstick and the ratios B1÷A and B3÷A (of the throughputs summed over the passes, and each
pass's range). The four servers keep their pools open through the run (some 50 connections
of the PostgreSQL server). Runs `ledger-verify` on B1's and B3's databases at the end; exits 1
when it fails or any request got a non-2xx."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.pgstats import BackendCpu
from bench.run import (
    ADMIN_DSN,
    WALLETS,
    drain,
    dsn,
    prepare_service_database,
    service_env,
    sqlalchemy_url,
    stripe_peer,
)
from bench.server import ROOT, Uvicorn, production_command, yardstick_command
from bench.wrk import Load, ensure_wrk, run_wrk

FUNDS_MICROS = 10**12


def log(message: str) -> None:
    print(f"versions_ab: {message}", file=sys.stderr, flush=True)


@dataclass
class Scenario:
    key: str
    label: str
    database: str
    server: Uvicorn | None = None
    token: str = "-"
    path: str = "/v1/internal/usage"
    rates: list[float] = field(default_factory=list)
    errors: int = 0
    requests: int = 0
    pg_cpu_seconds: float = 0.0
    """PostgreSQL CPU of the scenario's backends over its measured runs (bench/pgstats.py)."""


def base_token(base: Path, url: str, lots: int = 1) -> str:
    """Migrate and fund the base's database with the base's own code (`lots` credit lots per
    wallet); its service token."""
    program = (
        "import asyncio, sys\n"
        "from bench.run import prepare_service_database\n"
        "print('TOKEN', asyncio.run(prepare_service_database(sys.argv[1], int(sys.argv[2]))))\n"
    )
    done = subprocess.run(
        [str(base / ".venv" / "bin" / "python"), "-c", program, url, str(lots)],
        cwd=base,
        capture_output=True,
        text=True,
        check=True,
    )
    return next(x for x in done.stdout.splitlines() if x.startswith("TOKEN ")).split()[1]


async def create(names: list[str]) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        for name in names:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop(names: list[str]) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def admin(step: Callable[[], Coroutine[Any, Any, Any]], attempts: int = 40) -> Any:
    """Run one of the harness's own short database steps, again while the shared server has no
    connection slot free (the four servers hold their pools open through the run)."""
    for _ in range(attempts - 1):
        try:
            return asyncio.run(step())
        except asyncpg.TooManyConnectionsError:
            time.sleep(0.5)
    return asyncio.run(step())


def measure(scenario: Scenario, args: argparse.Namespace, warmup: float) -> Load:
    assert scenario.server is not None
    prefix = secrets.token_hex(4)
    common = {"threads": args.threads, "connections": args.connections}
    extra = [scenario.path]
    if warmup > 0:
        run_wrk(
            scenario.server.url,
            "usage",
            [scenario.token, prefix + "w", str(WALLETS), *extra],
            seconds=warmup,
            **common,
        )
    cpu = BackendCpu(ADMIN_DSN, [scenario.database])
    admin(cpu.start)
    load = run_wrk(
        scenario.server.url,
        "usage",
        [scenario.token, prefix, str(WALLETS), *extra],
        seconds=args.seconds,
        **common,
    )
    admin(cpu.stop)
    scenario.pg_cpu_seconds += cpu.seconds or 0.0
    scenario.requests += load.requests
    admin(lambda: drain([scenario.database]))
    return load


def ledger_verify(url: str, peer_url: str) -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "ledger-verify"],
        cwd=ROOT,
        env=os.environ | service_env(url, peer_url),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        log(f"ledger-verify FAILED on {url}:\n{done.stdout}{done.stderr}")
    return done.returncode == 0


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.versions_ab", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--base", type=Path, required=True, help="the base checkout (installed)")
    parser.add_argument("--seconds", type=float, default=2, help="measured load per scenario")
    parser.add_argument(
        "--warmup", type=float, default=3, help="warm-up load per scenario, first two passes"
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=16,
        help="passes (ABBA: an even number); short slices, many of them, so that the shared "
        "machine's drift (load of its neighbours) falls on every scenario alike",
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    base = args.base.resolve()
    if not (base / ".venv" / "bin" / "python").exists():
        parser.error(f"{base} has no .venv: run `make install` there")

    from bench.yardstick import prepare

    started = time.monotonic()
    ensure_wrk()
    name = f"billing_vab_{os.getpid()}_{secrets.token_hex(3)}"
    scenarios = [
        Scenario("Y", "yardstick (raw asyncpg)", f"{name}_yardstick", path="/debit"),
        Scenario("A", f"base {base.name}", f"{name}_base"),
        Scenario("B1", "this, 1 lot", f"{name}_l1"),
        Scenario("B3", "this, 3 lots", f"{name}_l3"),
    ]
    by = {s.key: s for s in scenarios}
    databases = [s.database for s in scenarios]
    failed = False
    asyncio.run(create(databases))
    try:
        log(f"preparing {', '.join(databases)} ...")
        asyncio.run(prepare(dsn(by["Y"].database), WALLETS, FUNDS_MICROS))
        by["A"].token = base_token(base, sqlalchemy_url(dsn(by["A"].database)))
        for key, lots in (("B1", 1), ("B3", 3)):
            url = sqlalchemy_url(dsn(by[key].database))
            by[key].token = asyncio.run(prepare_service_database(url, lots))
        with stripe_peer() as peer_url:
            base_command = production_command(base / "Dockerfile")
            base_command[0] = str(base / ".venv" / "bin" / "python")
            by["Y"].server = Uvicorn(
                "yardstick",
                yardstick_command("bench.yardstick:app_factory"),
                {"BENCH_YARDSTICK_DSN": dsn(by["Y"].database)},
            )
            by["A"].server = Uvicorn(
                "base",
                base_command,
                service_env(sqlalchemy_url(dsn(by["A"].database)), peer_url),
                cwd=base,
            )
            for key in ("B1", "B3"):
                by[key].server = Uvicorn(
                    key,
                    production_command(),
                    service_env(sqlalchemy_url(dsn(by[key].database)), peer_url),
                )
            try:
                for s in scenarios:
                    assert s.server is not None
                    s.server.start()
                for number in range(args.passes):
                    order = scenarios if number % 2 == 0 else scenarios[::-1]
                    for s in order:
                        # Each server warms up once, in the first two passes (its caches,
                        # prepared statements, the store's per-wallet hint stay warm).
                        load = measure(s, args, args.warmup if number < 2 else 0)
                        s.rates.append(load.rate)
                        s.errors += load.non2xx + load.bad + load.socket_error_count
                    yard = by["Y"].rates[-1]
                    log(
                        f"pass {number + 1} ({' '.join(s.key for s in order)}): "
                        + ", ".join(
                            f"{s.key} {s.rates[-1]:,.0f} req/s ({s.rates[-1] / yard:.2f}x Y)"
                            for s in scenarios
                        )
                    )
                for key in ("B1", "B3"):
                    url = sqlalchemy_url(dsn(by[key].database))
                    failed |= not ledger_verify(url, peer_url)
            finally:
                for s in scenarios:
                    if s.server is not None:
                        s.server.close()
    finally:
        asyncio.run(drop(databases))

    y, a = by["Y"], by["A"]
    lines = [
        f"versions_ab: base {base} ({git_head(base)}) vs this checkout ({git_head(ROOT)}); "
        f"{args.passes} passes ABBA, {args.seconds:g} s each (warm-up {args.warmup:g} s in the "
        "first two), "
        f"wrk -t{args.threads} -c{args.connections}, 1 worker, {WALLETS:,} wallets; "
        f"{(time.monotonic() - started) / 60:.1f} min",
        "",
        "| pass | " + " | ".join(f"{s.key}: {s.label}" for s in scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    for i in range(args.passes):
        cells = [f"{s.rates[i]:,.0f} ({s.rates[i] / y.rates[i]:.2f}x)" for s in scenarios]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines.append("")
    for s in scenarios[1:]:
        lines.append(
            f"- {s.key} / Y: {sum(s.rates) / sum(y.rates):.3f}x (passes "
            f"{spread([r / q for r, q in zip(s.rates, y.rates, strict=True)])})"
        )
    for key, goal in (("B1", 0.95), ("B3", 0.8)):
        s = by[key]
        ratio = sum(s.rates) / sum(a.rates)
        per_pass = [r / q for r, q in zip(s.rates, a.rates, strict=True)]
        lines.append(
            f"- {key} / A: {ratio:.3f}x (passes {spread(per_pass)}); target >= {goal}: "
            f"{'met' if ratio >= goal else 'NOT met'}"
        )
    lines.append(
        "- PostgreSQL CPU per request (its backends' user + system time over the measured "
        "runs): "
        + ", ".join(
            f"{x.key} {x.pg_cpu_seconds / x.requests * 1e6:,.0f} µs"
            for x in scenarios
            if x.requests
        )
    )
    errors = {s.key: s.errors for s in scenarios if s.errors}
    if errors:
        lines.append(f"- errors (socket + non-2xx + bad): {errors}")
        failed = True
    print("\n".join(lines))
    return 1 if failed else 0


def git_head(checkout: Path) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m bench.key_limit_ab --base <dir>`: what a key's spend limit costs the usage debit
(`make bench`'s "key-limit ABBA" row: debits carrying `bench-key`, whose limit every wallet has,
÷ plain debits), in this checkout and in another one (the base: a worktree of main with its own
`make install`), interleaved in one run so the machine's drift weighs on both alike.

Two servers (1 worker each, as `make bench` runs the row), each on its own database funded by its
own checkout's `bench.run.prepare_service_database` (`--lots`), both started once. Each pass
measures four scenarios, A (the base) plain and with the key, B (this checkout) plain and with
the key, in the order Ap Ak Bp Bk, the next pass in the reverse order (ABBA), `--passes` short
slices of wrk as `make bench` drives it. Prints each pass's req/s, then for each checkout the
ratio Σ with the key ÷ Σ plain (the row's figure; and each pass's), B's rate ÷ A's, and per
request: PostgreSQL CPU (its backends' user + system time, bench/pgstats.py), the service's own
CPU (its process tree), and the share of debits that went in a combined batch (the service's
`billing_usage_debits_combined_total`). Runs `ledger-verify` on both databases at the end;
exits 1 when it fails or any request got a non-2xx."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.pgstats import TICK, BackendCpu
from bench.run import (
    ADMIN_DSN,
    LIMITED_KEY,
    WALLETS,
    drain,
    dsn,
    prepare_service_database,
    process_tree_ticks,
    service_env,
    sqlalchemy_url,
    stripe_peer,
)
from bench.server import ROOT, Uvicorn, production_command
from bench.versions_ab import admin, base_token, create, drop, git_head, ledger_verify
from bench.wrk import ensure_wrk, run_wrk

METRICS_TOKEN = "key-limit-ab-metrics"
_COMBINED = re.compile(r"^billing_usage_debits_combined_total (\S+)$", re.MULTILINE)


def log(message: str) -> None:
    print(f"key_limit_ab: {message}", file=sys.stderr, flush=True)


@dataclass
class Side:
    key: str
    label: str
    checkout: Path
    database: str
    server: Uvicorn | None = None
    token: str = "-"


@dataclass
class Scenario:
    side: Side
    keyed: bool
    rates: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    pg_seconds: float = 0.0
    service_seconds: float = 0.0
    combined: float = 0.0

    @property
    def name(self) -> str:
        return self.side.key + ("k" if self.keyed else "p")


def combined_so_far(server: Uvicorn) -> float:
    request = urllib.request.Request(
        server.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        found = _COMBINED.search(answer.read().decode())
    return float(found.group(1)) if found else 0.0


def measure(scenario: Scenario, args: argparse.Namespace, warmup: float) -> None:
    server = scenario.side.server
    assert server is not None
    assert server.proc is not None
    prefix = secrets.token_hex(4)
    extra = ["/v1/internal/usage", *([LIMITED_KEY] if scenario.keyed else [])]
    script_args = [scenario.side.token, prefix, str(WALLETS), *extra]
    common = {"threads": args.threads, "connections": args.connections}
    if warmup > 0:
        run_wrk(
            server.url,
            "usage",
            [script_args[0], prefix + "w", *script_args[2:]],
            seconds=warmup,
            **common,
        )
    cpu = BackendCpu(ADMIN_DSN, [scenario.side.database])
    admin(cpu.start)
    combined = combined_so_far(server)
    ticks = process_tree_ticks(server.proc.pid)
    load = run_wrk(server.url, "usage", script_args, seconds=args.seconds, **common)
    scenario.service_seconds += (process_tree_ticks(server.proc.pid) - ticks) * TICK
    scenario.combined += combined_so_far(server) - combined
    admin(cpu.stop)
    scenario.pg_seconds += cpu.seconds or 0.0
    scenario.requests += load.requests
    scenario.rates.append(load.rate)
    scenario.errors += load.non2xx + load.bad + load.socket_error_count
    admin(lambda: drain([scenario.side.database]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.key_limit_ab", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--base", type=Path, required=True, help="the base checkout (installed)")
    parser.add_argument("--seconds", type=float, default=3, help="measured load per scenario")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up, first two passes")
    parser.add_argument("--passes", type=int, default=8, help="passes (ABBA: an even number)")
    parser.add_argument("--lots", type=int, choices=(1, 3), default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    base = args.base.resolve()
    if not (base / ".venv" / "bin" / "python").exists():
        parser.error(f"{base} has no .venv: run `make install` there")

    started = time.monotonic()
    ensure_wrk()
    name = f"billing_klab_{os.getpid()}_{secrets.token_hex(3)}"
    sides = [
        Side("A", f"base {base.name} ({git_head(base)})", base, f"{name}_a"),
        Side("B", f"this ({git_head(ROOT)})", ROOT, f"{name}_b"),
    ]
    a, b = sides
    scenarios = [Scenario(side, keyed) for side in sides for keyed in (False, True)]
    databases = [s.database for s in sides]
    failed = False
    asyncio.run(create(databases))
    try:
        log(f"preparing {', '.join(databases)} ({args.lots} lot(s) per wallet) ...")
        a.token = base_token(base, sqlalchemy_url(dsn(a.database)), args.lots)
        b.token = asyncio.run(prepare_service_database(sqlalchemy_url(dsn(b.database)), args.lots))
        with stripe_peer() as peer_url:
            for side in sides:
                command = production_command(side.checkout / "Dockerfile")
                command[0] = str(side.checkout / ".venv" / "bin" / "python")
                env = service_env(sqlalchemy_url(dsn(side.database)), peer_url)
                env["BILLING_METRICS_TOKEN"] = METRICS_TOKEN
                side.server = Uvicorn(side.key, command, env, cwd=side.checkout)
            try:
                for side in sides:
                    assert side.server is not None
                    side.server.start()
                for number in range(args.passes):
                    order = scenarios if number % 2 == 0 else scenarios[::-1]
                    for s in order:
                        measure(s, args, args.warmup if number < 2 else 0)
                    log(
                        f"pass {number + 1} ({' '.join(s.name for s in order)}): "
                        + ", ".join(f"{s.name} {s.rates[-1]:,.0f}" for s in scenarios)
                    )
                for side in sides:
                    failed |= not ledger_verify(sqlalchemy_url(dsn(side.database)), peer_url)
            finally:
                for side in sides:
                    if side.server is not None:
                        side.server.close()
    finally:
        asyncio.run(drop(databases))

    by = {s.name: s for s in scenarios}
    lines = [
        f"key_limit_ab: A = {a.label}, B = {b.label}; {args.passes} passes ABBA, "
        f"{args.seconds:g} s each, wrk -t{args.threads} -c{args.connections}, 1 worker, "
        f"{WALLETS:,} wallets, {args.lots} lot(s) each; "
        f"{(time.monotonic() - started) / 60:.1f} min",
        "",
        "| pass | " + " | ".join(s.name for s in scenarios) + " | A k÷p | B k÷p |",
        "|---|" + "---:|" * (len(scenarios) + 2),
    ]
    for i in range(args.passes):
        cells = [f"{s.rates[i]:,.0f}" for s in scenarios]
        ratios = [by[f"{x}k"].rates[i] / by[f"{x}p"].rates[i] for x in "AB"]
        lines.append(
            f"| {i + 1} | " + " | ".join(cells) + " | " + " | ".join(f"{r:.2f}" for r in ratios)
        )
    lines.append("")
    for x in "AB":
        plain, keyed = by[f"{x}p"], by[f"{x}k"]
        per_pass = [k / p for k, p in zip(keyed.rates, plain.rates, strict=True)]
        pairs = range(0, len(per_pass) - 1, 2)
        met = sum(
            1 for i in pairs if sum(keyed.rates[i : i + 2]) >= 0.9 * sum(plain.rates[i : i + 2])
        )
        lines.append(
            f"- {x}: with the key ÷ plain = {sum(keyed.rates) / sum(plain.rates):.3f}x "
            f"(passes: median {statistics.median(per_pass):.2f}, "
            f"{min(per_pass):.2f}-{max(per_pass):.2f}; ABBA pairs of passes ≥ 0.9x: "
            f"{met}/{len(pairs)})"
        )
    for kind in "pk":
        lines.append(
            f"- B÷A {'with the key' if kind == 'k' else 'plain'}: "
            f"{sum(by['B' + kind].rates) / sum(by['A' + kind].rates):.3f}x"
        )
    lines.append("- per request: PostgreSQL CPU / service CPU / share combined")
    for s in scenarios:
        n = max(1, s.requests)
        lines.append(
            f"  - {s.name}: {s.pg_seconds / n * 1e6:,.0f} µs / {s.service_seconds / n * 1e6:,.0f}"
            f" µs / {s.combined / n:.2f} ({sum(s.rates) / len(s.rates):,.0f} req/s mean)"
        )
    errors = {s.name: s.errors for s in scenarios if s.errors}
    if errors:
        lines.append(f"- errors (socket + non-2xx + bad): {errors}")
        failed = True
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

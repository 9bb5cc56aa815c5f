"""`python -m bench.batch_ab --base <dir>`: the batch of 1,000 events (`POST
/v1/internal/usage/batch`, 1 worker, 1,000 wallets) of this checkout against another
checkout's (the base: a worktree of main with its own `make install`), alternated in one run.

Each pass, for each of the two (the order reversed every other pass: ABBA), measures

- the cost of an event alone: `--batches` batches sent one after the other on one connection,
  the service's CPU (its processes' user + system time, /proc) and PostgreSQL's (its backends',
  bench/pgstats.py) divided by the events: Python against PostgreSQL, with no other load but
  the machine's neighbours';
- the throughput: wrk with `--connections` connections of batches for `--seconds`, as `make
  bench`'s batch row drives it.

Before the first pass each side takes `--fill` seconds of the same load, unmeasured: a batch
costs PostgreSQL more once the tables hold more than a few events per wallet, each event's
usage record and wallet leg then going to an index leaf of its own user's (`pk_usage_records`,
`ix_ledger_entries_account_id_id`: ~2,000 distinct leaves per batch of 1,000 instead of a few
hundred shared ones). Measured alternately on a fresh database and one holding 480,000 events:
25.2 against 30.2 µs of backend CPU per event (six rounds, the grown one dearer in each), the
gap gone with either index dropped. Without the fill the first pass ran on near-empty tables
(one run: 55,704 and 54,253 events/s in pass 1, 26,523 and 29,616 in pass 2) and lifted the
mean above what `make bench`'s batch row (after the batch of 100) measures on the same code.

Prints each pass and the sums' ratios (this ÷ base), then runs `ledger-verify` on both databases;
exits 1 when it fails or a batch did not apply every event."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.pgstats import BackendCpu
from bench.run import (
    ADMIN_DSN,
    WALLETS,
    dsn,
    prepare_service_database,
    service_env,
    sqlalchemy_url,
    stripe_peer,
)
from bench.server import ROOT, Uvicorn, descendants, production_command
from bench.versions_ab import admin, base_token, create, drop, git_head, ledger_verify
from bench.wrk import ensure_wrk, run_wrk

TICK = 1 / os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"batch_ab: {message}", file=sys.stderr, flush=True)


@dataclass
class Side:
    key: str
    database: str
    server: Uvicorn | None = None
    token: str = "-"
    python_us: list[float] = field(default_factory=list)
    pg_us: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    loaded_python_us: list[float] = field(default_factory=list)
    loaded_pg_us: list[float] = field(default_factory=list)
    bad: int = 0


def cpu_ticks(pid: int) -> int:
    """User + system ticks of `pid` and every process below it."""
    total = 0
    for p in (pid, *descendants(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def body(prefix: str, size: int) -> bytes:
    events = ",".join(
        f'{{"user_id":"user-{i % WALLETS}","request_id":"{prefix}-{i}","amount_micros":7000,'
        f'"model":"gpt-4o-mini","input_tokens":1200,"output_tokens":300}}'
        for i in range(size)
    )
    return f'{{"events":[{events}]}}'.encode()


def alone(side: Side, batches: int, size: int) -> None:
    assert side.server is not None
    assert side.server.proc is not None
    prefix = secrets.token_hex(4)
    bodies = [body(f"{prefix}-{b}", size) for b in range(batches)]
    headers = {"Authorization": f"Bearer {side.token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=side.server.url, headers=headers, timeout=300) as http:
        http.post("/v1/internal/usage/batch", content=body(prefix + "w", size))
        cpu = BackendCpu(ADMIN_DSN, [side.database])
        admin(cpu.start)
        ticks = cpu_ticks(side.server.proc.pid)
        for b in bodies:
            answer = http.post("/v1/internal/usage/batch", content=b)
            if answer.status_code != 200 or answer.json()["failed"] != 0:
                side.bad += 1
        ticks = cpu_ticks(side.server.proc.pid) - ticks
        admin(cpu.stop)
    events = batches * size
    side.python_us.append(ticks * TICK / events * 1e6)
    side.pg_us.append((cpu.seconds or 0.0) / events * 1e6)


def loaded(side: Side, seconds: float, connections: int, size: int) -> None:
    assert side.server is not None
    assert side.server.proc is not None
    cpu = BackendCpu(ADMIN_DSN, [side.database])
    admin(cpu.start)
    ticks = cpu_ticks(side.server.proc.pid)
    load = run_wrk(
        side.server.url,
        "batch",
        [side.token, secrets.token_hex(4), str(WALLETS), str(size)],
        seconds=seconds,
        threads=min(2, connections),
        connections=connections,
        timeout_seconds=60,
    )
    ticks = cpu_ticks(side.server.proc.pid) - ticks
    admin(cpu.stop)
    # Per event applied: the work of batches still in flight when wrk stops counts too (an
    # overestimate by at most `connections` batches).
    events = max(load.units, 1)
    side.loaded_python_us.append(ticks * TICK / events * 1e6)
    side.loaded_pg_us.append((cpu.seconds or 0.0) / events * 1e6)
    side.rates.append(load.units / load.seconds if load.seconds else 0.0)
    side.bad += load.non2xx + load.bad + load.socket_error_count


def fill(side: Side, seconds: float, connections: int, size: int) -> None:
    """Unmeasured load, so that the passes run on tables already holding events (see above)."""
    assert side.server is not None
    load = run_wrk(
        side.server.url,
        "batch",
        [side.token, secrets.token_hex(4), str(WALLETS), str(size)],
        seconds=seconds,
        threads=min(2, connections),
        connections=connections,
        timeout_seconds=60,
    )
    side.bad += load.non2xx + load.bad + load.socket_error_count


def spread(values: list[float]) -> str:
    return f"{min(values):,.1f}-{max(values):,.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.batch_ab", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--base", type=Path, required=True, help="the base checkout (installed)")
    parser.add_argument("--passes", type=int, default=4, help="ABBA: an even number")
    parser.add_argument("--batches", type=int, default=10, help="batches sent alone per pass")
    parser.add_argument("--seconds", type=float, default=10, help="wrk load per pass")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument(
        "--fill",
        type=float,
        default=10,
        help="seconds of unmeasured load per side before the first pass (0: none)",
    )
    parser.add_argument(
        "--lots",
        type=int,
        default=1,
        choices=(1, 3),
        help="credit lots per wallet (bench.run.prepare_service_database)",
    )
    args = parser.parse_args(argv)
    base = args.base.resolve()
    if not (base / ".venv" / "bin" / "python").exists():
        parser.error(f"{base} has no .venv: run `make install` there")
    started = time.monotonic()
    ensure_wrk()
    name = f"billing_bab_{os.getpid()}_{secrets.token_hex(3)}"
    sides = [Side("A", f"{name}_base"), Side("B", f"{name}_this")]
    a, b = sides
    failed = False
    asyncio.run(create([s.database for s in sides]))
    try:
        log("preparing the databases ...")
        a.token = base_token(base, sqlalchemy_url(dsn(a.database)), args.lots)
        b.token = asyncio.run(prepare_service_database(sqlalchemy_url(dsn(b.database)), args.lots))
        with stripe_peer() as peer_url:
            base_command = production_command(base / "Dockerfile")
            base_command[0] = str(base / ".venv" / "bin" / "python")
            a.server = Uvicorn(
                "base",
                base_command,
                service_env(sqlalchemy_url(dsn(a.database)), peer_url),
                cwd=base,
            )
            b.server = Uvicorn(
                "this", production_command(), service_env(sqlalchemy_url(dsn(b.database)), peer_url)
            )
            try:
                for s in sides:
                    assert s.server is not None
                    s.server.start()
                if args.fill > 0:
                    log(f"filling each database with {args.fill:g} s of load ...")
                    for s in sides:
                        fill(s, args.fill, args.connections, args.size)
                for number in range(args.passes):
                    order = sides if number % 2 == 0 else sides[::-1]
                    for s in order:
                        alone(s, args.batches, args.size)
                        loaded(s, args.seconds, args.connections, args.size)
                    log(
                        f"pass {number + 1} ({' '.join(s.key for s in order)}): "
                        + "; ".join(
                            f"{s.key} {s.rates[-1]:,.0f} events/s, alone {s.python_us[-1]:.1f} "
                            f"µs Python + {s.pg_us[-1]:.1f} µs PostgreSQL per event, under "
                            f"load {s.loaded_python_us[-1]:.1f} + {s.loaded_pg_us[-1]:.1f} µs"
                            for s in sides
                        )
                    )
                for s in sides:
                    failed |= not ledger_verify(sqlalchemy_url(dsn(s.database)), peer_url)
            finally:
                for s in sides:
                    if s.server is not None:
                        s.server.close()
    finally:
        asyncio.run(drop([s.database for s in sides]))
    lines = [
        f"batch_ab: base {base} ({git_head(base)}) = A vs this checkout ({git_head(ROOT)}) = B; "
        f"{args.passes} passes ABBA after {args.fill:g} s of fill each; batches of {args.size:,}, "
        f"{args.lots} lot(s) per wallet, "
        f"{args.batches} alone and wrk -c{args.connections} {args.seconds:g} s per pass; "
        f"{(time.monotonic() - started) / 60:.1f} min",
    ]
    for s in sides:
        lines.append(
            f"- {s.key}: {sum(s.rates) / len(s.rates):,.0f} events/s (passes {spread(s.rates)}); "
            f"alone per event: Python {sum(s.python_us) / len(s.python_us):.1f} µs "
            f"({spread(s.python_us)}), PostgreSQL {sum(s.pg_us) / len(s.pg_us):.1f} µs "
            f"({spread(s.pg_us)}); under load per event: Python "
            f"{sum(s.loaded_python_us) / len(s.loaded_python_us):.1f} µs "
            f"({spread(s.loaded_python_us)}), PostgreSQL "
            f"{sum(s.loaded_pg_us) / len(s.loaded_pg_us):.1f} µs ({spread(s.loaded_pg_us)})"
        )
    per_pass = [x / y for x, y in zip(b.rates, a.rates, strict=True) if y]
    lines.append(
        f"- B / A: throughput {sum(b.rates) / sum(a.rates):.3f}x (passes {spread(per_pass)}), "
        f"Python per event {sum(b.python_us) / sum(a.python_us):.3f}x, PostgreSQL per event "
        f"{sum(b.pg_us) / sum(a.pg_us):.3f}x; under load Python "
        f"{sum(b.loaded_python_us) / sum(a.loaded_python_us):.3f}x, PostgreSQL "
        f"{sum(b.loaded_pg_us) / sum(a.loaded_pg_us):.3f}x"
    )
    if a.bad or b.bad:
        lines.append(f"- batches not wholly applied or failed: A {a.bad}, B {b.bad}")
        failed = True
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

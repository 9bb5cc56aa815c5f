"""The Python load generator, for the two scenarios wrk cannot drive: a fixed request rate
(open loop, latency measured from each request's scheduled time, as wrk2 does) and a fixed list of
distinct pre-signed webhook deliveries. Runs as its own process on 127.0.0.1 and prints one line
`BENCH_JSON {...}` in the shape bench/wrk.py reads.

    python -m bench.loadgen rate --port P --token svc_…
        --path-template '/v1/internal/accounts/user-{user}/balance' --rate 1000
        [--seconds 10] [--warmup 2] [--connections 32] [--wallets 1000]
    python -m bench.loadgen replay --port P --path /v1/webhooks/stripe --requests FILE
        [--seconds 30] [--connections 32]

A replay file holds one JSON array per line: `[headers, body]` (headers a dict, body a string).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvloop

GRACE = 2.0


class Connection:
    """A minimal HTTP/1.1 keep-alive client: as little client CPU per request as possible, since
    the load generator shares the machine's cores with the service and PostgreSQL."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


def head(method: str, path: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass
class Tally:
    """What one run saw: latencies in seconds, statuses, socket errors by kind."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    socket_errors: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    finished: float = 0.0
    unsent: int = 0

    async def send(self, conn: Connection, head: bytes, body: bytes, since: float) -> None:
        try:
            status, _ = await conn.request(head, body)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            kind = "connect" if conn.writer is None else "read"
            self.socket_errors[kind] += 1
            print(f"loadgen: {type(exc).__name__}: {exc}", file=sys.stderr)
            await conn.close()
            return
        self.statuses[status] += 1
        self.latencies.append(time.perf_counter() - since)

    def report(self, **extra: object) -> dict[str, object]:
        lat = sorted(self.latencies)

        def pct(q: float) -> int:
            return int(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6) if lat else 0

        return {
            "requests": sum(self.statuses.values()),
            "duration_us": int((self.finished - self.started) * 1e6),
            "connect": self.socket_errors["connect"],
            "read": self.socket_errors["read"],
            "write": 0,
            "timeout": 0,
            "non2xx": sum(n for s, n in self.statuses.items() if not 200 <= s < 300),
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "max_us": int(lat[-1] * 1e6) if lat else 0,
            "statuses": {str(s): n for s, n in sorted(self.statuses.items())},
            "unsent": self.unsent,
            **extra,
        }


async def fixed_rate(args: argparse.Namespace) -> dict[str, object]:
    """Open loop: request i is due at start + i/rate whatever happened before; it waits for a free
    connection if every one is busy, and its latency counts from when it was due. Requests still
    unanswered `GRACE` seconds after the last one was due are abandoned and reported as
    `unsent` (a service slower than the rate would otherwise stretch the run without end)."""
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    rng = random.Random(1)

    async def phase(seconds: float) -> Tally:
        tally = Tally()
        connections = [Connection(args.port) for _ in range(args.connections)]
        idle: asyncio.Queue[Connection] = asyncio.Queue()
        for conn in connections:
            idle.put_nowait(conn)

        async def one(due: float) -> None:
            conn = await idle.get()
            try:
                path = args.path_template.format(user=rng.randrange(args.wallets))
                await tally.send(conn, head("GET", path, args.port, headers), b"", due)
            finally:
                idle.put_nowait(conn)

        tasks: list[asyncio.Task[None]] = []
        total = int(seconds * args.rate)
        tally.started = start = time.perf_counter()
        for i in range(total):
            due = start + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        _, late = await asyncio.wait(tasks, timeout=GRACE)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        tally.finished = time.perf_counter()
        tally.unsent = len(late)
        for conn in connections:
            await conn.close()
        return tally

    if args.warmup > 0:
        await phase(args.warmup)
    tally = await phase(args.seconds)
    return tally.report(target_rate=args.rate)


def replay_lines(path: str) -> Iterator[tuple[dict[str, str], bytes]]:
    with open(path) as lines:
        for line in lines:
            headers, body = json.loads(line)
            yield headers, body.encode()


async def replay(args: argparse.Namespace) -> dict[str, object]:
    """Closed loop: send every request of the file once, on `connections` keep-alive
    connections, as fast as the service answers (until the file is done or `seconds` pass)."""
    todo = list(replay_lines(args.requests))
    pending = iter(todo)
    tally = Tally()
    deadline = time.perf_counter() + args.seconds

    taken = 0

    async def worker() -> None:
        nonlocal taken
        conn = Connection(args.port)
        while time.perf_counter() < deadline:
            headers, body = next(pending, (None, b""))
            if headers is None:
                break
            taken += 1
            t0 = time.perf_counter()
            await tally.send(conn, head("POST", args.path, args.port, headers), body, t0)
        await conn.close()

    tally.started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.connections)))
    tally.finished = time.perf_counter()
    return tally.report(units=sum(tally.statuses.values()), offered=len(todo), taken=taken)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    sub = parser.add_subparsers(dest="mode", required=True)
    rate = sub.add_parser("rate")
    rate.add_argument("--path-template", required=True)
    rate.add_argument("--rate", type=float, default=1000)
    rate.add_argument("--warmup", type=float, default=2)
    rate.add_argument("--wallets", type=int, default=1000)
    rate.add_argument("--token")
    played = sub.add_parser("replay")
    played.add_argument("--path", required=True)
    played.add_argument("--requests", required=True)
    for p in (rate, played):
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--seconds", type=float, default=10)
        p.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    run = fixed_rate if args.mode == "rate" else replay
    result = uvloop.run(run(args))
    print("BENCH_JSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

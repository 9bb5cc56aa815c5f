"""wrk (4.1, Debian's `wrk` package) as the load generator: installed on demand, run with one of
the Lua scripts in bench/lua/, its `BENCH_JSON` line parsed into a `Load`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua"


class LoadGeneratorError(RuntimeError):
    """The load generator is missing or did not report."""


@dataclass(frozen=True)
class Load:
    """One measured run of a load generator."""

    requests: int
    seconds: float
    socket_errors: dict[str, int]
    non2xx: int
    p50_ms: float
    p99_ms: float
    mean_ms: float = 0.0
    bad: int = 0
    """Answers with a 2xx status whose body was not what the scenario expects."""
    units: int = 0
    """Scenario units completed (batch events, hold pairs, webhook events), when they differ
    from requests."""
    statuses: dict[str, int] = field(default_factory=dict)
    unsent: int = 0
    """Fixed-rate requests abandoned because the service fell too far behind."""
    taken: int = 0
    """Replayed requests sent (answered or not), from the start of the file."""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def unit_rate(self) -> float:
        return self.units / self.seconds if self.seconds else 0.0

    @property
    def socket_error_count(self) -> int:
        return sum(self.socket_errors.values())

    @classmethod
    def parse(cls, output: str) -> Load:
        line = next((x for x in output.splitlines() if x.startswith("BENCH_JSON ")), None)
        if line is None:
            raise LoadGeneratorError(
                f"no BENCH_JSON line in the load generator's output:\n{output}"
            )
        raw = json.loads(line.removeprefix("BENCH_JSON "))
        return cls(
            requests=int(raw["requests"]),
            seconds=raw["duration_us"] / 1e6,
            socket_errors={k: int(raw[k]) for k in ("connect", "read", "write", "timeout")},
            non2xx=int(raw["non2xx"]),
            p50_ms=raw["p50_us"] / 1000,
            p99_ms=raw["p99_us"] / 1000,
            mean_ms=raw.get("mean_us", 0) / 1000,
            bad=int(raw.get("bad", 0)),
            units=int(raw.get("units", 0)),
            statuses=raw.get("statuses", {}),
            unsent=int(raw.get("unsent", 0)),
            taken=int(raw.get("taken", 0)),
        )


def ensure_wrk() -> str:
    """The wrk binary; installed with apt-get when missing and we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise LoadGeneratorError(
            "wrk is not installed and this is not root: install it with `apt-get install -y wrk` "
            "(Debian/Ubuntu) or put a wrk 4.x binary on PATH"
        )
    print("bench: installing wrk with apt-get ...", file=sys.stderr)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    found = shutil.which("wrk")
    if not found:
        raise LoadGeneratorError("apt-get install wrk did not put wrk on PATH")
    return found


def run_wrk(
    url: str,
    script: str,
    script_args: list[str],
    *,
    seconds: float,
    threads: int,
    connections: int,
    timeout_seconds: float = 10,
) -> Load:
    """`wrk -t -c -d --latency -s bench/lua/<script>.lua <url> -- <args>`, parsed."""
    command = [
        ensure_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_seconds:g}s",
        "-s",
        str(LUA / f"{script}.lua"),
        url,
        "--",
        *script_args,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise LoadGeneratorError(f"wrk exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return Load.parse(done.stdout)

"""`python -m testing.fuzz` (`make fuzz`): schemathesis against the served app as every role.

Exits 1 when any role found a failure that is not a known finding owned elsewhere
(`harness.KNOWN_FINDINGS`); the figures per role are printed either way, and the full output and
JSON report of each role are in `--report-dir`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.logs import configure_logging
from testing.fuzz.harness import KNOWN_FINDINGS, ROLES, fuzz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testing.fuzz", description=__doc__)
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--roles", default=",".join(ROLES))
    parser.add_argument("--report-dir", type=Path, default=Path(".fuzz"))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--phases", default=None, help="schemathesis phases (default: all)")
    args = parser.parse_args(argv)
    configure_logging("WARNING", json=True)
    results = fuzz(
        max_examples=args.max_examples,
        roles=tuple(args.roles.split(",")),
        report_dir=args.report_dir,
        seed=args.seed,
        phases=args.phases,
    )
    print(f"schemathesis --checks all, {args.max_examples} examples per operation and phase:")
    failed = False
    for result in results:
        print("  " + result.line())
        for code, operation in result.unexpected:
            failed = True
            print(f"    FAIL {code} {operation} (see {args.report_dir}/{result.role}.txt)")
        for code, operation in result.known:
            print(f"    known {code} {operation}: {KNOWN_FINDINGS[(code, operation)]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

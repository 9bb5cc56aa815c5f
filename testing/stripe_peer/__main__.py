"""`python -m testing.stripe_peer [--port N] [--webhook-url URL] [--webhook-secret whsec_…]`

Runs the Stripe peer on 127.0.0.1 (port 0 picks a free one). The first line on stdout is
`STRIPE_PEER_READY http://127.0.0.1:<port>`; logs go to stderr. With `--webhook-secret` every event
is signed with that secret and, with `--webhook-url`, POSTed there (retried a few times), so a
running service receives webhooks as it would from Stripe. Stops on SIGINT/SIGTERM, or when
`--parent-pid` exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testing.stripe_peer", description=__doc__)
    parser.add_argument("--port", type=int, default=12111, help="0 picks a free port")
    parser.add_argument("--webhook-url", help="POST every event here (e.g. .../v1/webhooks/stripe)")
    parser.add_argument("--webhook-secret", help="whsec_… used to sign events")
    parser.add_argument("--public-url", help="base of checkout and receipt URLs (default: own URL)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.webhook_url and not args.webhook_secret:
        parser.error("--webhook-url needs --webhook-secret")

    warnings.simplefilter("ignore", DeprecationWarning)  # localstripe and aiohttp internals
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s stripe-peer %(levelname)s %(message)s",
    )
    from testing.stripe_peer.server import serve

    asyncio.run(
        serve(
            port=args.port,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
            parent_pid=args.parent_pid,
            public_url=args.public_url,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

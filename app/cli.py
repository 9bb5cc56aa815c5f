"""`torouter-billing`: serve, migrate, tokens, openapi, and operator commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.config import Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
OPENAPI_PATH = ROOT / "openapi.json"

Command = Callable[[argparse.Namespace, Settings], int]


def _run(coro: Awaitable[int]) -> int:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _migrate(settings: Settings) -> int:
    from app.db import create_engine
    from app.migrate import upgrade_head

    engine = create_engine(settings)
    try:
        upgrade = await upgrade_head(engine)
    finally:
        await engine.dispose()
    print(upgrade.line(), file=sys.stderr)
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Apply every pending migration."""
    return _run(_migrate(settings))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Migrate (unless --no-migrate), then serve with uvicorn; SIGTERM drains (app/serve.py)."""
    from app.serve import serve

    if not args.no_migrate:
        cmd_migrate(args, settings)
    return serve(
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    """Mint a portal JWT for local use."""
    from app.auth.jwt import mint_token

    token = mint_token(
        settings,
        args.user_id,
        email=args.email,
        admin=args.admin,
        ttl=timedelta(seconds=args.ttl),
    )
    print(token)
    return 0


async def _service_token(args: argparse.Namespace, settings: Settings) -> int:
    from app.auth import service_tokens
    from app.db import create_engine, create_session_maker, session_scope

    engine = create_engine(settings)
    try:
        async with session_scope(create_session_maker(engine)) as session:
            if args.action == "create":
                row, token = await service_tokens.create_service_token(
                    session, args.name, args.scopes or service_tokens.SCOPES
                )
                print(
                    f"created {row.id} ({row.name}, scopes: {row.scopes}); "
                    "the token is shown only now:",
                    file=sys.stderr,
                )
                print(token)
            elif args.action == "list":
                for row in await service_tokens.list_service_tokens(session):
                    state = f"revoked {row.revoked_at.isoformat()}" if row.revoked_at else "active"
                    print(
                        f"{row.id}\t{row.name}\t{row.scopes}\t{row.created_at.isoformat()}\t{state}"
                    )
            else:
                if not await service_tokens.revoke_service_token(session, args.token_id):
                    print(f"no active service token {args.token_id}", file=sys.stderr)
                    return 1
                print(f"revoked {args.token_id}", file=sys.stderr)
    finally:
        await engine.dispose()
    return 0


def cmd_service_token(args: argparse.Namespace, settings: Settings) -> int:
    """Create, list or revoke gateway service tokens."""
    return _run(_service_token(args, settings))


async def _ledger_verify(settings: Settings) -> int:
    from app.db import create_engine, create_session_maker, session_scope
    from app.ledger.verify import ledger_totals, verify_ledger

    engine = create_engine(settings)
    try:
        async with session_scope(create_session_maker(engine)) as session:
            totals = await ledger_totals(session)
            print(
                f"verifying {totals.transactions} transactions, {totals.entries} entries, "
                f"{totals.wallets} wallets, {totals.active_holds} active holds ...",
                file=sys.stderr,
            )
            violations = await verify_ledger(session)
    finally:
        await engine.dispose()
    for violation in violations:
        print(violation)
    if violations:
        print(f"ledger verify FAILED: {len(violations)} violation(s)", file=sys.stderr)
        return 1
    print("ledger verify ok: every invariant holds", file=sys.stderr)
    return 0


def cmd_ledger_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Check every ledger invariant; print each violation and exit 1 on any."""
    return _run(_ledger_verify(settings))


async def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from app.db import create_engine, create_session_maker
    from app.jobs.reconcile import run_reconciler
    from app.stripe_gateway import StripeGateway

    min_age = settings.reconcile_min_age_seconds if args.min_age is None else args.min_age
    engine = create_engine(settings)
    stripe = StripeGateway(settings)
    try:
        if not stripe.configured:
            print("Stripe is not configured: nothing to reconcile", file=sys.stderr)
        print(f"reconciling orders pending longer than {min_age:g} s ...", file=sys.stderr)
        summary = await run_reconciler(
            create_session_maker(engine),
            stripe,
            settings,
            min_age_seconds=min_age,
            progress=(lambda line: print(f"  {line}", file=sys.stderr)) if args.verbose else None,
        )
    finally:
        await stripe.close()
        await engine.dispose()
    print(f"reconcile done: {summary.line()}")
    return 1 if summary.errors else 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """Ask Stripe about pending orders and apply what it says; retry unknown refund outcomes."""
    return _run(_reconcile(args, settings))


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document the app serves (which no setting changes, so it is built with
    development settings and needs no environment)."""
    from app.main import create_app

    settings = Settings(_env_file=None, environment="local")
    return create_app(settings).openapi()


def render_openapi() -> str:
    """`openapi.json` as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def cmd_openapi(args: argparse.Namespace, settings: Settings) -> int:
    """Write openapi.json, or with --check fail when it is stale."""
    rendered = render_openapi()
    if args.check:
        current = OPENAPI_PATH.read_text() if OPENAPI_PATH.exists() else ""
        if current != rendered:
            print("openapi.json is stale: run `make openapi`", file=sys.stderr)
            return 1
        print("openapi.json is up to date", file=sys.stderr)
        return 0
    OPENAPI_PATH.write_text(rendered)
    print(f"wrote {OPENAPI_PATH}", file=sys.stderr)
    return 0


COMMANDS: dict[str, Command] = {
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "token": cmd_token,
    "service-token": cmd_service_token,
    "openapi": cmd_openapi,
    "ledger-verify": cmd_ledger_verify,
    "reconcile": cmd_reconcile,
}


def build_parser() -> argparse.ArgumentParser:
    from app.auth.service_tokens import SCOPES

    parser = argparse.ArgumentParser(prog="torouter-billing", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help=cmd_serve.__doc__)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--forwarded-allow-ips", help="default: BILLING_FORWARDED_ALLOW_IPS (127.0.0.1)"
    )
    serve.add_argument("--no-migrate", action="store_true")

    sub.add_parser("migrate", help=cmd_migrate.__doc__)

    token = sub.add_parser("token", help=cmd_token.__doc__)
    token.add_argument("user_id")
    token.add_argument("--email")
    token.add_argument("--admin", action="store_true")
    token.add_argument("--ttl", type=int, default=12 * 3600, help="lifetime in seconds")

    svc = sub.add_parser("service-token", help=cmd_service_token.__doc__)
    svc_sub = svc.add_subparsers(dest="action", required=True)
    create = svc_sub.add_parser("create")
    create.add_argument("name")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        choices=SCOPES,
        help="what the token may call (repeatable): usage (debits, batches), holds (reserve, "
        "capture, release), balance:read; default: all three",
    )
    svc_sub.add_parser("list")
    revoke = svc_sub.add_parser("revoke")
    revoke.add_argument("token_id")

    sub.add_parser("ledger-verify", help=cmd_ledger_verify.__doc__)

    reconcile = sub.add_parser("reconcile", help=cmd_reconcile.__doc__)
    reconcile.add_argument(
        "--min-age", type=float, help="seconds an order must be pending (default: the setting)"
    )
    reconcile.add_argument("-v", "--verbose", action="store_true", help="a line per order")

    openapi = sub.add_parser("openapi", help=cmd_openapi.__doc__)
    openapi.add_argument("--check", action="store_true")
    return parser


def refusals(exc: ValidationError) -> list[str]:
    """One line per refused setting, quoting no value (`Settings` hides the input)."""
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            message = f"BILLING_{str(error['loc'][0]).upper()}: {message}"
        lines.append(" ".join(message.split()))
    return lines


SETTINGS_FREE = {"openapi"}
"""Commands that work without the environment's settings (and so without production secrets)."""


def settings_refusal(exc: ValidationError) -> str:
    """What `main` prints when the settings are refused: `refusals()`, and the hint about the
    environment unless only the database URL was refused."""
    lines = [f"torouter-billing: refused to start: {line}" for line in refusals(exc)]
    if any(error["loc"] != ("database_url",) for error in exc.errors()):
        lines.append(
            "BILLING_ENVIRONMENT defaults to production; "
            "set BILLING_ENVIRONMENT=local for development."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from app.wiring import wire

    wire()  # the commands post to the ledger (the reconciler credits orders) like the service
    if args.command in SETTINGS_FREE:
        settings = Settings(_env_file=None, environment="local")
    else:
        try:
            settings = get_settings()
        except ValidationError as exc:
            print(settings_refusal(exc), file=sys.stderr)
            return 2
    from app.logs import configure_logging

    configure_logging(settings.log_level, json=settings.log_json)
    return COMMANDS[args.command](args, settings)


if __name__ == "__main__":
    raise SystemExit(main())

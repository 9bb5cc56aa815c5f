"""The gateway's debits and holds. The caller's id is the idempotency key: the same id with the
same body answers the original result marked `replayed`, with a different body 409."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.errors import IdempotencyConflict, InsufficientBalance, ValidationFailed
from app.ledger import holds, repository
from app.ledger.holds import HoldResult
from app.ledger.repository import WalletRow
from app.ledger.service import Leg, hash_request, post
from app.models.ledger import LedgerTransaction
from app.usage.schemas import (
    AccountBalanceOut,
    CaptureIn,
    FieldError,
    HoldIn,
    HoldOut,
    ReleaseIn,
    UsageBatchOut,
    UsageBatchResult,
    UsageIn,
    UsageOut,
)


def _check_amount(settings: Settings, amount_micros: int, field: str = "amount_micros") -> None:
    if amount_micros > settings.max_amount_micros:
        raise ValidationFailed(
            f"{field} exceeds the maximum of {settings.max_amount_micros}.",
            errors=[{"field": field, "message": f"must be at most {settings.max_amount_micros}"}],
        )


def _usage_details(
    model: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    metadata: dict[str, Any] | None,
) -> dict[str, Any] | None:
    details = {
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "metadata": metadata,
    }
    return {k: v for k, v in details.items() if v is not None} or None


def _check_replay(original: LedgerTransaction, request_hash: str, what: str) -> None:
    if original.request_hash != request_hash:
        raise IdempotencyConflict(f"{what} was used before with a different request.")


async def record_usage(session: AsyncSession, settings: Settings, event: UsageIn) -> UsageOut:
    """Debit one request's cost from the available balance, once per `request_id`."""
    _check_amount(settings, event.amount_micros)
    request_hash = hash_request(event.model_dump(mode="json", exclude_none=True))
    result = await post(
        session,
        reference=f"usage:{event.request_id}",
        kind="usage",
        legs=[
            Leg.wallet(event.user_id, -event.amount_micros),
            Leg.account("usage", event.amount_micros),
        ],
        user_id=event.user_id,
        description="Usage",
        request_hash=request_hash,
        details=_usage_details(
            event.model, event.input_tokens, event.output_tokens, event.metadata
        ),
    )
    if result.replayed:
        _check_replay(result.transaction, request_hash, f"request_id {event.request_id!r}")
    wallet = result.wallets[event.user_id]
    return UsageOut(
        request_id=event.request_id,
        user_id=event.user_id,
        amount_micros=event.amount_micros,
        transaction_id=result.transaction.id,
        replayed=result.replayed,
        **_wallet_fields(wallet),
    )


async def record_batch(
    session: AsyncSession, settings: Settings, events: list[UsageIn | dict[str, Any]]
) -> UsageBatchOut:
    """Apply each event in its own savepoint, so a refused one leaves the others applied."""
    results: list[UsageBatchResult | None] = [None] * len(events)
    # Wallets are locked until the batch commits; taking them in user-id order (stable, so each
    # user's events keep their order) means two concurrent batches cannot deadlock.
    order = sorted(range(len(events)), key=lambda i: _user_of(events[i]))
    for index in order:
        results[index] = await _apply_event(session, settings, index, events[index])
    done = [r for r in results if r is not None]
    return UsageBatchOut(
        results=done,
        applied=sum(r.status == "applied" for r in done),
        replayed=sum(r.status == "replayed" for r in done),
        failed=sum(r.status not in ("applied", "replayed") for r in done),
    )


def _user_of(event: UsageIn | dict[str, Any]) -> str:
    return event.user_id if isinstance(event, UsageIn) else str(event.get("user_id", ""))


async def _apply_event(
    session: AsyncSession, settings: Settings, index: int, raw: UsageIn | dict[str, Any]
) -> UsageBatchResult:
    raw_id = raw.request_id if isinstance(raw, UsageIn) else raw.get("request_id")
    request_id = raw_id if isinstance(raw_id, str) else None
    try:
        event = raw if isinstance(raw, UsageIn) else UsageIn.model_validate(raw)
        _check_amount(settings, event.amount_micros)
    except ValidationError as exc:
        errors = [
            FieldError(
                field=".".join(str(p) for p in e["loc"]) or "event",
                message=(
                    "unknown field"
                    if e["type"] == "extra_forbidden"
                    else e["msg"].removeprefix("Value error, ")
                ),
            )
            for e in exc.errors()
        ]
        return UsageBatchResult(index=index, request_id=request_id, status="invalid", errors=errors)
    except ValidationFailed as exc:
        return UsageBatchResult(
            index=index,
            request_id=request_id,
            status="invalid",
            detail=exc.detail,
            errors=exc.extra.get("errors"),
        )
    try:
        async with session.begin_nested():
            out = await record_usage(session, settings, event)
    except InsufficientBalance as exc:
        available = exc.extra["available_micros"]
        return UsageBatchResult(
            index=index,
            request_id=event.request_id,
            status="insufficient_balance",
            available_micros=available,
            detail=exc.detail,
        )
    except IdempotencyConflict as exc:
        return UsageBatchResult(
            index=index, request_id=event.request_id, status="conflict", detail=exc.detail
        )
    return UsageBatchResult(
        index=index,
        request_id=event.request_id,
        status="replayed" if out.replayed else "applied",
        transaction_id=out.transaction_id,
        balance_micros=out.balance_micros,
        held_micros=out.held_micros,
        available_micros=out.available_micros,
    )


async def reserve_hold(session: AsyncSession, settings: Settings, body: HoldIn) -> HoldOut:
    """Reserve part of the available balance, once per `hold_id`."""
    _check_amount(settings, body.amount_micros)
    ttl = body.ttl_seconds or settings.hold_default_ttl_seconds
    if ttl > settings.hold_max_ttl_seconds:
        raise ValidationFailed(
            f"ttl_seconds exceeds the maximum of {settings.hold_max_ttl_seconds}.",
            errors=[
                {
                    "field": "ttl_seconds",
                    "message": f"must be at most {settings.hold_max_ttl_seconds}",
                }
            ],
        )
    # The effective TTL is part of the request, so a retry that omits the default still matches.
    canonical = body.model_dump(mode="json", exclude_none=True) | {"ttl_seconds": ttl}
    result = await holds.reserve(
        session,
        user_id=body.user_id,
        hold_id=body.hold_id,
        amount_micros=body.amount_micros,
        ttl_seconds=ttl,
        request_hash=hash_request(canonical),
        details={"metadata": body.metadata} if body.metadata is not None else None,
    )
    return _hold_out(result)


async def capture_hold(
    session: AsyncSession, settings: Settings, hold_id: str, body: CaptureIn
) -> HoldOut:
    """Charge the actual cost of a held request and release the rest of the reservation."""
    _check_amount(settings, body.amount_micros)
    result = await holds.capture(
        session,
        hold_id=hold_id,
        amount_micros=body.amount_micros,
        resolution_hash=hash_request({"capture": body.model_dump(mode="json", exclude_none=True)}),
        details=_usage_details(body.model, body.input_tokens, body.output_tokens, body.metadata),
    )
    return _hold_out(result)


async def release_hold(session: AsyncSession, hold_id: str, body: ReleaseIn | None) -> HoldOut:
    """Give a hold's reservation back."""
    canonical = body.model_dump(mode="json", exclude_none=True) if body else {}
    result = await holds.release(
        session, hold_id=hold_id, resolution_hash=hash_request({"release": canonical})
    )
    return _hold_out(result)


async def account_balance(session: AsyncSession, user_id: str) -> AccountBalanceOut:
    """A user's wallet as it stands."""
    wallet = await repository.get_wallet(session, user_id)
    if wallet is None:
        return AccountBalanceOut(
            user_id=user_id, balance_micros=0, held_micros=0, available_micros=0
        )
    return AccountBalanceOut(user_id=user_id, **_wallet_fields(wallet))


def _wallet_fields(wallet: WalletRow) -> dict[str, int]:
    return {
        "balance_micros": wallet.balance_micros,
        "held_micros": wallet.held_micros,
        "available_micros": wallet.available_micros,
    }


def _hold_out(result: HoldResult) -> HoldOut:
    hold = result.hold
    return HoldOut(
        hold_id=hold.id,
        user_id=hold.user_id,
        status=hold.status,
        amount_micros=hold.amount_micros,
        captured_micros=hold.captured_micros,
        expires_at=hold.expires_at,
        resolved_at=hold.resolved_at,
        replayed=result.replayed,
        **_wallet_fields(result.wallet),
    )

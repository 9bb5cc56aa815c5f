"""The gateway's debits and holds: the rules, over the `UsageStore` (driver-level statements on
an asyncpg pool). The caller's id is the idempotency key: the same id with the
same body answers the original result marked `replayed`, with a different body 409."""

from __future__ import annotations

from typing import Any, cast

from pydantic import ValidationError

from app.config import Settings
from app.errors import (
    IdempotencyConflict,
    InsufficientBalance,
    SpendLimitExceeded,
    ValidationFailed,
)
from app.idempotency import hash_request
from app.ledger.holds import HoldResult
from app.ledger.holds_repository import HoldCapture, HoldRequest
from app.ledger.repository import WalletRow
from app.usage.repository import UsageStore
from app.usage.schemas import (
    AccountBalanceOut,
    BatchStatus,
    CaptureIn,
    FieldError,
    HoldIn,
    HoldOut,
    HoldStatus,
    ReleaseIn,
    UsageBatchOut,
    UsageBatchResult,
    UsageIn,
    UsageOut,
)
from app.usage.store import BatchOutcome, UsageDebit


def _wallet_fields(wallet: WalletRow) -> dict[str, Any]:
    """How every gateway answer reports the wallet after the operation."""
    return {
        "balance_micros": wallet.balance_micros,
        "held_micros": wallet.held_micros,
        "available_micros": wallet.available_micros,
    }


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
    api_key_id: str | None = None,
) -> dict[str, Any] | None:
    details = {
        "api_key_id": api_key_id,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "metadata": metadata,
    }
    return {k: v for k, v in details.items() if v is not None} or None


_NO_WALLET = WalletRow("", "", 0, 0)
"""Before a user's first top-up: zero balance, zero held."""


def _conflict(request_id: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"request_id {request_id!r} was used before with a different request."
    )


def _usage_debit(settings: Settings, event: UsageIn) -> UsageDebit:
    _check_amount(settings, event.amount_micros)
    return UsageDebit(
        user_id=event.user_id,
        request_id=event.request_id,
        amount_micros=event.amount_micros,
        request_hash=hash_request(event.model_dump(mode="json", exclude_none=True)),
        details=_usage_details(
            event.model, event.input_tokens, event.output_tokens, event.metadata, event.api_key_id
        ),
        api_key_id=event.api_key_id,
    )


async def record_usage(store: UsageStore, settings: Settings, event: UsageIn) -> UsageOut:
    """Debit one request's cost from the available balance, once per `request_id`."""
    debit = _usage_debit(settings, event)
    done = await store.debit(debit)
    if done.replayed and done.request_hash != debit.request_hash:
        raise _conflict(event.request_id)
    wallet = done.wallet or _NO_WALLET
    return UsageOut.model_construct(
        request_id=event.request_id,
        user_id=event.user_id,
        amount_micros=event.amount_micros,
        transaction_id=done.transaction_id,
        replayed=done.replayed,
        **_wallet_fields(wallet),
        limit_remaining_micros=done.limit_remaining_micros,
    )


async def record_batch(
    store: UsageStore, settings: Settings, events: list[UsageIn | dict[str, Any]]
) -> UsageBatchOut:
    """Apply each event on its own, as if one by one in user-id order (stable, so each user's
    events keep theirs): a refused event leaves the others applied. Results in input order."""
    results: list[UsageBatchResult | None] = [None] * len(events)
    valid: list[tuple[int, UsageIn, UsageDebit]] = []
    for index, raw in enumerate(events):
        checked = _checked_event(settings, index, raw)
        if isinstance(checked, UsageBatchResult):
            results[index] = checked
        else:
            valid.append((index, *checked))
    # Wallets are locked until the batch commits; taking them in user-id order means two
    # concurrent batches cannot deadlock.
    valid.sort(key=lambda item: item[1].user_id)
    outcomes = await store.debit_batch([debit for _, _, debit in valid]) if valid else []
    for (index, event, debit), outcome in zip(valid, outcomes, strict=True):
        results[index] = _batch_result(index, event, debit, outcome)
    done = [r for r in results if r is not None]
    return UsageBatchOut.model_construct(
        results=done,
        applied=sum(r.status == "applied" for r in done),
        replayed=sum(r.status == "replayed" for r in done),
        failed=sum(r.status not in ("applied", "replayed") for r in done),
    )


def _checked_event(
    settings: Settings, index: int, raw: UsageIn | dict[str, Any]
) -> tuple[UsageIn, UsageDebit] | UsageBatchResult:
    raw_id = raw.request_id if isinstance(raw, UsageIn) else raw.get("request_id")
    request_id = raw_id if isinstance(raw_id, str) else None
    try:
        event = raw if isinstance(raw, UsageIn) else UsageIn.model_validate(raw)
        debit = _usage_debit(settings, event)
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
    return event, debit


def _batch_result(
    index: int, event: UsageIn, debit: UsageDebit, outcome: BatchOutcome
) -> UsageBatchResult:
    if isinstance(outcome, InsufficientBalance):
        available = outcome.extra["available_micros"]
        return _refused(
            index, event, "insufficient_balance", outcome.detail, available_micros=available
        )
    if isinstance(outcome, SpendLimitExceeded):
        extra = outcome.extra
        return _refused(
            index,
            event,
            "spend_limit_exceeded",
            outcome.detail,
            limit_remaining_micros=max(0, extra["limit_micros"] - extra["spent_micros"]),
            scope=extra["scope"],
        )
    if outcome.replayed and outcome.request_hash != debit.request_hash:
        return _refused(index, event, "conflict", _conflict(event.request_id).detail)
    wallet = outcome.wallet or _NO_WALLET
    return UsageBatchResult.model_construct(
        index=index,
        request_id=event.request_id,
        status="replayed" if outcome.replayed else "applied",
        transaction_id=outcome.transaction_id,
        **_wallet_fields(wallet),
        limit_remaining_micros=outcome.limit_remaining_micros,
        scope=None,
        detail=None,
        errors=None,
    )


_NOTHING_APPLIED = dict.fromkeys(
    (
        "transaction_id",
        "balance_micros",
        "held_micros",
        "available_micros",
        "limit_remaining_micros",
        "scope",
        "errors",
    )
)
"""A refused event's result: no transaction and no wallet state, but what the refusal tells."""


def _refused(
    index: int, event: UsageIn, status: BatchStatus, detail: str, **refusal: int | str
) -> UsageBatchResult:
    fields: dict[str, Any] = _NOTHING_APPLIED | refusal
    return UsageBatchResult.model_construct(
        index=index, request_id=event.request_id, status=status, detail=detail, **fields
    )


async def reserve_hold(store: UsageStore, settings: Settings, body: HoldIn) -> HoldOut:
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
    request = HoldRequest(
        user_id=body.user_id,
        hold_id=body.hold_id,
        amount_micros=body.amount_micros,
        ttl_seconds=ttl,
        request_hash=hash_request(canonical),
        details={"metadata": body.metadata} if body.metadata is not None else None,
        api_key_id=body.api_key_id,
    )
    return _hold_out(await store.reserve(request))


async def capture_hold(
    store: UsageStore, settings: Settings, hold_id: str, body: CaptureIn
) -> HoldOut:
    """Charge the actual cost of a held request and release the rest of the reservation."""
    _check_amount(settings, body.amount_micros)
    capture = HoldCapture(
        hold_id=hold_id,
        amount_micros=body.amount_micros,
        resolution_hash=hash_request({"capture": body.model_dump(mode="json", exclude_none=True)}),
        details=_usage_details(body.model, body.input_tokens, body.output_tokens, body.metadata),
        max_hold_multiple=settings.capture_max_hold_multiple,
    )
    return _hold_out(await store.capture(capture))


async def release_hold(store: UsageStore, hold_id: str, body: ReleaseIn | None) -> HoldOut:
    """Give a hold's reservation back."""
    canonical = body.model_dump(mode="json", exclude_none=True) if body else {}
    result = await store.release(
        hold_id=hold_id, resolution_hash=hash_request({"release": canonical})
    )
    return _hold_out(result)


async def account_balance(store: UsageStore, user_id: str) -> AccountBalanceOut:
    """A user's wallet as it stands (zero before their first top-up)."""
    wallet = await store.wallet(user_id)
    wallet = wallet or _NO_WALLET
    return AccountBalanceOut.model_construct(
        user_id=user_id,
        **_wallet_fields(wallet),
    )


def _hold_out(result: HoldResult) -> HoldOut:
    hold = result.hold
    return HoldOut.model_construct(
        hold_id=hold.id,
        user_id=hold.user_id,
        status=cast(HoldStatus, hold.status),
        amount_micros=hold.amount_micros,
        captured_micros=hold.captured_micros,
        expires_at=hold.expires_at,
        resolved_at=hold.resolved_at,
        replayed=result.replayed,
        **_wallet_fields(result.wallet),
        limit_remaining_micros=result.limit_remaining_micros,
    )

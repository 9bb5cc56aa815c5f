"""The gateway's debits and holds: the rules, over the `UsageStore` (driver-level statements on
an asyncpg pool). The caller's id is the idempotency key: the same id with the
same body answers the original result marked `replayed`, with a different body 409."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

from pydantic import ValidationError

from app.config import Settings
from app.errors import (
    BillingError,
    CaptureExceedsHold,
    IdempotencyConflict,
    InvalidStateTransition,
    NotFound,
    ValidationFailed,
)
from app.idempotency import hash_flat_request, hash_request
from app.ledger.holds import HoldResult
from app.ledger.holds_repository import HoldCapture, HoldRequest
from app.ledger.repository import WalletRow
from app.usage.repository import UsageStore
from app.usage.schemas import (
    CaptureIn,
    HoldCaptureItem,
    HoldIn,
    ReleaseIn,
    UsageIn,
    plain_count,
    plain_text,
    plain_token,
)
from app.usage.store import BatchOutcome, Debited, UsageDebit


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
    # Field by field, not a dict filtered by a comprehension: a batch builds a thousand.
    details: dict[str, Any] = {}
    if api_key_id is not None:
        details["api_key_id"] = api_key_id
    if model is not None:
        details["model"] = model
    if input_tokens is not None:
        details["input_tokens"] = input_tokens
    if output_tokens is not None:
        details["output_tokens"] = output_tokens
    if metadata is not None:
        details["metadata"] = metadata
    return details or None


NO_WALLET = WalletRow("", "", 0, 0)
"""Before a user's first top-up: zero balance, zero held (`Debited.wallet` None)."""


def _conflict(request_id: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"request_id {request_id!r} was used before with a different request."
    )


_OPTIONAL_USAGE = ("api_key_id", "model", "input_tokens", "output_tokens")


def _usage_fingerprint(event: UsageIn) -> str:
    """The event's request hash: its JSON body, fields left out when null. Built from the
    fields for the flat event (the same dict `model_dump(mode="json", exclude_none=True)`
    gives, hashed with sorted keys, without the dump's cost); with metadata, by pydantic's dump."""
    if event.metadata is not None:
        return hash_request(event.model_dump(mode="json", exclude_none=True))
    body: dict[str, str | int] = {
        "user_id": event.user_id,
        "request_id": event.request_id,
        "amount_micros": event.amount_micros,
    }
    for name in _OPTIONAL_USAGE:
        value = getattr(event, name)
        if value is not None:
            body[name] = value
    return hash_flat_request(body)


def _usage_debit(settings: Settings, event: UsageIn) -> UsageDebit:
    _check_amount(settings, event.amount_micros)
    return UsageDebit(
        user_id=event.user_id,
        request_id=event.request_id,
        amount_micros=event.amount_micros,
        request_hash=_usage_fingerprint(event),
        details=_usage_details(
            event.model, event.input_tokens, event.output_tokens, event.metadata, event.api_key_id
        ),
        api_key_id=event.api_key_id,
    )


async def record_usage(store: UsageStore, settings: Settings, event: UsageIn) -> Debited:
    """Debit one request's cost from the available balance, once per `request_id` (the
    store's `Debited` as it is: the router renders it with the event)."""
    debit = _usage_debit(settings, event)
    done = await store.debit(debit)
    if done.replayed and done.request_hash != debit.request_hash:
        raise _conflict(event.request_id)
    return done


class Invalid(NamedTuple):
    """A batch event that could not be read: what was wrong with it (`errors`: field and
    message each)."""

    detail: str | None
    errors: list[dict[str, Any]] | None


BatchItem = BatchOutcome | IdempotencyConflict | Invalid
"""What happened to one event of a batch: applied or replayed (`Debited`), refused by the
balance or a spend limit, its `request_id` used before for another body, or unreadable."""


class BatchEvent(NamedTuple):
    """One event's `request_id` (None when it had no readable one) and what happened to it."""

    request_id: str | None
    outcome: BatchItem


async def record_batch(
    store: UsageStore, settings: Settings, events: list[UsageIn | dict[str, Any]]
) -> list[BatchEvent]:
    """Apply each event on its own, as if one by one in user-id order (stable, so each user's
    events keep theirs): a refused event leaves the others applied. Results in input order.
    An event may come as the JSON object sent (`schemas.read_usage_batch`): a plain one
    (`plain_debit`) becomes its debit at once, any other is validated as `UsageIn`."""
    results: list[BatchEvent | None] = [None] * len(events)
    valid: list[tuple[int, str, UsageDebit]] = []
    max_micros = settings.max_amount_micros
    for index, raw in enumerate(events):
        if type(raw) is dict and (debit := plain_debit(raw, max_micros)) is not None:
            valid.append((index, debit.request_id, debit))
            continue
        checked = _checked_event(settings, raw)
        if isinstance(checked, BatchEvent):
            results[index] = checked
        else:
            valid.append((index, checked[0].request_id, checked[1]))
    # Wallets are locked until the batch commits; taking them in user-id order means two
    # concurrent batches cannot deadlock.
    valid.sort(key=lambda item: item[2].user_id)
    outcomes = await store.apply_batch([debit for _, _, debit in valid]) if valid else []
    for (index, request_id, debit), outcome in zip(valid, outcomes, strict=True):
        conflicted = (
            isinstance(outcome, Debited)
            and outcome.replayed
            and outcome.request_hash != debit.request_hash
        )
        results[index] = BatchEvent(request_id, _conflict(request_id) if conflicted else outcome)
    return [r for r in results if r is not None]


_PLAIN_FIELDS = frozenset(
    (
        "user_id",
        "request_id",
        "amount_micros",
        "api_key_id",
        "model",
        "input_tokens",
        "output_tokens",
    )
)


def plain_debit(raw: dict[str, Any], max_micros: int) -> UsageDebit | None:
    """The debit of a batch event sent as `raw` (its JSON object) when validating it as
    `UsageIn` would give it back unchanged, else None (it is then validated, and refused with
    pydantic's own errors if it must be): no metadata, ids that are clean tokens within their
    lengths, a model with no control character and no surrounding whitespace (nothing to
    strip), integers that are ints within their bounds. Its request hash is that of `raw`
    without nulls: what `UsageIn.model_dump(mode="json", exclude_none=True)` would give."""
    if not raw.keys() <= _PLAIN_FIELDS:
        return None
    user_id = raw.get("user_id")
    request_id = raw.get("request_id")
    amount = raw.get("amount_micros")
    if (
        type(amount) is not int
        or not 0 < amount <= max_micros
        or not plain_token(user_id, 255)
        or not plain_token(request_id, 200)
    ):
        return None
    api_key_id = raw.get("api_key_id")
    model = raw.get("model")
    input_tokens = raw.get("input_tokens")
    output_tokens = raw.get("output_tokens")
    if (
        (api_key_id is not None and not plain_token(api_key_id, 200))
        or (model is not None and not plain_text(model, 200))
        or (input_tokens is not None and not plain_count(input_tokens))
        or (output_tokens is not None and not plain_count(output_tokens))
    ):
        return None
    body = raw if None not in raw.values() else {k: v for k, v in raw.items() if v is not None}
    return UsageDebit(  # positional: a thousand per batch
        cast(str, user_id),
        cast(str, request_id),
        amount,
        hash_flat_request(body),
        _usage_details(model, input_tokens, output_tokens, None, api_key_id),
        api_key_id,
    )


def _field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """A batch item's validation errors, a field and a message each."""
    return [
        {
            "field": ".".join(str(p) for p in e["loc"]) or "event",
            "message": (
                "unknown field"
                if e["type"] == "extra_forbidden"
                else e["msg"].removeprefix("Value error, ")
            ),
        }
        for e in exc.errors()
    ]


def _checked_event(
    settings: Settings, raw: UsageIn | dict[str, Any]
) -> tuple[UsageIn, UsageDebit] | BatchEvent:
    raw_id = raw.request_id if isinstance(raw, UsageIn) else raw.get("request_id")
    request_id = raw_id if isinstance(raw_id, str) else None
    try:
        event = raw if isinstance(raw, UsageIn) else UsageIn.model_validate(raw)
        debit = _usage_debit(settings, event)
    except ValidationError as exc:
        return BatchEvent(request_id, Invalid(None, _field_errors(exc)))
    except ValidationFailed as exc:
        return BatchEvent(request_id, Invalid(exc.detail, exc.extra.get("errors")))
    return event, debit


def _reserve_fingerprint(body: HoldIn, ttl: int) -> str:
    """The reserve's request hash: its JSON body without nulls, with the effective TTL (so a
    retry that omits the default still matches). Built from the fields for a reserve without
    metadata (the dict `model_dump(mode="json", exclude_none=True)` gives, as the usage
    event's `_usage_fingerprint`); with metadata, by pydantic's dump."""
    if body.metadata is not None:
        return hash_request(body.model_dump(mode="json", exclude_none=True) | {"ttl_seconds": ttl})
    flat: dict[str, str | int] = {
        "user_id": body.user_id,
        "hold_id": body.hold_id,
        "amount_micros": body.amount_micros,
        "ttl_seconds": ttl,
    }
    if body.api_key_id is not None:
        flat["api_key_id"] = body.api_key_id
    return hash_flat_request(flat)


def _capture_fingerprint(body: CaptureIn) -> str:
    """A capture's resolution hash: `{"capture": body}`, the body's JSON without nulls (and
    without a batch item's `hold_id`), built from the fields as `_reserve_fingerprint`'s."""
    if body.metadata is not None:
        dumped = body.model_dump(mode="json", exclude_none=True, exclude={"hold_id"})
        return hash_request({"capture": dumped})
    flat: dict[str, str | int] = {"amount_micros": body.amount_micros}
    for name in _OPTIONAL_CAPTURE:
        value = getattr(body, name)
        if value is not None:
            flat[name] = value
    return hash_flat_request(flat, within="capture")


_OPTIONAL_CAPTURE = ("model", "input_tokens", "output_tokens")


async def reserve_hold(store: UsageStore, settings: Settings, body: HoldIn) -> HoldResult:
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
    request = HoldRequest(
        user_id=body.user_id,
        hold_id=body.hold_id,
        amount_micros=body.amount_micros,
        ttl_seconds=ttl,
        request_hash=_reserve_fingerprint(body, ttl),
        details={"metadata": body.metadata} if body.metadata is not None else None,
        api_key_id=body.api_key_id,
    )
    return await store.reserve(request)


async def capture_hold(
    store: UsageStore, settings: Settings, hold_id: str, body: CaptureIn
) -> HoldResult:
    """Charge the actual cost of a held request and release the rest of the reservation."""
    return await store.capture(_capture_of(settings, hold_id, body))


class CaptureItem(NamedTuple):
    """One capture of a batch: its `hold_id` (None when it had no readable one) and what
    happened to it: the hold captured or replayed, the refusal its single capture would answer
    (`NotFound`, `IdempotencyConflict`, `InvalidStateTransition`, `CaptureExceedsHold`), or
    unreadable."""

    hold_id: str | None
    outcome: HoldResult | BillingError | Invalid


_REFUSALS = (NotFound, IdempotencyConflict, InvalidStateTransition, CaptureExceedsHold)
"""What a capture alone may answer besides the hold: a batch reports it as the capture's
result. Anything else (an outage's 503) fails the whole request, as it would the single one:
the captures applied before it are replays when the gateway sends the batch again."""


async def capture_holds(
    store: UsageStore, settings: Settings, captures: list[HoldCaptureItem | dict[str, Any]]
) -> list[CaptureItem]:
    """Each capture decided as its `capture_hold` alone would be, one after the other in the
    order sent (a hold named twice: the second is a replay of the first, or a conflict), by the
    store's capture batch (`UsageStore.capture_batch`: one statement for the wallets it can
    decide whole, the others alone). A capture may come as the JSON object sent
    (`schemas.read_capture_batch`): a plain one (`plain_capture`) becomes its `HoldCapture` at
    once, any other is validated as `HoldCaptureItem`. Results in the order sent."""
    results: list[CaptureItem | None] = [None] * len(captures)
    valid: list[tuple[int, HoldCapture]] = []
    max_micros = settings.max_amount_micros
    multiple = settings.capture_max_hold_multiple
    for index, raw in enumerate(captures):
        if type(raw) is dict and (capture := plain_capture(raw, max_micros, multiple)):
            valid.append((index, capture))
            continue
        checked = _checked_capture(settings, raw)
        if isinstance(checked, CaptureItem):
            results[index] = checked
        else:
            valid.append((index, checked))
    outcomes = await store.capture_batch([c for _, c in valid]) if valid else []
    for (index, capture), outcome in zip(valid, outcomes, strict=True):
        if isinstance(outcome, Exception) and not isinstance(outcome, _REFUSALS):
            raise outcome
        results[index] = CaptureItem(capture.hold_id, cast(HoldResult | BillingError, outcome))
    return [r for r in results if r is not None]


_PLAIN_CAPTURE_FIELDS = frozenset(
    ("hold_id", "amount_micros", "model", "input_tokens", "output_tokens")
)


def plain_capture(raw: dict[str, Any], max_micros: int, multiple: float) -> HoldCapture | None:
    """The `HoldCapture` of a batch's capture sent as `raw` (its JSON object) when validating it
    as `HoldCaptureItem` would give it back unchanged (no metadata, a clean `hold_id`, a model
    with nothing to strip, ints within their bounds), else None (it is then validated). Its
    resolution hash is the single capture's: of `raw` without `hold_id` and nulls."""
    if not raw.keys() <= _PLAIN_CAPTURE_FIELDS:
        return None
    hold_id = raw.get("hold_id")
    amount = raw.get("amount_micros")
    model = raw.get("model")
    input_tokens = raw.get("input_tokens")
    output_tokens = raw.get("output_tokens")
    if (
        type(amount) is not int
        or not 0 <= amount <= max_micros
        or not plain_token(hold_id, 200)
        or (model is not None and not plain_text(model, 200))
        or (input_tokens is not None and not plain_count(input_tokens))
        or (output_tokens is not None and not plain_count(output_tokens))
    ):
        return None
    body = {k: v for k, v in raw.items() if v is not None and k != "hold_id"}
    return HoldCapture(
        cast(str, hold_id),
        amount,
        hash_request({"capture": body}),
        _usage_details(model, input_tokens, output_tokens, None),
        multiple,
    )


def _capture_of(settings: Settings, hold_id: str, body: CaptureIn) -> HoldCapture:
    """The store's capture of `body` (the single capture's, or a batch item's), its resolution
    hash that of the single capture's body."""
    _check_amount(settings, body.amount_micros)
    return HoldCapture(
        hold_id=hold_id,
        amount_micros=body.amount_micros,
        resolution_hash=_capture_fingerprint(body),
        details=_usage_details(body.model, body.input_tokens, body.output_tokens, body.metadata),
        max_hold_multiple=settings.capture_max_hold_multiple,
    )


def _checked_capture(
    settings: Settings, raw: HoldCaptureItem | dict[str, Any]
) -> HoldCapture | CaptureItem:
    raw_id = raw.hold_id if isinstance(raw, HoldCaptureItem) else raw.get("hold_id")
    hold_id = raw_id if isinstance(raw_id, str) else None
    try:
        item = raw if isinstance(raw, HoldCaptureItem) else HoldCaptureItem.model_validate(raw)
        return _capture_of(settings, item.hold_id, item)
    except ValidationError as exc:
        return CaptureItem(hold_id, Invalid(None, _field_errors(exc)))
    except ValidationFailed as exc:
        return CaptureItem(hold_id, Invalid(exc.detail, exc.extra.get("errors")))


async def release_hold(store: UsageStore, hold_id: str, body: ReleaseIn | None) -> HoldResult:
    """Give a hold's reservation back."""
    canonical = body.model_dump(mode="json", exclude_none=True) if body else {}
    return await store.release(
        hold_id=hold_id, resolution_hash=hash_request({"release": canonical})
    )


async def account_balance(store: UsageStore, user_id: str) -> WalletRow:
    """A user's wallet as it stands (`NO_WALLET`, zeros, before their first top-up)."""
    return await store.wallet(user_id) or NO_WALLET

"""The gateway's internal API (service token): usage debits, holds, balances."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request, Response, status

from app.auth import GatewayCaller
from app.db import SessionDep
from app.usage import service
from app.usage.schemas import (
    AccountBalanceOut,
    CaptureIn,
    HoldIn,
    HoldOut,
    ReleaseIn,
    UsageBatchIn,
    UsageBatchOut,
    UsageIn,
    UsageOut,
)

router = APIRouter(prefix="/internal", tags=["gateway"])

HoldId = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^\S+$")]
UserIdPath = Annotated[str, Path(min_length=1, max_length=255, pattern=r"^\S+$")]


def _replay(model: type[Any]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "model": model,
            "description": "A replay: the same id with the same body was applied before.",
        }
    }


_INSUFFICIENT: dict[int | str, dict[str, Any]] = {
    402: {"description": "`insufficient_balance`: the problem carries `available_micros`."}
}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "`idempotency_conflict`: the id was used with another body."}
}
_HOLD_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "`idempotency_conflict` (resolved before with another body) or "
        "`invalid_state` (already resolved otherwise: captured, released or expired)."
    },
    404: {"description": "No such hold."},
}


@router.post(
    "/usage",
    summary="Debit a request's usage",
    status_code=status.HTTP_201_CREATED,
    responses={**_replay(UsageOut), **_INSUFFICIENT, **_CONFLICT},
)
async def record_usage(
    request: Request, response: Response, body: UsageIn, caller: GatewayCaller, session: SessionDep
) -> UsageOut:
    """Debit `amount_micros` from the user's available balance, once per `request_id`."""
    out = await service.record_usage(session, request.app.state.settings, body)
    if out.replayed:
        response.status_code = status.HTTP_200_OK
    return out


@router.post("/usage/batch", summary="Debit a batch of usage events")
async def record_usage_batch(
    request: Request, body: UsageBatchIn, caller: GatewayCaller, session: SessionDep
) -> UsageBatchOut:
    """Up to 1000 debits, each applied on its own: `applied`, `replayed`,
    `insufficient_balance`, `conflict` or `invalid` per event, in the order sent."""
    return await service.record_batch(session, request.app.state.settings, body.events)


@router.post(
    "/holds",
    summary="Reserve part of a balance",
    status_code=status.HTTP_201_CREATED,
    responses={**_replay(HoldOut), **_INSUFFICIENT, **_CONFLICT},
)
async def reserve_hold(
    request: Request, response: Response, body: HoldIn, caller: GatewayCaller, session: SessionDep
) -> HoldOut:
    """Hold `amount_micros` of the available balance until capture, release or the TTL."""
    out = await service.reserve_hold(session, request.app.state.settings, body)
    if out.replayed:
        response.status_code = status.HTTP_200_OK
    return out


@router.post("/holds/{hold_id}/capture", summary="Capture a hold", responses=_HOLD_CONFLICT)
async def capture_hold(
    request: Request, hold_id: HoldId, body: CaptureIn, caller: GatewayCaller, session: SessionDep
) -> HoldOut:
    """Charge the actual amount (0, less or more than held: the balance may go negative) and
    release the reservation; a repeat with the same body answers the original, `replayed`."""
    return await service.capture_hold(session, request.app.state.settings, hold_id, body)


@router.post("/holds/{hold_id}/release", summary="Release a hold", responses=_HOLD_CONFLICT)
async def release_hold(
    hold_id: HoldId,
    caller: GatewayCaller,
    session: SessionDep,
    body: Annotated[ReleaseIn | None, Body()] = None,
) -> HoldOut:
    """Give the reservation back without charging; a repeat answers the original, `replayed`."""
    return await service.release_hold(session, hold_id, body)


@router.get("/accounts/{user_id}/balance", summary="Get a user's balance")
async def get_account_balance(
    user_id: UserIdPath, caller: GatewayCaller, session: SessionDep
) -> AccountBalanceOut:
    """The user's balance, held and available amounts in micros (zero without a wallet)."""
    return await service.account_balance(session, user_id)

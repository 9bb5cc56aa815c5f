"""The portal's balance and its transactions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.auth import CurrentUser
from app.db import SessionDep
from app.deps import NowDep
from app.ledger import lots, service
from app.ledger.schemas import (
    BalanceOut,
    CreditFilter,
    CreditOut,
    TransactionKind,
    TransactionOut,
    balance_out,
    credit_out,
    transaction_out,
)
from app.pagination import DEFAULT_LIMIT, MAX_LIMIT, PageRequest
from app.schemas import CleanStr, Page

router = APIRouter(tags=["balance"])

KindFilter = Annotated[
    list[TransactionKind] | None, Query(description="Only these kinds (repeatable).")
]
Cursor = Annotated[CleanStr | None, Query(max_length=200, description="`next_cursor` of a page.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


@router.get("/balance", summary="Get my balance")
async def get_my_balance(user: CurrentUser, session: SessionDep, now: NowDep) -> BalanceOut:
    """The caller's balance, held amount and available amount (credit past its expiry is not
    available), and what expires within 30 days."""
    wallet = await service.wallet_balance(session, user.user_id, now)
    soon, next_expiry_at = await lots.expiring(session, user.user_id, now)
    return balance_out(wallet, soon, next_expiry_at)


@router.get("/credits", summary="List my credits")
async def list_my_credits(
    user: CurrentUser,
    session: SessionDep,
    now: NowDep,
    status: Annotated[
        CreditFilter, Query(description="`active` (can be spent), `expired`, or `all`.")
    ] = "active",
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[CreditOut]:
    """The caller's credit lots, newest first: top-ups, grants, promo codes and adjustments,
    with what is left of each and when it expires."""
    page = PageRequest(cursor, limit)
    credits = await lots.list_credits(session, user.user_id, status, page, now)
    data, next_cursor = credits.render(lambda line: credit_out(line, now))
    return Page[CreditOut](data=data, next_cursor=next_cursor)


@router.get("/balance/transactions", summary="List my balance transactions")
async def list_my_transactions(
    user: CurrentUser,
    session: SessionDep,
    kind: KindFilter = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[TransactionOut]:
    """Every movement of the caller's balance, newest first; usage shows model and tokens, each
    event of a gateway batch (or of debits combined into one) a line of its own."""
    page = PageRequest(cursor, limit)
    lines = await service.list_transactions(session, user.user_id, list(kind or []), page)
    data, next_cursor = lines.render(transaction_out)
    return Page[TransactionOut](data=data, next_cursor=next_cursor)

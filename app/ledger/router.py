"""The portal's balance and its transactions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.auth import CurrentUser
from app.db import SessionDep
from app.deps import NowDep
from app.ledger import service
from app.ledger.schemas import (
    BalanceOut,
    TransactionKind,
    TransactionOut,
    balance_out,
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
    """The caller's balance, held amount and available amount."""
    return balance_out(await service.wallet_balance(session, user.user_id, now))


@router.get("/balance/transactions", summary="List my balance transactions")
async def list_my_transactions(
    user: CurrentUser,
    session: SessionDep,
    kind: KindFilter = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[TransactionOut]:
    """Every movement of the caller's balance, newest first; usage shows model and tokens."""
    page = PageRequest(cursor, limit)
    lines = await service.list_transactions(session, user.user_id, list(kind or []), page)
    data, next_cursor = lines.render(transaction_out)
    return Page[TransactionOut](data=data, next_cursor=next_cursor)

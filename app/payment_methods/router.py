"""The portal's saved cards."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from app.auth import CurrentUser
from app.db import SessionDep
from app.deps import StripeWorkDep
from app.errors import NotFound, PaymentProviderUnavailable, PaymentsNotConfigured
from app.openapi import problem_responses
from app.pagination import DEFAULT_LIMIT, MAX_LIMIT, PageRequest
from app.payment_methods import service
from app.payment_methods.schemas import PaymentMethodOut, payment_method_out
from app.schemas import CleanStr, Page
from app.stripe_gateway import StripeRequestFailed

router = APIRouter(tags=["payment methods"])

PaymentMethodId = Annotated[CleanStr, Path(min_length=1, max_length=255)]


@router.get("/payment-methods", summary="List my saved cards")
async def list_my_payment_methods(
    user: CurrentUser,
    session: SessionDep,
    cursor: Annotated[CleanStr | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[PaymentMethodOut]:
    """The caller's saved cards (saved while paying), newest first."""
    cards = await service.list_payment_methods(session, user.user_id, PageRequest(cursor, limit))
    data, next_cursor = cards.render(payment_method_out)
    return Page[PaymentMethodOut](data=data, next_cursor=next_cursor)


@router.delete(
    "/payment-methods/{payment_method_id}",
    summary="Remove a saved card",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(
        NotFound, StripeRequestFailed, PaymentProviderUnavailable, PaymentsNotConfigured
    ),
)
async def remove_my_payment_method(
    payment_method_id: PaymentMethodId, user: CurrentUser, work: StripeWorkDep
) -> Response:
    """Detach the card at Stripe so it can never be charged again; an auto top-up that used it
    is paused. Another user's card is a 404."""
    await service.remove_payment_method(work.maker, work.stripe, user.user_id, payment_method_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

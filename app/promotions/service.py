"""The rules of given credit: an operator's grant to one user, and promo codes.

A grant is posted once per idempotency key (`grant:<key>`): the same key and body answer the
original lot, another body under the key is a 409. A redemption is one transaction: count it on
the code (a conditional UPDATE that row-locks the code, so exactly `max_redemptions` succeed),
credit the lot, record the (code, user) pair (unique: once per user). Every refusal of a code
the caller may not redeem is one 404 that does not say why, so guessing learns nothing; the
route's rate limit bounds the guesses.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import OperatorPosting, record_admin_action
from app.config import Settings
from app.errors import (
    PromoCodeAlreadyRedeemed,
    PromoCodeExists,
    PromoCodeNotFound,
    ValidationFailed,
)
from app.ids import new_id
from app.ledger import lots
from app.ledger.lots_repository import lot_by_reference
from app.models.ledger import CreditLot, LotSource, Txn
from app.models.promotions import PromoCode
from app.money import parse_amount
from app.notifications.service import remember_email
from app.pagination import PageRequest, Slice, before_id, slice_by_id
from app.promotions import repository
from app.promotions.schemas import GrantIn, PromoCodeIn, normalize_code

ACCOUNT = "promotions"
"""The system account granted credit is posted from (`app.models.ledger.SYSTEM_ACCOUNTS`)."""


def _amount_micros(settings: Settings, amount: str, field: str = "amount") -> int:
    micros = parse_amount(amount)
    if micros > settings.max_amount_micros:
        raise ValidationFailed(
            f"{field} is more than the maximum amount.",
            errors=[{"field": field, "message": f"at most {settings.max_amount_micros} micros"}],
        )
    return micros


async def grant_credit(
    session: AsyncSession,
    settings: Settings,
    now: datetime,
    *,
    actor: str,
    user_id: str,
    body: GrantIn,
) -> lots.Credited:
    """Credit the user a granted lot from the `promotions` account and audit it (first time
    only); for a replay of the same key and body, the original lot."""
    amount_micros = _amount_micros(settings, body.amount)
    reference = f"grant:{body.idempotency_key}"
    operator = OperatorPosting.of(
        actor,
        user_id,
        body,
        {
            "amount_micros": amount_micros,
            "expires_at": body.expires_at.isoformat() if body.expires_at else None,
            "expires_in_days": body.expires_in_days,
            "reason": body.reason,
            "description": body.description,
        },
    )
    expires_at = body.expires_at
    if body.expires_in_days is not None:
        expires_at = now + timedelta(days=body.expires_in_days)
    if (
        expires_at is not None
        and expires_at <= now
        and await lot_by_reference(session, reference) is None
    ):
        raise ValidationFailed(
            "expires_at must be in the future.",
            errors=[{"field": "expires_at", "message": "must be in the future"}],
        )
    credited = await lots.credit(
        session,
        operator.txn(reference, "grant", body.description),
        user_id=user_id,
        amount_micros=amount_micros,
        source=LotSource.GRANT,
        account=ACCOUNT,
        expires_at=expires_at,
    )
    await operator.audit(
        session,
        credited.posting,
        "credit_granted",
        {
            "amount_micros": amount_micros,
            "lot_id": credited.lot.id if credited.lot is not None else None,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return credited


def _same_terms(code: PromoCode, columns: dict[str, object]) -> bool:
    return all(getattr(code, name) == value for name, value in columns.items())


async def create_promo_code(
    session: AsyncSession, settings: Settings, *, actor: str, body: PromoCodeIn
) -> tuple[PromoCode, bool]:
    """Create the code and audit it; `(code, created)`. The same code with the same terms again
    answers the existing one (`created` False); with other terms, 409 `promo_code_exists`."""
    terms: dict[str, object] = {
        "amount_micros": _amount_micros(settings, body.amount),
        "credit_expires_in_days": body.credit_expires_in_days,
        "max_redemptions": body.max_redemptions,
        "redeemable_until": body.redeemable_until,
        "new_users_only": body.new_users_only,
    }
    code = await repository.insert_code(
        session, id=new_id("prc"), code=body.code, created_by=actor, **terms
    )
    if code is None:
        existing = await repository.code_by_name(session, body.code)
        if existing is None or not _same_terms(existing, terms):
            raise PromoCodeExists(f"A promo code {body.code!r} exists with other terms.")
        return existing, False
    await record_admin_action(
        session,
        actor=actor,
        action="promo_code_created",
        subject_type="promo_code",
        subject_id=code.id,
        details={"code": code.code, **{k: _json(v) for k, v in terms.items()}},
    )
    return code, True


def _json(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


async def list_promo_codes(session: AsyncSession, page: PageRequest) -> Slice[PromoCode]:
    """A page of codes with their redemption counts, newest first."""
    rows = await repository.list_codes(session, before_id=before_id(page.cursor), limit=page.limit)
    return slice_by_id(rows, page.limit)


async def redeem(
    session: AsyncSession, now: datetime, *, user_id: str, code: str, email: str | None = None
) -> CreditLot:
    """Redeem `code` for the user: the granted lot it credits. 404 `promo_code_not_found` for
    a code the user may not redeem (unknown, past `redeemable_until`, used up, new users only),
    409 `promo_code_already_redeemed` for the second time. `email` (the caller's token's) is
    remembered as the address the credit's expiry notices go to."""
    name = normalize_code(code)
    promo = await repository.code_by_name(session, name) if name is not None else None
    if promo is None:
        raise PromoCodeNotFound()
    if await repository.has_redeemed(session, promo.id, user_id):
        raise PromoCodeAlreadyRedeemed()
    if not await repository.count_redemption(session, promo.id, now):
        raise PromoCodeNotFound()
    redemption_id = new_id("prr")
    expires_at = (
        now + timedelta(days=promo.credit_expires_in_days)
        if promo.credit_expires_in_days is not None
        else None
    )
    credited = await lots.credit(
        session,
        Txn(
            f"promo_redemption:{redemption_id}",
            "promo_code",
            f"Promo code {promo.code}",
            details={"promo_code_id": promo.id, "code": promo.code},
        ),
        user_id=user_id,
        amount_micros=promo.amount_micros,
        source=LotSource.PROMO_CODE,
        account=ACCOUNT,
        expires_at=expires_at,
    )
    lot = credited.lot
    assert lot is not None
    # After the credit locked the wallet: a concurrent first credit of this user has committed
    # by now, so two new-user codes redeemed at once cannot both pass.
    if promo.new_users_only and await repository.has_other_credit(session, user_id, lot.id):
        raise PromoCodeNotFound()
    if not await repository.insert_redemption(
        session, id=redemption_id, code_id=promo.id, user_id=user_id, lot_id=lot.id, created_at=now
    ):
        raise PromoCodeAlreadyRedeemed()
    await remember_email(session, user_id, email)
    return lot

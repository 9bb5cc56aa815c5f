"""What a saved card's removal tells the domains above it (auto top-up pauses the settings that
charge it), subscribed at start-up (`app.wiring.wire()`): cards know nothing of who uses them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

CardRemoved = Callable[[AsyncSession, str, str], Awaitable[object]]
"""`await hook(session, user_id, payment_method_id)`, in the transaction that marks it removed."""

_ON_CARD_REMOVED: list[CardRemoved] = []


def on_card_removed(hook: CardRemoved) -> None:
    if hook not in _ON_CARD_REMOVED:
        _ON_CARD_REMOVED.append(hook)


async def card_removed(session: AsyncSession, user_id: str, payment_method_id: str) -> None:
    for hook in _ON_CARD_REMOVED:
        await hook(session, user_id, payment_method_id)

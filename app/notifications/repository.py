"""All SQL of the notifications outbox and the users' notification settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Table, and_, bindparam, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.base import utcnow
from app.models.notifications import ChannelStatus, Notification, NotificationSettings
from app.notifications import state

Channel = Literal["email", "webhook"]
CHANNELS: tuple[Channel, ...] = ("email", "webhook")


_NOTIFICATIONS = cast(Table, Notification.__table__)

_INSERT_NOTIFICATION = insert(_NOTIFICATIONS).values(
    {name: bindparam(name) for name in ("id", "user_id", "type", "data", "email")}
)
"""The outbox row of `enqueue()`, built once: the columns not given take their defaults
(created and due now on both channels, pending, no attempt)."""


async def insert_notifications(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Write notifications (`id`, `user_id`, `type`, `data`, `email` each) into the outbox in
    one statement (one execution of the prepared insert for all), in the caller's transaction."""
    if rows:
        await session.execute(_INSERT_NOTIFICATION, rows[0] if len(rows) == 1 else list(rows))


def _columns(channel: Channel) -> tuple[Any, Any, Any, Any, Any]:
    table = Notification.__table__.c
    return (
        table[f"{channel}_status"],
        table[f"{channel}_attempts"],
        table[f"{channel}_next_attempt_at"],
        table[f"{channel}_sent_at"],
        table[f"{channel}_last_error"],
    )


@dataclass(frozen=True, slots=True)
class Claimed:
    """A notification taken for one delivery attempt on one channel."""

    id: str
    user_id: str
    type: str
    data: dict[str, Any]
    created_at: datetime
    attempt: int
    """1 for the first attempt on this channel."""
    email: str | None
    """The user's latest known address (email channel only)."""
    email_enabled: bool


@dataclass(frozen=True, slots=True)
class ClaimedBatch:
    claimed: list[tuple[Channel, Claimed]]
    """The channels taken for an attempt now."""
    exhausted: list[tuple[Channel, str, int]]
    """`(channel, notification id, attempts)` of channels found due with their attempts used
    up (the last one's outcome was never recorded): marked `failed`, not attempted again."""


async def upsert_email(session: AsyncSession, user_id: str, email: str) -> None:
    """Record the user's latest address; a write only when it changed."""
    now = utcnow()
    stmt = insert(NotificationSettings).values(user_id=user_id, email=email, updated_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[NotificationSettings.user_id],
        set_={"email": stmt.excluded.email, "updated_at": now},
        where=NotificationSettings.email.is_distinct_from(stmt.excluded.email),
    )
    await session.execute(stmt)


async def get_settings(session: AsyncSession, user_id: str) -> NotificationSettings | None:
    return await session.get(NotificationSettings, user_id)


async def set_email_enabled(session: AsyncSession, user_id: str, enabled: bool) -> None:
    now = utcnow()
    stmt = insert(NotificationSettings).values(
        user_id=user_id, email_enabled=enabled, updated_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[NotificationSettings.user_id],
        set_={"email_enabled": enabled, "updated_at": now},
    )
    await session.execute(stmt)


async def claim_due(
    session: AsyncSession,
    channels: tuple[Channel, ...],
    *,
    now: datetime,
    lease_until: dict[Channel, datetime],
    limit: int,
    max_attempts: int,
) -> ClaimedBatch:
    """Notifications due on any of `channels`, taken with FOR UPDATE SKIP LOCKED and leased by
    pushing each due channel's `next_attempt_at` to its `lease_until` (and counting the
    attempt): other instances skip them while this one sends (outside any transaction), and
    retry them if it dies (at least once). Both channels are claimed together because they
    share the row (and its lock). A due channel that has had `max_attempts` already (its last
    attempt's lease expired with no outcome recorded) is marked `failed` instead."""
    due = []
    for channel in channels:
        status, _, next_at, _, _ = _columns(channel)
        due.append(and_(status == ChannelStatus.PENDING, next_at <= now))
    if not due:
        return ClaimedBatch([], [])
    stmt = select(Notification).where(or_(*due)).order_by(Notification.created_at).limit(limit)
    stmt = stmt.with_for_update(skip_locked=True, of=Notification)
    rows = list((await session.scalars(stmt)).all())
    if not rows:
        return ClaimedBatch([], [])
    settings: dict[str, NotificationSettings] = {}
    if "email" in channels:
        found = await session.scalars(
            select(NotificationSettings).where(
                NotificationSettings.user_id.in_({r.user_id for r in rows})
            )
        )
        settings = {s.user_id: s for s in found}
    claimed: list[tuple[Channel, Claimed]] = []
    exhausted: list[tuple[Channel, str, int]] = []
    for row in rows:
        for channel in channels:
            if (
                getattr(row, f"{channel}_status") != ChannelStatus.PENDING
                or getattr(row, f"{channel}_next_attempt_at") > now
            ):
                continue
            attempts = getattr(row, f"{channel}_attempts")
            if attempts >= max_attempts:
                state.give_up(
                    row,
                    channel,
                    f"gave up after {attempts} attempts (no outcome recorded for the last one)",
                )
                exhausted.append((channel, row.id, attempts))
                continue
            attempt = attempts + 1
            setattr(row, f"{channel}_attempts", attempt)
            setattr(row, f"{channel}_next_attempt_at", lease_until[channel])
            user = settings.get(row.user_id)
            claimed.append(
                (
                    channel,
                    Claimed(
                        id=row.id,
                        user_id=row.user_id,
                        type=row.type,
                        data=dict(row.data),
                        created_at=row.created_at,
                        attempt=attempt,
                        email=(user.email if user and user.email else row.email),
                        email_enabled=user.email_enabled if user else True,
                    ),
                )
            )
    await session.flush()
    return ClaimedBatch(claimed, exhausted)


async def record_outcome(
    session: AsyncSession,
    channel: Channel,
    notification_id: str,
    *,
    status: ChannelStatus,
    now: datetime,
    next_attempt_at: datetime | None = None,
    error: str | None = None,
) -> None:
    """Store one attempt's outcome: `sent`, `skipped`, `failed` (final) or `pending` again at
    `next_attempt_at` (through the channel's state machine: a final status stays final)."""
    _, _, next_col, sent_col, error_col = _columns(channel)
    values, may_move = state.outcome_update(channel, status)
    values[error_col] = error[:500] if error else None
    if status == ChannelStatus.SENT:
        values[sent_col] = now
    if next_attempt_at is not None:
        values[next_col] = next_attempt_at
    await session.execute(
        update(Notification)
        .where(Notification.id == notification_id, may_move)
        .values(values)
        .execution_options(synchronize_session=False)
    )


_FILL_RECEIPTS = text(
    """
    UPDATE notifications
    SET data = CAST(CAST(notifications.data AS jsonb) || jsonb_build_object('receipt_url', r.url)
                    AS json)
    FROM unnest(CAST(:user_ids AS text[]), CAST(:order_ids AS text[]), CAST(:urls AS text[]))
         AS r(user_id, order_id, url)
    WHERE notifications.user_id = r.user_id
      AND notifications.type IN ('topup.succeeded', 'auto_topup.succeeded')
      AND notifications.data ->> 'order_id' = r.order_id
      AND notifications.data ->> 'receipt_url' IS NULL
      AND notifications.email_attempts = 0 AND notifications.webhook_attempts = 0
      AND notifications.email_sent_at IS NULL AND notifications.webhook_sent_at IS NULL
    """
)


async def fill_receipt_urls(session: AsyncSession, receipts: Sequence[tuple[str, str, str]]) -> int:
    """Put orders' receipt links (`(user_id, order_id, url)`, one per order) into their top-up
    notifications that no channel has tried to deliver yet (their payload was written by the
    credit, before Stripe was asked for the receipt), in one statement. Returns how many it
    filled."""
    if not receipts:
        return 0
    user_ids, order_ids, urls = (list(column) for column in zip(*receipts, strict=True))
    result = await session.execute(
        _FILL_RECEIPTS, {"user_ids": user_ids, "order_ids": order_ids, "urls": urls}
    )
    return int(getattr(result, "rowcount", 0) or 0)

"""The outbox delivered for real: a local SMTP server and a local HTTP receiver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.ledger import lots
from app.models.base import utcnow
from app.models.ledger import LotSource, Txn
from app.models.notifications import Notification
from app.notifications import events, signing
from app.notifications.delivery import backoff_seconds, deliver_notifications
from app.notifications.repository import upsert_email
from app.notifications.service import enqueue, remember_email
from testing.fixtures.notifications import SmtpSink, WebhookReceiver, free_port, notify_settings

SECRET = "whsec_notify_" + "s" * 24


@pytest.fixture
def notify_secret() -> str:
    return SECRET


@pytest.fixture
def settings_overrides(smtp: SmtpSink, receiver: WebhookReceiver) -> dict[str, Any]:
    return {
        **notify_settings(smtp, receiver, SECRET, webhook_timeout_seconds=0.5),
        "notify_max_attempts": 3,
    }


async def _topup_with_notification(
    maker: async_sessionmaker[AsyncSession], user_id: str = "user-1", email: str | None = None
) -> str:
    """A credit and its notification in one transaction, as a money path writes them."""
    async with session_scope(maker) as session:
        await lots.credit(
            session,
            Txn(f"topup:pi_{user_id}_{time.monotonic_ns()}", "topup"),
            user_id=user_id,
            amount_micros=20_000_000,
            source=LotSource.PURCHASE,
            account="stripe",
        )
        return await enqueue(
            session,
            user_id=user_id,
            type="topup.succeeded",
            data=events.topup_succeeded(
                order_id="ord_1", amount_micros=20_000_000, receipt_url="https://r.test/1"
            ),
            email=email,
        )


async def _row(maker: async_sessionmaker[AsyncSession], notification_id: str) -> Notification:
    async with session_scope(maker) as session:
        row = await session.get(Notification, notification_id)
        assert row is not None
        return row


async def _make_due(maker: async_sessionmaker[AsyncSession]) -> None:
    async with session_scope(maker) as session:
        await session.execute(
            update(Notification).values(
                email_next_attempt_at=utcnow() - timedelta(seconds=1),
                webhook_next_attempt_at=utcnow() - timedelta(seconds=1),
            )
        )


async def test_a_committed_event_is_emailed_and_posted_signed_once(
    app: Any,
    session_maker: async_sessionmaker[AsyncSession],
    smtp: SmtpSink,
    receiver: WebhookReceiver,
) -> None:
    notification_id = await _topup_with_notification(session_maker, email="ada@example.com")

    counts = await deliver_notifications(session_maker, app.state.notifier)
    row = await _row(session_maker, notification_id)
    assert counts["email"]["sent"] == 1, row.email_last_error
    assert counts["webhook"]["sent"] == 1, row.webhook_last_error

    [message] = smtp.messages
    assert smtp.recipients == [["ada@example.com"]]
    assert message["Subject"] == "$20.00 was added to your ToRouter balance"
    assert message["From"] == "ToRouter Billing <billing@torouter.test>"
    assert message["Message-ID"] == f"<{notification_id}@billing.torouter>"
    assert message["X-Billing-Event-Id"] == notification_id
    assert "Your top-up of $20.00 was credited." in message.get_payload()

    [delivery] = receiver.deliveries
    assert delivery.verified
    assert delivery.headers["Content-Type"] == "application/json"
    body = delivery.json()
    assert set(body) == {"id", "type", "created", "user_id", "data"}
    assert body["id"] == notification_id
    assert body["type"] == "topup.succeeded"
    assert body["user_id"] == "user-1"
    assert abs(body["created"] - time.time()) < 60
    assert body["data"]["amount"] == "20.00"
    assert body["data"]["amount_micros"] == 20_000_000

    row = await _row(session_maker, notification_id)
    assert (row.email_status, row.email_attempts) == ("sent", 1)
    assert (row.webhook_status, row.webhook_attempts) == ("sent", 1)
    assert row.email_sent_at is not None

    again = await deliver_notifications(session_maker, app.state.notifier)
    assert again == {
        "email": {"sent": 0, "retry": 0, "failed": 0, "skipped": 0},
        "webhook": {"sent": 0, "retry": 0, "failed": 0, "skipped": 0},
    }
    assert len(smtp.messages) == 1
    assert len(receiver.deliveries) == 1


async def test_a_rolled_back_event_leaves_no_notification(
    app: Any, session_maker: async_sessionmaker[AsyncSession]
) -> None:
    async def failing_money_movement() -> None:
        async with session_scope(session_maker) as session:
            await enqueue(
                session,
                user_id="user-1",
                type="balance.low",
                data={"threshold": "5.00", "available": "0.000001", "currency": "usd"},
            )
            raise RuntimeError("the money movement failed")

    with pytest.raises(RuntimeError):
        await failing_money_movement()
    async with session_scope(session_maker) as session:
        assert (await session.scalars(select(Notification))).all() == []


async def test_the_latest_address_seen_wins_over_the_one_stored_with_the_event(
    app: Any, session_maker: async_sessionmaker[AsyncSession], smtp: SmtpSink
) -> None:
    await _topup_with_notification(session_maker, email="old@example.com")
    async with session_scope(session_maker) as session:
        await remember_email(session, "user-1", "new@example.com")
    await deliver_notifications(session_maker, app.state.notifier)
    assert smtp.recipients == [["new@example.com"]]


async def test_email_is_skipped_without_an_address_or_when_turned_off(
    app: Any,
    session_maker: async_sessionmaker[AsyncSession],
    smtp: SmtpSink,
    receiver: WebhookReceiver,
) -> None:
    nobody = await _topup_with_notification(session_maker, user_id="user-noaddr")
    async with session_scope(session_maker) as session:
        await remember_email(session, "user-off", "off@example.com")
        from app.notifications.repository import set_email_enabled

        await set_email_enabled(session, "user-off", False)
    opted_out = await _topup_with_notification(session_maker, user_id="user-off")

    await deliver_notifications(session_maker, app.state.notifier)

    assert smtp.messages == []
    assert len(receiver.deliveries) == 2
    for notification_id, reason in ((nobody, "no email address"), (opted_out, "turned off")):
        row = await _row(session_maker, notification_id)
        assert row.email_status == "skipped"
        assert reason in (row.email_last_error or "")
        assert row.webhook_status == "sent"


async def test_a_failing_receiver_is_retried_with_backoff_under_the_same_event_id(
    app: Any, session_maker: async_sessionmaker[AsyncSession], receiver: WebhookReceiver
) -> None:
    receiver.answers = [500, 503]
    notification_id = await _topup_with_notification(session_maker, email="a@example.com")

    before = utcnow()
    counts = await deliver_notifications(session_maker, app.state.notifier)
    assert counts["webhook"]["retry"] == 1
    row = await _row(session_maker, notification_id)
    assert (row.webhook_status, row.webhook_attempts) == ("pending", 1)
    assert row.webhook_last_error == "http: answered 500"
    wait = (row.webhook_next_attempt_at - before).total_seconds()
    assert backoff_seconds(1) <= wait < backoff_seconds(1) + 10

    # Not due yet: nothing is sent.
    await deliver_notifications(session_maker, app.state.notifier)
    assert len(receiver.deliveries) == 1

    await _make_due(session_maker)
    await deliver_notifications(session_maker, app.state.notifier)
    row = await _row(session_maker, notification_id)
    assert (row.webhook_status, row.webhook_attempts) == ("pending", 2)
    assert (row.webhook_next_attempt_at - utcnow()).total_seconds() > backoff_seconds(1)

    await _make_due(session_maker)
    await deliver_notifications(session_maker, app.state.notifier)
    row = await _row(session_maker, notification_id)
    assert (row.webhook_status, row.webhook_attempts) == ("sent", 3)
    assert [d.json()["id"] for d in receiver.deliveries] == [notification_id] * 3
    assert all(d.verified for d in receiver.deliveries)


async def test_a_channel_gives_up_after_the_last_attempt(
    app: Any, session_maker: async_sessionmaker[AsyncSession], receiver: WebhookReceiver
) -> None:
    receiver.answers = [500, 500, 500]
    notification_id = await _topup_with_notification(session_maker)
    for _ in range(3):
        await deliver_notifications(session_maker, app.state.notifier)
        await _make_due(session_maker)
    row = await _row(session_maker, notification_id)
    assert (row.webhook_status, row.webhook_attempts) == ("failed", 3)
    await deliver_notifications(session_maker, app.state.notifier)
    assert len(receiver.deliveries) == 3


def test_backoff_doubles_from_30_seconds_up_to_an_hour() -> None:
    assert [backoff_seconds(n) for n in range(1, 9)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
    ]
    assert backoff_seconds(40) == 3600


class TestDeadEndpoint:
    """A dead receiver costs the job a bounded wait and never touches money movement."""

    @pytest.fixture
    def settings_overrides(self, smtp: SmtpSink) -> dict[str, Any]:
        return {
            "smtp_url": smtp.url,
            "notify_webhook_url": f"http://127.0.0.1:{free_port()}/nobody-listens",
            "notify_webhook_secret": SECRET,
            "notify_webhook_timeout_seconds": 0.5,
        }

    async def test_refused_connections_are_retried_while_email_and_money_go_on(
        self, app: Any, session_maker: async_sessionmaker[AsyncSession], smtp: SmtpSink
    ) -> None:
        notification_id = await _topup_with_notification(session_maker, email="a@example.com")
        counts = await deliver_notifications(session_maker, app.state.notifier)
        assert counts["webhook"]["retry"] == 1
        assert counts["email"]["sent"] == 1
        assert len(smtp.messages) == 1
        row = await _row(session_maker, notification_id)
        assert row.webhook_status == "pending"
        assert (row.webhook_last_error or "").startswith("http: ConnectError")
        # Money keeps moving, with more notifications queued behind the dead endpoint.
        await _topup_with_notification(session_maker, email="a@example.com")

    async def test_a_receiver_that_never_answers_is_cut_off_by_the_timeout(
        self, app: Any, session_maker: async_sessionmaker[AsyncSession]
    ) -> None:
        hanging = WebhookReceiver(SECRET, hang=True)
        await hanging.start()
        try:
            app.state.notifier.settings = app.state.notifier.settings.model_copy(
                update={"notify_webhook_url": hanging.url}
            )
            notification_id = await _topup_with_notification(session_maker)
            started = time.monotonic()
            counts = await deliver_notifications(session_maker, app.state.notifier)
            elapsed = time.monotonic() - started
        finally:
            await hanging.stop()
        assert counts["webhook"]["retry"] == 1
        assert len(hanging.deliveries) == 1
        assert elapsed < 5  # the 0.5 s client timeout, not the receiver, decides
        row = await _row(session_maker, notification_id)
        assert "Timeout" in (row.webhook_last_error or "")


class TestUnconfigured:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {}

    async def test_channels_without_settings_are_skipped(
        self, app: Any, session_maker: async_sessionmaker[AsyncSession]
    ) -> None:
        notification_id = await _topup_with_notification(session_maker, email="a@example.com")
        counts = await deliver_notifications(session_maker, app.state.notifier)
        assert counts["email"]["skipped"] == 1
        assert counts["webhook"]["skipped"] == 1
        row = await _row(session_maker, notification_id)
        assert (row.email_status, row.webhook_status) == ("skipped", "skipped")


async def test_instances_running_the_job_at_once_deliver_each_notification_once(
    app: Any,
    session_maker: async_sessionmaker[AsyncSession],
    smtp: SmtpSink,
    receiver: WebhookReceiver,
) -> None:
    ids = {await _topup_with_notification(session_maker, email="a@example.com") for _ in range(20)}
    await asyncio.gather(
        *(deliver_notifications(session_maker, app.state.notifier) for _ in range(4))
    )
    assert sorted(d.json()["id"] for d in receiver.deliveries) == sorted(ids)
    assert sorted(m["X-Billing-Event-Id"] for m in smtp.messages) == sorted(ids)


def test_signature_verifies_only_the_exact_body_secret_and_recent_time() -> None:
    body = b'{"id":"ntf_1"}'
    now = 1_800_000_000
    header = signing.sign(body, SECRET, now)
    assert header.startswith(f"t={now},v1=")
    assert signing.verify(body, header, SECRET, now=now + 10)
    assert not signing.verify(body + b" ", header, SECRET, now=now)
    assert not signing.verify(body, header, "another-secret-xxxxxxxx", now=now)
    assert not signing.verify(body, header, SECRET, now=now + 301)
    assert not signing.verify(body, None, SECRET, now=now)
    assert not signing.verify(body, "t=abc,v1=00", SECRET, now=now)


def asyncpg_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def test_the_plain_sql_insert_shape_is_delivered_like_an_orm_one(
    app: Any, settings: Any, smtp: SmtpSink, receiver: WebhookReceiver
) -> None:
    import json

    import asyncpg

    from app.ids import new_id
    from app.notifications.sql import INSERT_NOTIFICATION, NEW_NOTIFICATION_ID

    async with session_scope(app.state.session_maker) as session:
        await remember_email(session, "user-sql", "sql@example.com")
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url.get_secret_value()))
    try:
        given = new_id("ntf")
        data = {"threshold": "5.00", "available": "4.000000", "currency": "usd"}
        await conn.execute(
            INSERT_NOTIFICATION, given, "user-sql", "balance.low", json.dumps(data), utcnow()
        )
        drawn = await conn.fetchval(
            f"""
            WITH source AS (SELECT 'user-sql'::text AS user_id)
            INSERT INTO notifications (id, user_id, type, data, created_at)
            SELECT {NEW_NOTIFICATION_ID}, user_id, 'balance.low', $1::json, now() FROM source
            RETURNING id
            """,
            json.dumps(data),
        )
    finally:
        await conn.close()
    assert drawn.startswith("ntf_")

    await deliver_notifications(app.state.session_maker, app.state.notifier)
    assert sorted(d.json()["id"] for d in receiver.deliveries) == sorted([given, drawn])
    assert all(d.json()["data"] == data for d in receiver.deliveries)
    assert smtp.recipients == [["sql@example.com"], ["sql@example.com"]]


async def test_an_unsendable_address_fails_its_own_row_at_once_and_no_other_row(
    app: Any,
    session_maker: async_sessionmaker[AsyncSession],
    smtp: SmtpSink,
    receiver: WebhookReceiver,
) -> None:
    # Addresses stored before they were checked, on the event or as the user's latest: one
    # that makes the email package raise (`a@[`), one it refuses as a header (U+2028), and a
    # list that would mail a second person.
    unsendable = ["a@[", "ada\u2028@example.com", "a@x.com, b@y.com"]
    good: list[str] = []
    bad: list[str] = []
    for i, address in enumerate(unsendable):
        good.append(
            await _topup_with_notification(session_maker, f"user-good-{i}", f"good{i}@example.com")
        )
        if i % 2:
            bad.append(await _topup_with_notification(session_maker, f"user-bad-{i}", address))
        else:
            async with session_scope(session_maker) as session:
                await upsert_email(session, f"user-bad-{i}", address)
            bad.append(await _topup_with_notification(session_maker, f"user-bad-{i}"))

    counts = await deliver_notifications(session_maker, app.state.notifier)

    assert counts["email"] == {"sent": 3, "retry": 0, "failed": 3, "skipped": 0}
    assert counts["webhook"]["sent"] == 6
    assert sorted(smtp.recipients) == [[f"good{i}@example.com"] for i in range(3)]
    for notification_id in good:
        row = await _row(session_maker, notification_id)
        assert (row.email_status, row.email_attempts) == ("sent", 1)
    for notification_id in bad:
        row = await _row(session_maker, notification_id)
        # Permanent: no retry would ever make it sendable.
        assert (row.email_status, row.email_attempts) == ("failed", 1)
        assert "address" in (row.email_last_error or "")
        assert row.webhook_status == "sent"

    await _make_due(session_maker)
    again = await deliver_notifications(session_maker, app.state.notifier)
    assert again["email"] == {"sent": 0, "retry": 0, "failed": 0, "skipped": 0}
    assert len(smtp.messages) == 3


async def test_an_unexpected_error_in_one_send_is_that_attempt_s_outcome_alone(
    app: Any,
    session_maker: async_sessionmaker[AsyncSession],
    smtp: SmtpSink,
    receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = [
        await _topup_with_notification(session_maker, f"user-{i}", f"u{i}@example.com")
        for i in range(3)
    ]
    notifier = app.state.notifier
    send_webhook = notifier.send_webhook

    async def one_send_crashes(notification: Any) -> None:
        if notification.id == ids[1]:
            raise RuntimeError("a bug in one send")
        await send_webhook(notification)

    monkeypatch.setattr(notifier, "send_webhook", one_send_crashes)
    counts = await deliver_notifications(session_maker, notifier)

    assert counts["webhook"] == {"sent": 2, "retry": 1, "failed": 0, "skipped": 0}
    assert counts["email"]["sent"] == 3
    row = await _row(session_maker, ids[1])
    assert (row.webhook_status, row.webhook_attempts) == ("pending", 1)
    assert "RuntimeError" in (row.webhook_last_error or "")
    assert row.webhook_next_attempt_at > utcnow()
    for notification_id in (ids[0], ids[2]):
        assert (await _row(session_maker, notification_id)).webhook_status == "sent"


async def test_a_channel_out_of_attempts_is_failed_and_never_claimed_again(
    app: Any,
    session_maker: async_sessionmaker[AsyncSession],
    smtp: SmtpSink,
    receiver: WebhookReceiver,
) -> None:
    stuck = await _topup_with_notification(session_maker, "user-stuck", "stuck@example.com")
    fresh = await _topup_with_notification(session_maker, "user-fresh", "fresh@example.com")
    # As a crash on the last attempt leaves a channel (or a batch whose outcomes were never
    # recorded, whose rows were re-claimed at every lease): attempts used up, still pending.
    async with session_scope(session_maker) as session:
        await session.execute(
            update(Notification)
            .where(Notification.id == stuck)
            .values(email_attempts=3, webhook_attempts=41)
        )

    counts = await deliver_notifications(session_maker, app.state.notifier)

    assert counts["email"] == {"sent": 1, "retry": 0, "failed": 1, "skipped": 0}
    assert counts["webhook"] == {"sent": 1, "retry": 0, "failed": 1, "skipped": 0}
    assert [m["X-Billing-Event-Id"] for m in smtp.messages] == [fresh]
    assert [d.json()["id"] for d in receiver.deliveries] == [fresh]
    row = await _row(session_maker, stuck)
    assert (row.email_status, row.email_attempts) == ("failed", 3)
    assert (row.webhook_status, row.webhook_attempts) == ("failed", 41)
    assert "attempts" in (row.webhook_last_error or "")


class TestAnInstanceWithoutSmtp:
    """Instances may be configured differently (say, SMTP only on some): one without SMTP
    skips the email of what it claimed, and leaves every other row alone."""

    @pytest.fixture
    def settings_overrides(self, receiver: WebhookReceiver) -> dict[str, Any]:
        return {"notify_webhook_url": receiver.url, "notify_webhook_secret": SECRET}

    async def test_it_skips_only_the_email_it_claimed_not_rows_in_backoff_or_leased(
        self,
        app: Any,
        session_maker: async_sessionmaker[AsyncSession],
        receiver: WebhookReceiver,
    ) -> None:
        due = await _topup_with_notification(session_maker, "user-due", "due@example.com")
        waiting = await _topup_with_notification(session_maker, "user-wait", "wait@example.com")
        leased = await _topup_with_notification(session_maker, "user-lease", "lease@example.com")
        later = utcnow() + timedelta(minutes=10)
        async with session_scope(session_maker) as session:
            # In backoff after a failed attempt by an instance that has SMTP.
            await session.execute(
                update(Notification)
                .where(Notification.id == waiting)
                .values(email_attempts=2, email_next_attempt_at=later, email_last_error="smtp: 451")
            )
            # Being sent right now by an instance that has SMTP (its lease).
            await session.execute(
                update(Notification)
                .where(Notification.id == leased)
                .values(email_attempts=1, email_next_attempt_at=later)
            )

        counts = await deliver_notifications(session_maker, app.state.notifier)

        assert counts["email"] == {"sent": 0, "retry": 0, "failed": 0, "skipped": 1}
        assert counts["webhook"]["sent"] == 3
        row = await _row(session_maker, due)
        assert row.email_status == "skipped"
        assert "not configured" in (row.email_last_error or "")
        for notification_id, attempts in ((waiting, 2), (leased, 1)):
            row = await _row(session_maker, notification_id)
            assert (row.email_status, row.email_attempts) == ("pending", attempts)
            assert abs((row.email_next_attempt_at - later).total_seconds()) < 1
            assert row.webhook_status == "sent"


class TestSmtpCredentials:
    """With a username and password in `BILLING_SMTP_URL`, STARTTLS is required: a server
    that does not offer it (or a man in the middle that stripped it) gets neither the
    password nor the mail."""

    @pytest.fixture
    def clear_smtp(self) -> Iterator[SmtpSink]:
        sink = SmtpSink(auth_in_clear=True)
        sink.start()
        yield sink
        sink.stop()

    @pytest.fixture
    def settings_overrides(self, clear_smtp: SmtpSink) -> dict[str, Any]:
        return {
            "smtp_url": clear_smtp.url_with_credentials("billing", "smtp-password-1"),
            "smtp_timeout_seconds": 2,
        }

    async def test_a_server_without_starttls_gets_no_password_and_no_mail(
        self, app: Any, session_maker: async_sessionmaker[AsyncSession], clear_smtp: SmtpSink
    ) -> None:
        notification_id = await _topup_with_notification(session_maker, email="a@example.com")

        counts = await deliver_notifications(session_maker, app.state.notifier)

        assert clear_smtp.logins == []
        assert clear_smtp.messages == []
        assert counts["email"] == {"sent": 0, "retry": 1, "failed": 0, "skipped": 0}
        row = await _row(session_maker, notification_id)
        assert (row.email_status, row.email_attempts) == ("pending", 1)
        assert "STARTTLS" in (row.email_last_error or "")

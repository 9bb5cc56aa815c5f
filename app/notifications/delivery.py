"""The `notifications` job: delivers the outbox by email (SMTP) and signed webhook.

Each channel of each notification is delivered on its own: a claim in a short transaction
(a lease, FOR UPDATE SKIP LOCKED), the send with no transaction open and a bounded timeout,
then a short transaction that records the outcome of every attempt of the batch, whatever
happened in it (one bad row never keeps the others' outcomes from being recorded). A failure is
retried with exponential backoff (30 s, 1 min, 2 min, … capped at 1 h) until
`notify_max_attempts`; an address that can never be sent to (`app.emails`) fails at once. A
crash between the send and the record leaves the lease to expire and the send to happen again,
so delivery is at least once, and receivers deduplicate by the event id (webhook body `id`,
email `Message-ID`); a channel whose attempts are used up is marked `failed` when next found,
never claimed again. A channel this instance has no settings for is `skipped` on the rows it
claims, at send time; rows in backoff or leased by another instance are left alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib
import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import session_scope
from app.emails import single_address
from app.models.base import utcnow
from app.models.notifications import ChannelStatus
from app.notifications import repository, signing
from app.notifications.render import render_email
from app.notifications.repository import Channel, Claimed
from app.schemas import CONTROL_CHARACTERS

log = structlog.get_logger(__name__)

BACKOFF_BASE_SECONDS = 30.0
BACKOFF_CAP_SECONDS = 3600.0
_CONCURRENCY = 10


def backoff_seconds(attempt: int) -> float:
    """The wait after failed attempt number `attempt` (1-based): 30 s doubling, capped at 1 h."""
    return float(min(BACKOFF_BASE_SECONDS * 2.0 ** max(0, attempt - 1), BACKOFF_CAP_SECONDS))


def webhook_body(notification: Claimed) -> bytes:
    """`{id, type, created, user_id, data}` as compact JSON: the bytes that are signed."""
    return json.dumps(
        {
            "id": notification.id,
            "type": notification.type,
            "created": int(notification.created_at.timestamp()),
            "user_id": notification.user_id,
            "data": notification.data,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


class DeliveryFailed(Exception):
    """One attempt did not deliver; the job retries later."""


class Undeliverable(Exception):
    """This channel of this notification can never be delivered (an address that is not
    exactly one valid address): it fails at once, without retries."""


class Skip(Exception):
    """The channel does not apply to this notification (no address, opted out)."""


@dataclass(frozen=True, slots=True)
class _Smtp:
    hostname: str
    port: int
    use_tls: bool
    username: str | None
    password: str | None


def _smtp(url: str) -> _Smtp:
    parts = urlsplit(url)
    use_tls = parts.scheme == "smtps"
    return _Smtp(
        hostname=parts.hostname or "localhost",
        port=parts.port or (465 if use_tls else 25),
        use_tls=use_tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


class Notifier:
    """The two senders, over one HTTP connection pool (built in the lifespan)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.notify_webhook_timeout_seconds),
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self._http.aclose()

    def configured(self, channel: Channel) -> bool:
        if channel == "email":
            return self.settings.smtp_url is not None
        return self.settings.notify_webhook_url is not None

    def lease_seconds(self, channel: Channel) -> float:
        """Longer than one attempt can take, so a lease outlives its send."""
        timeout = (
            self.settings.smtp_timeout_seconds
            if channel == "email"
            else self.settings.notify_webhook_timeout_seconds
        )
        return 4 * timeout + 30

    async def send(self, channel: Channel, notification: Claimed) -> None:
        if not self.configured(channel):
            # Only what this instance claimed: rows in backoff or leased elsewhere wait for an
            # instance that has the settings.
            raise Skip(f"{channel} not configured")
        if channel == "email":
            await self.send_email(notification)
        else:
            await self.send_webhook(notification)

    async def send_email(self, notification: Claimed) -> None:
        if not notification.email_enabled:
            raise Skip("email turned off by the user")
        if not notification.email:
            raise Skip("no email address known")
        # Stored before addresses were checked where they come in: a list would mail someone
        # else, a line separator or an unparsable one raises in the email package.
        address = single_address(notification.email)
        if address is None:
            raise Undeliverable("the email address is not exactly one valid address")
        assert self.settings.smtp_url is not None
        subject, body = render_email(notification.type, notification.data)
        message = EmailMessage()
        message["From"] = self.settings.smtp_from
        message["To"] = address
        message["Subject"] = subject
        message["Date"] = formatdate(notification.created_at.timestamp(), usegmt=True)
        # The same Message-ID on every attempt: mail systems can drop a redelivered copy.
        message["Message-ID"] = f"<{notification.id}@billing.torouter>"
        message["X-Billing-Event-Id"] = notification.id
        message["X-Billing-Event-Type"] = notification.type
        message.set_content(body)
        smtp = _smtp(self.settings.smtp_url.get_secret_value())
        try:
            await aiosmtplib.send(
                message,
                recipients=[address],
                hostname=smtp.hostname,
                port=smtp.port,
                use_tls=smtp.use_tls,
                # With credentials, STARTTLS is required (a server that does not offer it, or
                # a man in the middle that stripped it, fails the attempt before the password
                # is sent); without, it is used when offered. smtps:// is TLS from the start.
                start_tls=True if smtp.username is not None and not smtp.use_tls else None,
                username=smtp.username,
                password=smtp.password,
                timeout=self.settings.smtp_timeout_seconds,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryFailed(f"smtp: {type(exc).__name__}: {exc}") from exc

    async def send_webhook(self, notification: Claimed) -> None:
        url = self.settings.notify_webhook_url
        secret = self.settings.notify_webhook_secret
        assert url is not None
        assert secret is not None
        body = webhook_body(notification)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "torouter-billing-notifications/1",
            signing.HEADER: signing.sign(body, secret.get_secret_value(), int(time.time())),
        }
        try:
            response = await self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"http: {type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"http: answered {response.status_code}")


def _empty_counts() -> dict[str, int]:
    return {"sent": 0, "retry": 0, "failed": 0, "skipped": 0}


def _error_text(exc: Exception) -> str:
    """What is stored as `*_last_error`: no control characters, 500 at most."""
    known = isinstance(exc, Skip | DeliveryFailed | Undeliverable)
    text = str(exc) if known else f"{type(exc).__name__}: {exc}"
    return CONTROL_CHARACTERS.sub(" ", text)[:500]


async def deliver_notifications(
    maker: async_sessionmaker[AsyncSession], notifier: Notifier
) -> dict[str, dict[str, int]]:
    """One run of the job: a batch of due notifications, every channel's send side by side so
    that a dead webhook receiver does not hold back email, or the reverse. Returns counts per
    channel: `sent`, `retry` (failed, due again later), `failed` (gave up), `skipped`."""
    settings = notifier.settings
    counts: dict[str, dict[str, int]] = {c: _empty_counts() for c in repository.CHANNELS}
    now = utcnow()
    async with session_scope(maker) as session:
        batch = await repository.claim_due(
            session,
            repository.CHANNELS,
            now=now,
            lease_until={
                c: now + timedelta(seconds=notifier.lease_seconds(c)) for c in repository.CHANNELS
            },
            limit=settings.notify_batch_size,
            max_attempts=settings.notify_max_attempts,
        )
    for channel, notification_id, attempts in batch.exhausted:
        counts[channel]["failed"] += 1
        log.warning(
            "notification_delivery_failed",
            channel=channel,
            notification_id=notification_id,
            attempt=attempts,
            error="no outcome recorded for the last attempt",
            gave_up=True,
        )
    claimed = batch.claimed
    if not claimed:
        return counts
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def attempt(channel: Channel, notification: Claimed) -> tuple[str, str | None]:
        """One attempt's outcome, whatever happens in it: nothing it raises (but
        cancellation) reaches the batch, so every attempt's outcome is recorded."""
        async with gate:
            try:
                await notifier.send(channel, notification)
            except Skip as exc:
                return "skipped", _error_text(exc)
            except Undeliverable as exc:
                return "undeliverable", _error_text(exc)
            except Exception as exc:
                # DeliveryFailed, or a bug in one send: retried like any failure, and logged.
                if not isinstance(exc, DeliveryFailed):
                    log.exception(
                        "notification_send_crashed",
                        channel=channel,
                        notification_id=notification.id,
                    )
                return "failed", _error_text(exc)
            return "sent", None

    outcomes = await asyncio.gather(*(attempt(c, n) for c, n in claimed))
    done = utcnow()
    async with session_scope(maker) as session:
        for (channel, notification), (outcome, error) in zip(claimed, outcomes, strict=True):
            fields: dict[str, Any] = {"now": done, "error": error}
            status = outcome
            if outcome == "undeliverable":
                status = outcome = "failed"
            elif outcome == "failed" and notification.attempt < settings.notify_max_attempts:
                status = outcome = "retry"
                fields["next_attempt_at"] = done + timedelta(
                    seconds=backoff_seconds(notification.attempt)
                )
            if outcome in ("retry", "failed"):
                log.warning(
                    "notification_delivery_failed",
                    channel=channel,
                    notification_id=notification.id,
                    attempt=notification.attempt,
                    error=error,
                    gave_up=outcome == "failed",
                )
            counts[channel][outcome] += 1
            await repository.record_outcome(
                session,
                channel,
                notification.id,
                status=ChannelStatus.PENDING if status == "retry" else ChannelStatus(status),
                **fields,
            )
    return counts

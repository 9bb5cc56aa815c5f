"""Real local servers for the notification tests: an SMTP server (aiosmtpd) that keeps what it
received, and an HTTP receiver (aiohttp) that records each delivery and verifies its signature
the way the README tells receivers to; and the fixtures that run them for a test (`smtp`,
`receiver`, which signs with the test module's `notify_secret` fixture; tests/conftest.py
imports them) and the settings that point the app at them (`notify_settings`)."""

from __future__ import annotations

import asyncio
import email
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from app.notifications import signing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Keep:
    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, Message]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        self.messages.append((envelope, email.message_from_bytes(raw)))
        return "250 Message accepted for delivery"


class SmtpSink:
    """aiosmtpd on loopback, in its own thread, as a real mail server would be. It offers no
    STARTTLS; with `auth_in_clear` it offers AUTH (PLAIN, LOGIN) over the plain connection and
    keeps every login it is sent in `logins` (a server, or a man in the middle that stripped
    STARTTLS, a client must not send its password to)."""

    def __init__(self, *, auth_in_clear: bool = False) -> None:
        self._handler = _Keep()
        self.port = free_port()
        self.logins: list[tuple[str, str]] = []
        auth: dict[str, Any] = (
            {"authenticator": self._authenticate, "auth_require_tls": False}
            if auth_in_clear
            else {}
        )
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port, **auth)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            self.logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=True)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def url_with_credentials(self, username: str, password: str) -> str:
        return f"smtp://{username}:{password}@127.0.0.1:{self.port}"

    @property
    def messages(self) -> list[Message]:
        return [m for _, m in self._handler.messages]

    @property
    def recipients(self) -> list[list[str]]:
        return [list(e.rcpt_tos) for e, _ in self._handler.messages]

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def clear(self) -> None:
        self._handler.messages.clear()


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]
    verified: bool

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """An HTTP endpoint on loopback that verifies `Billing-Signature` and answers with the
    statuses queued in `answers` (then 200); `hang` makes it never answer."""

    secret: str
    deliveries: list[Delivery] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    hang: bool = False
    port: int = 0
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/billing-events"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get(signing.HEADER)
        self.deliveries.append(
            Delivery(body, dict(request.headers), signing.verify(body, header, self.secret))
        )
        if self.hang:
            await self._release.wait()
        status = self.answers.pop(0) if self.answers else 200
        return web.Response(status=status, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/billing-events", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        self.port = free_port()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
async def receiver(notify_secret: str) -> AsyncIterator[WebhookReceiver]:
    server = WebhookReceiver(notify_secret)
    await server.start()
    yield server
    await server.stop()


def notify_settings(
    smtp: SmtpSink, receiver: WebhookReceiver, secret: str, *, webhook_timeout_seconds: float
) -> dict[str, Any]:
    """The settings that send the app's email to `smtp` and its webhooks to `receiver`."""
    return {
        "smtp_url": smtp.url,
        "smtp_from": "ToRouter Billing <billing@torouter.test>",
        "notify_webhook_url": receiver.url,
        "notify_webhook_secret": secret,
        "notify_webhook_timeout_seconds": webhook_timeout_seconds,
        "smtp_timeout_seconds": 2,
    }

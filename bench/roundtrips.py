"""Round trips to PostgreSQL per request, counted on the wire, so the figure holds whether the
service talks through SQLAlchemy or the driver directly.

A TCP proxy between the service and PostgreSQL reads the frontend side of the protocol and counts
the messages after which the client waits for the server: `Sync` (the end of an extended-query
exchange: a prepared statement's bind + execute, or a prepare) and `Query` (a simple query such as
`BEGIN`). Pipelined statements sent before one `Sync` count once, as they cost one round trip.
Needs a plaintext connection: PostgreSQL without SSL, or a client that does not ask for it.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections import Counter
from types import TracebackType

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
WAITS = {b"S": "sync", b"Q": "query"}


class WireCounter:
    """A loopback proxy to `upstream_port` in a thread; `counts` tallies Sync and Query."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.counts: Counter[str] = Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def round_trips(self) -> int:
        return self.counts["sync"] + self.counts["query"]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._frontend(reader, up_writer),
            self._pipe(up_reader, writer),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            w.close()

    async def _frontend(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward the client's messages, counting those that wait for an answer."""
        try:
            # Untyped start-up packets first (an SSL or GSS request, then the start-up message).
            while True:
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                writer.write(head + await reader.readexactly(length - 8))
                if code not in (SSL_REQUEST, GSSENC_REQUEST):
                    break
            while True:
                head = await reader.readexactly(5)
                kind = WAITS.get(head[:1])
                if kind:
                    self.counts[kind] += 1
                (length,) = struct.unpack("!i", head[1:])
                writer.write(head + await reader.readexactly(length - 4))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def __enter__(self) -> WireCounter:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

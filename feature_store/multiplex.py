"""One Redis connection that every concurrent call of the hot path shares, pipelined.

The store's hot path (applying events, reading a profile, recording a decision) sends a few commands
per call and waits for their replies. Through redis-py's pool, each call pays for taking a connection
from the pool and giving it back, a timer for its timeout and a stream read per reply: about 115 µs
of CPU per call on uvloop, of which Redis's own work is a small part (docs/performance.md).

Here each call's commands go out in one write on one shared connection (with those of the other calls
made in the same turn of the event loop), and the call waits on one future.
Redis answers a connection's commands in the order it received them, so the replies are matched to
the calls first in, first out: the protocol parses whatever arrived with hiredis and settles every
call whose replies are complete. Measured with the same script call: 46 µs of CPU per call one at a
time, 11 µs with 32 calls in flight, against 115 and 67 through the pool.

The connection is opened by redis-py (TLS, AUTH, SELECT, RESP version and connect timeout as the URL
says), which then hands its transport over. Failures:

* A call whose replies have not all come within ``timeout_s`` fails with a ``TimeoutError``, and so
  does every call behind it: Redis answers in order, so they are as late. The connection is closed
  (replies still in flight would answer later calls) and the next call opens a new one.
* A lost connection fails every call in flight with a ``ConnectionError``; the next call reconnects.
* A caller that stops waiting (cancelled, e.g. by the decision budget) leaves its replies to be read
  and dropped: the calls behind it still get their own.
* An error reply takes its command's place in the list of replies, as redis-py's
  ``execute(raise_on_error=False)`` gives it; the caller decides what it means.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, Final

import hiredis
from redis import exceptions as rx
from redis._parsers.base import BaseParser
from redis.asyncio.connection import ConnectionPool

_WRITE_BUFFER_HIGH: Final = 1 << 20  # bytes queued in the transport before callers wait for it to drain


def pack(commands: Sequence[tuple[Any, ...]]) -> bytes:
    """The commands in Redis's protocol, packed by hiredis (str, bytes, int and float arguments)."""
    try:
        return b"".join([hiredis.pack_command(command) for command in commands])
    except TypeError as exc:
        raise rx.DataError(str(exc)) from exc


class _Call:
    __slots__ = ("deadline", "future", "left", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, deadline: float) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] = []
        self.deadline = deadline


class _Link(asyncio.Protocol):
    """One open connection: calls in flight in the order they were written, and the parser."""

    def __init__(
        self, writer: asyncio.StreamWriter, timeout_s: float, encoding: tuple[str, str] | None
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._writer = writer  # kept: a stream writer closes its transport when it is collected
        self._transport: Any = writer.transport
        self._timeout_s = timeout_s
        reader_args: dict[str, Any] = {
            "protocolError": rx.InvalidResponse,
            "replyError": BaseParser.parse_error,
        }
        if encoding is not None:
            reader_args["encoding"], reader_args["errors"] = encoding
        self._reader = hiredis.Reader(**reader_args)
        self._calls: deque[_Call] = deque()
        self._unsent: list[bytes] = []
        self._drained: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None
        # Late replies are found by a check a few times per timeout, not by a timer per call.
        self._watch = self._loop.call_later(timeout_s / 4, self._check)

    # The transport's callbacks.
    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        calls = self._calls
        try:
            while (reply := self._reader.gets()) is not False:
                call = calls[0]
                call.replies.append(reply)
                call.left -= 1
                if call.left == 0:
                    calls.popleft()
                    if not call.future.done():
                        call.future.set_result(call.replies)
        except (rx.InvalidResponse, IndexError) as exc:  # garbled, or a reply nobody asked for
            self._fail(rx.ConnectionError(f"the connection to Redis returned an unreadable reply: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(rx.ConnectionError(f"the connection to Redis was lost: {exc or 'closed by the server'}"))

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None

    # The store's side.
    def call(self, packed: bytes, count: int) -> Awaitable[list[Any]]:
        """The call's replies to await: its future, or while the socket is behind with a large write, a
        coroutine that waits for it to drain first, as ``drain()`` does. Made at once, not when awaited,
        and a function rather than a coroutine: a decision's round trip resumes one frame less."""
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        self._calls.append(_Call(future, count, self._loop.time() + self._timeout_s))
        if not self._unsent:
            self._loop.call_soon(self._send)
        self._unsent.append(packed)
        if self._drained is not None:
            return self._after_drain(self._drained, future)
        return future

    @staticmethod
    async def _after_drain(drained: asyncio.Future[None], future: asyncio.Future[list[Any]]) -> list[Any]:
        try:
            await asyncio.shield(drained)
        except BaseException:
            if future.done() and not future.cancelled():
                future.exception()  # the same failure, raised here
            raise
        return await future

    def _send(self) -> None:
        """Write what the calls of this turn of the event loop asked for, in one system call."""
        unsent, self._unsent = self._unsent, []
        if self.failure is None:
            self._transport.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))

    def _check(self) -> None:
        if self.failure is not None:
            return
        if self._calls and self._calls[0].deadline <= self._loop.time():
            self._fail(rx.TimeoutError(f"Redis did not answer within {self._timeout_s} s"))
            return
        self._watch = self._loop.call_later(self._timeout_s / 4, self._check)

    def _fail(self, failure: BaseException) -> None:
        """Close the connection and fail every call in flight (once)."""
        if self.failure is not None:
            return
        self.failure = failure
        self._watch.cancel()
        self._transport.abort()
        while self._calls:
            call = self._calls.popleft()
            if not call.future.done():
                call.future.set_exception(failure)
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(failure)
            self._drained.exception()  # retrieved: a caller may not be waiting on it

    def close(self) -> None:
        self._fail(rx.ConnectionError("the connection to Redis was closed by the service"))


class Multiplexer:
    """Commands from concurrent callers on one connection made by ``pool``'s connection class and
    settings; opened at the first call and again after a failure.

    Examples
    --------
    >>> mux = Multiplexer(pool, timeout_s=0.5)                       # doctest: +SKIP
    >>> await mux.execute([("SET", "k", "v"), ("GET", "k")])         # doctest: +SKIP
    ['OK', 'v']
    """

    def __init__(self, pool: ConnectionPool, timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._link: _Link | None = None
        self._opening: asyncio.Task[_Link] | None = None

    def execute(self, commands: Sequence[tuple[Any, ...]]) -> Awaitable[list[Any]]:
        """The replies of ``commands``, sent in one write, in order; an error reply in its place. The
        call is made at once (a command that cannot be packed raises here); what it returns is awaited."""
        packed = pack(commands)
        link = self._link
        if link is None or link.failure is not None:
            return self._open_and_call(packed, len(commands))
        return link.call(packed, len(commands))

    async def _open_and_call(self, packed: bytes, count: int) -> list[Any]:
        link = await self._open()
        return await link.call(packed, count)

    async def _open(self) -> _Link:
        # Callers that find the connection down together wait for the same attempt.
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._connect())
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    def _opened(self, task: asyncio.Task[_Link]) -> None:
        self._opening = None
        if not task.cancelled() and task.exception() is None:
            self._link = task.result()

    async def _connect(self) -> _Link:
        connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        await connection.connect()
        writer = connection._writer  # redis-py's stream, after its handshake; its transport is ours now
        if writer is None:  # pragma: no cover - connect() returns connected or raises
            raise rx.ConnectionError("redis-py returned an unconnected connection")
        connection._writer = connection._reader = None  # so that redis-py never closes it behind us
        encoder = connection.encoder
        encoding = (encoder.encoding, encoder.encoding_errors) if encoder.decode_responses else None
        link = _Link(writer, self._timeout_s, encoding)
        writer.transport.set_protocol(link)
        return link

    def close(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
        if self._link is not None:
            self._link.close()
            self._link = None

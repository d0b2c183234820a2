"""Structured logs: JSON lines in production (or when not on a terminal), readable in development.

Each HTTP request binds a ``request_id`` (:class:`RequestIds`, :func:`bind_request_id`) that every log
line of that request carries; decisions log their ``decision_id``, one ``decision`` event each.

No raw personal data: customer and anonymous ids, emails and IP addresses are logged only under the
keys in :data:`PERSONAL`, and those values are replaced on the way out by a pseudonym, the first 16 hex
digits of HMAC-SHA256 keyed by ``NBA_LOG_SALT`` (https://www.rfc-editor.org/rfc/rfc2104). A customer
is hashed in its ``c:<id>`` form (``a:<id>`` for an anonymous visitor) whichever key logs it, so one
person has one pseudonym across all events. Tracebacks are logged without their frames' local values,
which hold ids, bodies and keys.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final

import orjson
import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Key logged -> the prefix its value is hashed with: ids become refs (c:<id>, a:<id>), so that a customer
# has one pseudonym whether it was logged as customer_id or as customer.
PERSONAL: Final[Mapping[str, str]] = {
    "customer": "",  # a ref: c:<id> or a:<id>
    "customer_id": "c:",
    "anonymous_id": "a:",
    "email": "",
    "ip": "",
    "client_ip": "",
}


def pseudonym(salt: bytes, value: str) -> str:
    """What the logs show for ``value``: the same for the same salt, unreadable without it."""
    return hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()[:16]


# XOR with HMAC's inner and outer pads, as translation tables (RFC 2104; the hmac module's own).
_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


def _keyed(salt: bytes) -> Callable[[str], str]:
    """:func:`pseudonym` for one salt, with the key's inner and outer hash states made once: each value
    then costs two copies and two updates of SHA-256 (RFC 2104's construction, which the hmac module
    uses without OpenSSL), half the time of ``hmac.new`` per value. tests/unit/test_logging.py holds
    the two equal."""
    key = (hashlib.sha256(salt).digest() if len(salt) > 64 else salt).ljust(64, b"\0")
    inner, outer = hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))

    def keyed(value: str) -> str:
        mac = inner.copy()
        mac.update(value.encode())
        out = outer.copy()
        out.update(mac.digest())
        return out.hexdigest()[:16]

    return keyed


def pseudonymizer(salt: bytes) -> structlog.typing.Processor:
    """A structlog processor that replaces the values of :data:`PERSONAL` keys with their pseudonyms.

    The pseudonyms of the ids seen last are kept: a visitor's page views each log a decision, and an
    HMAC costs more than the rest of the line's processing."""

    hidden = functools.lru_cache(maxsize=16384)(_keyed(salt))

    def hide(value: Any, prefix: str) -> Any:
        if isinstance(value, str):
            return hidden(prefix + value)
        if isinstance(value, list | tuple | set | frozenset):
            return [hide(item, prefix) for item in value]
        return value  # None, numbers: nothing personal

    def processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, prefix in PERSONAL.items():
            if key in event:
                event[key] = hide(event[key], prefix)
        return event

    return processor


# The request being answered, for its log lines: one variable read per line. structlog's contextvars
# module keeps a variable per key bound and finds them by walking every variable of the context, a
# tenth of a decision line's time (docs/performance.md); the request id is the only one bound.
_REQUEST_ID: Final[ContextVar[str | None]] = ContextVar("nba_request_id", default=None)


def bind_request_id(rid: str) -> Token[str | None]:
    """Log lines from here on carry ``request_id=rid``, until :func:`reset_request_id` with the token."""
    return _REQUEST_ID.set(rid)


def reset_request_id(token: Token[str | None]) -> None:
    _REQUEST_ID.reset(token)


def current_request_id() -> str | None:
    return _REQUEST_ID.get()


def add_request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``request_id``: the request's, unless the line gives its own."""
    rid = _REQUEST_ID.get()
    if rid is not None:
        event.setdefault("request_id", rid)
    return event


def stamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``timestamp``: the time in ISO 8601, UTC, to the microsecond (``2026-11-22T20:15:03.123456Z``).
    structlog's ``TimeStamper`` builds a datetime per line; here the text up to the second is built
    once a second."""
    second, micros = divmod(time.time_ns() // 1000, 1_000_000)
    cached = _second[0]  # read once: another thread may replace it
    if cached[0] != second:
        cached = _second[0] = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    event["timestamp"] = f"{cached[1]}.{micros:06d}Z"
    return event


_second: list[tuple[int, str]] = [(-1, "")]
_encoder = json.JSONEncoder(default=repr)  # built once: json.dumps builds one per call given options


def _render_json(event: Any, **_: Any) -> bytes:
    """structlog's JSON, by orjson (the decision log writes a line per decision: a fifth of the json
    module's time); what JSON cannot hold is written as its repr, as structlog's own fallback does.
    What orjson refuses outright (an integer beyond 64 bits) the json module writes: a log line never
    fails the call that logs it."""
    try:
        return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return _encoder.encode(event).encode()


class _Logger(structlog.make_filtering_bound_logger(logging.INFO)):  # type: ignore[misc]
    """structlog's logger that drops what is below INFO, with a shorter ``info``: when nothing is bound
    to the logger, the processors run on the call's own keywords, where structlog's path first copies
    them into a new dict twice (the line is the same, in 60% of the time; a decision logs one,
    docs/performance.md). What the last processor returns goes out as structlog sends it."""

    def info(self, event: str, *args: Any, **kw: Any) -> Any:
        if args or self._context:
            return super().info(event, *args, **kw)
        direct = _direct
        if direct is not None and direct.stands_for(self._processors) and "exc_info" not in kw:
            return direct.write(event, kw)
        line: Any = kw
        line["event"] = event
        try:
            for processor in self._processors:
                line = processor(self._logger, "info", line)
        except structlog.DropEvent:
            return None
        if isinstance(line, str | bytes | bytearray):
            return self._logger.info(line)
        if isinstance(line, tuple):
            return self._logger.info(*line[0], **line[1])
        return self._logger.info(**line)


class _Direct:
    """The info lines of the chain :func:`configure` sets up for JSON, written in one call rather than
    through the chain: what each processor adds, in its order. A decision logs a line on every page view;
    this way saved it about 7 us of the worker's time on the wire (2%), several times what the calls
    cost in a tight loop, as interpreted code gone cold since the last decision runs slower
    (docs/performance.md). tests/unit/test_logging.py holds the two ways' lines equal."""

    __slots__ = ("chain", "lines", "processors", "pseudonymize")

    def __init__(self, processors: list[Any], pseudonymize: structlog.typing.Processor, lines: Lines) -> None:
        # The chain this stands for, and what it held: a logger with other processors uses them, and so
        # does one whose list was changed in place (structlog.testing.capture_logs).
        self.processors, self.chain = processors, list(processors)
        self.pseudonymize = pseudonymize  # the chain's own
        self.lines = lines

    def stands_for(self, processors: Any) -> bool:
        return processors is self.processors and processors == self.chain

    def write(self, event: str, line: dict[str, Any]) -> None:
        # add_request_id, the pseudonymizer, add_log_level, stamp and _render_json, as processors.
        line["event"] = event
        self.pseudonymize(None, "info", add_request_id(None, "info", line))
        line["level"] = "info"
        self.lines.later(_render_json(stamp(None, "info", line)))


_direct: _Direct | None = None  # set by configure() when its JSON lines go to a byte stream


# How long an info line may wait for others to go out with it.
FLUSH_AFTER_S: Final = 0.05


class Lines:
    """Where the JSON lines go: ``out``, in batches. structlog's logger interface, as its BytesLogger.

    An ``info`` line waits at most :data:`FLUSH_AFTER_S`, or until ``max_bytes`` of lines wait, and goes
    out with the others in one write; a warning or worse goes out at once, after what waits before it.
    Lines keep their order. A decision logs a line on every page view, and a write of its own cost the
    decision up to a tenth of its time on the wire (docs/performance.md). What waits is written by one
    thread of the process's own, by :func:`flush` (the service's shutdown) and at exit; a process killed
    outright (SIGKILL, out of memory) loses its last FLUSH_AFTER_S of info lines at most (the decisions
    themselves are in Redis, and their warnings, fallbacks among them, are not kept waiting)."""

    def __init__(self, out: BinaryIO, *, max_bytes: int = 1 << 16) -> None:
        self.out = out
        self.max_bytes = max_bytes
        self._lines: list[bytes] = []
        self._size = 0
        self._lock = threading.Lock()  # the lines waiting
        self._writing = threading.Lock()  # one write at a time: batches go out in their order
        _LINES.append(self)

    def later(self, line: bytes) -> None:
        with self._lock:
            self._lines.append(line)
            self._size += len(line)
            first = len(self._lines) == 1
        if self._size >= self.max_bytes:
            self.flush()
        elif first:
            _flusher().set()

    def now(self, line: bytes) -> None:
        with self._lock:
            self._lines.append(line)
        self.flush()

    def flush(self) -> None:
        with self._writing:
            with self._lock:
                lines, self._lines, self._size = self._lines, [], 0
            if lines:
                lines.append(b"")
                self.out.write(b"\n".join(lines))
                self.out.flush()

    def _after_fork(self) -> None:
        # The lines that wait are the parent's to write.
        self._lines, self._size = [], 0
        self._lock, self._writing = threading.Lock(), threading.Lock()

    # The names structlog calls a logger by.
    debug = info = msg = log = later
    warning = warn = error = err = critical = fatal = exception = failure = now


_LINES: list[Lines] = []  # one per stream, for the process's life (a logger keeps its own)
_cue: list[threading.Event] = []  # set when a line waits; the flusher thread's, once it runs


def flush() -> None:
    """Write every line that waits (:class:`Lines`), before this returns."""
    for lines in tuple(_LINES):
        # A stream that is gone (closed, a broken pipe) takes its batch with it; the others go on.
        with contextlib.suppress(OSError, ValueError):
            lines.flush()


def _flusher() -> threading.Event:
    if not _cue:
        cue = threading.Event()
        threading.Thread(target=_flush_lines, args=(cue,), name="nba-log-lines", daemon=True).start()
        _cue.append(cue)
    return _cue[0]


def _flush_lines(cue: threading.Event) -> None:
    while True:
        cue.wait()
        time.sleep(FLUSH_AFTER_S)
        cue.clear()  # a line that comes before the flush below goes with it; after, it cues again
        flush()


def _reset_after_fork() -> None:
    """In a forked child, the parent's flusher thread does not run, and a lock may be held forever."""
    _cue.clear()
    for lines in tuple(_LINES):
        lines._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
atexit.register(flush)


def configure(log_format: str = "auto", salt: bytes | None = None) -> None:
    """Configure structlog for this process. ``salt`` keys the pseudonyms (random when not given)."""
    json_logs = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    # JSON lines go out as orjson makes them, bytes, where the stream takes bytes; the console's text.
    out = getattr(sys.stderr, "buffer", None) if json_logs else None
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if not json_logs
        else structlog.processors.JSONRenderer(
            _render_json if out is not None else lambda event, **_: _render_json(event).decode()
        )
    )
    exceptions: structlog.typing.Processor = (
        # Without locals: a frame's variables hold request bodies, customer ids and keys.
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        if json_logs
        else structlog.processors.format_exc_info
    )

    def tracebacks(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        return exceptions(logger, method, event) if "exc_info" in event else event

    pseudonymize = pseudonymizer(salt or os.urandom(32))
    processors = [
        add_request_id,
        pseudonymize,
        structlog.processors.add_log_level,
        stamp,
        tracebacks,
        renderer,
    ]
    global _direct
    _direct = None
    factory: Callable[..., Any] = structlog.PrintLoggerFactory(sys.stderr)
    if out is not None:
        # One Lines per stream: configured again (tests), lines to the same stream keep their order.
        lines = next((each for each in _LINES if each.out is out), None) or Lines(out)
        factory = lambda *_: lines  # noqa: E731
        _direct = _Direct(processors, pseudonymize, lines)
    structlog.configure(
        processors=processors,
        wrapper_class=_Logger,
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


# A request id a client may choose: what tracing headers and UUIDs are made of, and not too long.
_SANE_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")


def request_id(scope: Scope) -> str:
    """The client's ``X-Request-ID`` if it is sane, else a new one (16 hex digits)."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _SANE_REQUEST_ID.fullmatch(value):
                return str(value.decode())
            break
    return f"{random.getrandbits(64):016x}"  # unique enough to find a request's lines, and no system call


class RequestIds:
    """ASGI middleware: binds ``request_id`` to the logs of each request and echoes it in the response's
    ``X-Request-ID``.

    On success the binding is undone. When an exception escapes, it is left in place (``unhandled_error``,
    further out, logs it with the request id and answers with it).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("x-request-id", rid)
            await send(message)

        token = bind_request_id(rid)
        await self.app(scope, receive, sending)
        reset_request_id(token)

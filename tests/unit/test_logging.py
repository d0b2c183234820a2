"""Log lines' parts that are built for speed: each must give what its plain counterpart gives."""

from __future__ import annotations

import io
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from app.logging import (
    _keyed,
    _Logger,
    _render_json,
    add_request_id,
    bind_request_id,
    pseudonym,
    reset_request_id,
    stamp,
)


def test_the_pseudonyms_of_the_log_processor_are_hmac_sha256_of_any_salt() -> None:
    # Salts shorter than SHA-256's block, of exactly a block, and longer (hashed first, RFC 2104 step 1).
    for salt in (b"s" * 16, b"k" * 64, b"long" * 40, bytes(range(65))):
        keyed = _keyed(salt)
        for value in ("c:c-42", "a:visitor/9", "c:ünïcødé 名前", ""):
            assert keyed(value) == pseudonym(salt, value), (salt, value)


def test_a_timestamp_is_the_wall_clock_in_utc_to_the_microsecond() -> None:
    before = time.time()
    text = stamp(None, "info", {})["timestamp"]
    after = time.time()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text), text
    seconds = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert before - 1e-6 <= seconds <= after + 1e-6


def test_a_request_id_is_logged_while_bound_unless_the_line_gives_its_own() -> None:
    assert add_request_id(None, "info", {}) == {}
    token = bind_request_id("req-1")
    try:
        assert add_request_id(None, "info", {"event": "x"}) == {"event": "x", "request_id": "req-1"}
        assert add_request_id(None, "info", {"request_id": "own"}) == {"request_id": "own"}
    finally:
        reset_request_id(token)
    assert add_request_id(None, "info", {}) == {}


def _pair(processors: list[Any]) -> tuple[Any, Any, io.BytesIO, io.BytesIO]:
    """The service's logger class and structlog's own, each writing to a buffer through ``processors``."""
    ours, theirs = io.BytesIO(), io.BytesIO()
    plain = structlog.make_filtering_bound_logger(logging.INFO)
    fast = structlog.wrap_logger(structlog.BytesLogger(ours), processors=processors, wrapper_class=_Logger)
    slow = structlog.wrap_logger(structlog.BytesLogger(theirs), processors=processors, wrapper_class=plain)
    return fast, slow, ours, theirs


def test_the_loggers_short_info_writes_what_structlogs_own_path_writes() -> None:
    render = structlog.processors.JSONRenderer(_render_json)
    fast, slow, ours, theirs = _pair([structlog.processors.add_log_level, render])
    for logger in (fast, slow):
        logger.info("decision", decision_id="d-1", actions=["a", "b"], latency_ms=0.5)
        logger.info("with %s", "args", n=1)  # interpolated: structlog's own path
        logger.bind(trigger="t").info("bound", n=2)  # a bound context: structlog's own path
        logger.debug("below the level")
        logger.warning("warned", n=3)
    assert ours.getvalue() == theirs.getvalue()
    assert ours.getvalue().count(b"\n") == 4


def test_the_loggers_short_info_passes_on_what_the_last_processor_returns() -> None:
    def as_kwargs(_: Any, __: str, event: dict[str, Any]) -> Any:
        return {"message": repr(sorted(event.items())).encode()}

    def as_args(_: Any, __: str, event: dict[str, Any]) -> Any:
        return (repr(sorted(event.items())).encode(),), {}

    for last in (as_kwargs, as_args):
        fast, slow, ours, theirs = _pair([last])
        fast.info("x", n=1)
        slow.info("x", n=1)
        assert ours.getvalue() == theirs.getvalue() != b""


def test_captured_logs_see_the_loggers_short_info() -> None:
    _, _, ours, _ = _pair([])
    with structlog.testing.capture_logs() as logged:
        structlog.wrap_logger(structlog.BytesLogger(ours), wrapper_class=_Logger).info("seen", n=1)
    assert logged == [{"event": "seen", "n": 1, "log_level": "info"}]

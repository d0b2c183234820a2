"""Log lines' parts that are built for speed: each must give what its plain counterpart gives."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from app import logging as app_logging
from app.logging import (
    FLUSH_AFTER_S,
    Lines,
    _keyed,
    _Logger,
    _render_json,
    add_request_id,
    bind_request_id,
    configure,
    flush,
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


def test_the_configured_json_lines_are_the_same_written_in_one_call_or_through_the_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = Writes()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(out))
    monkeypatch.setattr(app_logging, "_direct", app_logging._direct)  # put back as it was, after
    configure("json", b"s" * 16)
    log = structlog.get_logger("nba.test")
    direct = app_logging._direct
    assert direct is not None

    def lines() -> list[dict[str, Any]]:
        token = bind_request_id("req-7")
        try:
            log.info("decision", customer="c:c-1", customer_id=["c-2", None], anonymous_id=None, n=1)
            log.info("odd", values={3, 1}, big=2**70, request_id="own")  # repr, the json module
            log.info("failed", exc_info=ValueError("bad"))  # a traceback: the chain's
        finally:
            reset_request_id(token)
        log.info("outside a request", email="someone@example.com")
        flush()
        written = [orjson.loads(line) for line in out.writes[-1].splitlines()]
        for line in written:
            assert line.pop("timestamp")
        return written

    first = lines()
    monkeypatch.setattr(app_logging, "_direct", None)  # the chain, as before the direct way
    second = lines()
    assert first == second
    assert first[0]["customer"] == pseudonym(b"s" * 16, "c:c-1")
    assert first[0]["customer_id"] == [pseudonym(b"s" * 16, "c:c-2"), None]
    assert first[1]["big"] == 2**70
    assert first[1]["request_id"] == "own"
    assert "exception" in first[2]
    # Only the configured chain's loggers go the direct way: one captured for a test sees every line.
    monkeypatch.setattr(app_logging, "_direct", direct)
    with structlog.testing.capture_logs() as captured:
        log.info("captured", customer="c:c-1")
    assert captured == [{"event": "captured", "customer": "c:c-1", "log_level": "info"}]
    structlog.reset_defaults()


class Writes(io.BytesIO):
    """A stream that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return super().write(data)


def _written_within(stream: Writes, seconds: float) -> list[bytes]:
    deadline = time.monotonic() + seconds
    while not stream.writes and time.monotonic() < deadline:
        time.sleep(0.005)
    return stream.writes


def test_info_lines_wait_and_go_out_together_in_their_order() -> None:
    stream = Writes()
    lines = Lines(stream)
    for n in range(3):
        lines.info(b"line %d" % n)
    assert stream.writes == []  # waiting: FLUSH_AFTER_S at most
    assert _written_within(stream, 100 * FLUSH_AFTER_S) == [b"line 0\nline 1\nline 2\n"]
    lines.info(b"line 3")  # the next one waits again, and is written again
    assert _written_within(stream, 100 * FLUSH_AFTER_S) == [b"line 0\nline 1\nline 2\n"]
    deadline = time.monotonic() + 100 * FLUSH_AFTER_S
    while len(stream.writes) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert stream.writes[1:] == [b"line 3\n"]


def test_a_warning_goes_out_at_once_after_the_lines_that_wait() -> None:
    stream = Writes()
    lines = Lines(stream)
    lines.info(b"first")
    lines.warning(b"warned")
    assert stream.writes == [b"first\nwarned\n"]
    for method in (lines.error, lines.critical, lines.exception):
        method(b"bad")
    assert stream.getvalue() == b"first\nwarned\nbad\nbad\nbad\n"


def test_lines_go_out_when_enough_wait_and_at_a_flush() -> None:
    stream = Writes()
    lines = Lines(stream, max_bytes=100)
    for n in range(12):
        lines.info(b"%09d" % n)  # 9 bytes: the tenth fills 90, the eleventh 99, the twelfth 108
    assert stream.writes == [b"".join(b"%09d\n" % n for n in range(12))]
    lines.info(b"more")
    flush()
    assert stream.writes[1:] == [b"more\n"]


def test_the_service_logger_writes_its_lines_through_lines_waiting_only_for_info() -> None:
    stream = Writes()
    render = structlog.processors.JSONRenderer(_render_json)
    logger = structlog.wrap_logger(Lines(stream), processors=[render], wrapper_class=_Logger)
    logger.info("decision", n=1)
    assert stream.writes == []
    logger.warning("decision", n=2)
    assert stream.writes == [b'{"n":1,"event":"decision"}\n{"n":2,"event":"decision"}\n']


def test_a_process_that_ends_writes_every_line_that_waits() -> None:
    # At exit, with no time for the flusher: the lines are written all the same, in their order.
    script = textwrap.dedent(
        """
        import structlog
        from app import logging
        logging.configure("json", b"s" * 16)
        log = structlog.get_logger()
        for n in range(500):
            log.info("line", n=n)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json_line["n"] for json_line in map(orjson.loads, done.stderr.splitlines())] == list(range(500))


def test_a_forked_child_writes_its_own_lines_not_those_its_parent_left_waiting() -> None:
    read, write = os.pipe()
    with open(write, "wb") as out:
        lines = Lines(out)
        lines.info(b"parent")
        pid = os.fork()
        if pid == 0:  # the child: one line of its own, then out without exit handlers
            lines.info(b"child")
            lines.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        lines.flush()
    with open(read, "rb") as pipe:
        assert pipe.read() == b"child\nparent\n"


def test_a_flush_goes_on_past_a_stream_that_is_gone() -> None:
    gone, alive = Writes(), Writes()
    first, second = Lines(gone), Lines(alive)
    first.info(b"lost")
    second.info(b"kept")
    gone.close()
    flush()  # the service's shutdown: a closed stream of an earlier configuration does not stop it
    assert alive.writes == [b"kept\n"]

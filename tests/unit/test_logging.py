"""Log lines' parts that are built for speed: each must give what its plain counterpart gives."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from app.logging import _keyed, add_request_id, bind_request_id, pseudonym, reset_request_id, stamp


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

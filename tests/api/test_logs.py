"""Logs through the real app: one ``decision`` event per decision, the request id bound to each request's
lines, and no raw personal data anywhere (app/logging.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager

import app.catalogues
import app.dashboard_data
import app.delivery
import app.errors
import app.inbound
import app.main
import app.routes.webhooks
import app.services
import app.snapshots
import app.triggers
from app.logging import pseudonym
from app.main import create_app
from app.services import Services
from app.settings import Settings
from app.triggers import TriggerWorker
from feature_store import ProfileStore, StoreUnavailable
from tests.conftest import Clock
from tests.integration.test_triggers import MINUTE, catalogue

SALT = "a-test-salt-of-at-least-16-characters"
CUSTOMER, VISITOR, EMAIL = "c-secret-42", "v-secret-7", "alice@example.com"
LOGGING_MODULES: tuple[ModuleType, ...] = (
    app.catalogues,
    app.dashboard_data,
    app.delivery,
    app.errors,
    app.inbound,
    app.main,
    app.routes.webhooks,
    app.services,
    app.snapshots,
    app.triggers,
)


@asynccontextmanager
async def service(
    redis_url: str, clock: Clock, folder: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    settings = Settings(
        _env_file=None, redis_url=redis_url, policies=folder, log_format="json", log_salt=SALT
    )
    app = create_app(settings, clock=clock, watch=False)
    async with LifespanManager(app) as manager:
        services: Services = manager._state["services"]
        # A bug's 500 is answered, not raised into the test.
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://nba.test") as client:
            yield client, services


def logged(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_a_flow_logs_one_decision_each_with_request_ids_and_no_raw_personal_data(
    redis_url: str,
    clock: Clock,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Loggers cache their configuration at first use, in an earlier test (and its stderr): fresh ones take
    # this app's configuration (its salt) and this test's stderr.
    for module in LOGGING_MODULES:
        monkeypatch.setattr(module, "log", structlog.get_logger(*module.log._logger_factory_args))
    async with service(redis_url, clock, catalogue(tmp_path)) as (client, services):
        events = {
            "events": [
                {"customer_id": CUSTOMER, "type": "signup"},
                {
                    "customer_id": CUSTOMER,
                    "type": "consent",
                    "properties": {"channel": "email", "granted": True},
                },
                {"customer_id": CUSTOMER, "type": "attributes", "properties": {"email": EMAIL}},
                {"customer_id": CUSTOMER, "type": "add_to_cart", "properties": {"item_id": "s", "price": 5}},
                {"anonymous_id": VISITOR, "type": "page_view"},
            ]
        }
        r = await client.post("/v1/events", json=events, headers={"X-Request-ID": "req-abc-123"})
        assert (r.status_code, r.headers["x-request-id"]) == (202, "req-abc-123")
        link = {"anonymous_id": VISITOR, "customer_id": CUSTOMER}
        assert (await client.post("/v1/identities", json=link)).status_code == 200

        body = {"customer_id": CUSTOMER, "placement": "web.product_page", "event": {"type": "page_view"}}
        # An id that is not sane (too long) is replaced, not echoed.
        web = await client.post("/v1/decide", json=body, headers={"X-Request-ID": "x" * 200})
        assert web.status_code == 200
        web_request = web.headers["x-request-id"]
        assert len(web_request) == 16
        web_id = web.json()["decision_id"]
        outcome = {"decision_id": web_id, "action_id": "generic_banner", "type": "impression"}
        assert (await client.post("/v1/outcomes", json=outcome)).status_code == 202

        async def unavailable(*_: object, **__: object) -> None:
            raise StoreUnavailable("the profile store is unreachable: test")

        with monkeypatch.context() as patch:
            patch.setattr(ProfileStore, "_apply_and_read", unavailable)
            fallback = await client.post("/v1/decide", json=body)
        assert fallback.json()["fallback"] is True
        fallback_id = fallback.json()["decision_id"]

        clock.advance(30 * MINUTE)
        worker = TriggerWorker(services, services.store.triggers(), services.store.outbox(), clock=clock)
        assert await worker.round() == 1

        async def broken(*_: object, **__: object) -> None:
            raise RuntimeError("a bug")

        with monkeypatch.context() as patch:
            patch.setattr(Services, "profile", broken)
            bug = await client.get(f"/v1/customers/{CUSTOMER}")
        assert bug.status_code == 500
        assert bug.headers["x-request-id"] in bug.json()["detail"]
        # The same from the decisions' fast lane, which answers in front of the middleware.
        with monkeypatch.context() as patch:
            patch.setattr(Services, "decide", broken)
            lane_bug = await client.post("/v1/decide", json=body, headers={"X-Request-ID": "req-bug-7"})
        assert (lane_bug.status_code, lane_bug.headers.get_list("x-request-id")) == (500, ["req-bug-7"])
        assert lane_bug.json()["error"] == "internal_error"
        assert "req-bug-7" in lane_bug.json()["detail"]

    text = capsys.readouterr().err
    for raw in (CUSTOMER, VISITOR, EMAIL, "secret-42", "secret-7"):
        assert raw not in text, raw
    lines = logged(text)
    who = pseudonym(SALT.encode(), f"c:{CUSTOMER}")

    # One `decision` event per decision: the web one, the fallback, the trigger's.
    decisions = [e for e in lines if e["event"] == "decision"]
    [fired] = [e for e in lines if e["event"] == "trigger_fired"]
    trigger_id = fired["decision_id"]
    assert sorted(e["decision_id"] for e in decisions) == sorted([web_id, fallback_id, trigger_id])
    by_id = {e["decision_id"]: e for e in decisions}
    assert by_id[web_id] | {"latency_ms": 0, "total_ms": 0, "timestamp": ""} == {
        "decision_id": web_id,
        "customer": who,
        "placement": "web.product_page",
        "source": "web",
        "group": "treatment",
        "actions": ["generic_banner"],
        "fallback": False,
        "latency_ms": 0,
        "total_ms": 0,
        "event": "decision",
        "request_id": web_request,
        "level": "info",
        "timestamp": "",
    }
    # ISO 8601 in UTC to the microsecond, and the time the line was written (the clock is simulated).
    for line in lines:
        stamped = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs(stamped.timestamp() - time.time()) < 300, line
    assert by_id[fallback_id]["fallback"] is True
    assert (by_id[fallback_id]["reason"], by_id[fallback_id]["level"]) == ("store", "warning")
    assert by_id[fallback_id]["request_id"] == fallback.headers["x-request-id"]
    assert by_id[fallback_id]["customer"] == who
    assert (by_id[trigger_id]["source"], by_id[trigger_id]["customer"]) == ("trigger", who)
    assert "request_id" not in by_id[trigger_id]  # not made in a request
    assert fired["customer"] == who

    [error, lane_error] = [e for e in lines if e["event"] == "unhandled_error"]
    assert error["request_id"] == bug.headers["x-request-id"]
    assert error["route"] == "/v1/customers/{customer_id}"
    assert (lane_error["request_id"], lane_error["route"]) == ("req-bug-7", "/v1/decide")
    for logged_error in (error, lane_error):
        assert "exception" in logged_error  # with its traceback, without the frames' local values
        assert "locals" not in json.dumps(logged_error["exception"])


def test_a_pseudonym_is_stable_keyed_and_the_same_whichever_key_logs_the_customer() -> None:
    from app.logging import pseudonymizer

    hide = pseudonymizer(b"one-salt-of-16-chars")
    event = hide(None, "info", {"customer_id": "c-1", "customer": "c:c-1", "anonymous_id": "v-1", "n": 3})
    assert event["customer_id"] == event["customer"] == pseudonym(b"one-salt-of-16-chars", "c:c-1")
    assert event["anonymous_id"] == pseudonym(b"one-salt-of-16-chars", "a:v-1")
    assert event["n"] == 3
    assert len(event["customer"]) == 16
    other = pseudonymizer(b"another-salt-16-chars")(None, "info", {"customer": "c:c-1"})
    assert other["customer"] != event["customer"]
    assert hide(None, "info", {"customer": None, "email": ["a@b.c"]}) == {
        "customer": None,
        "email": [pseudonym(b"one-salt-of-16-chars", "a@b.c")],
    }


def test_a_worker_that_stops_has_written_every_line_that_waited(redis_url: str) -> None:
    # A worker process: its info lines wait (app/logging.py Lines), here for an hour, and the process
    # ends without running its exit handlers. What the service logged is out all the same, because
    # the service writes what waits when it stops.
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        import httpx
        from asgi_lifespan import LifespanManager
        import app.logging
        from app.main import create_app
        from app.settings import Settings

        app.logging.FLUSH_AFTER_S = 3600

        async def main():
            settings = Settings(_env_file=None, redis_url={redis_url!r}, log_format="json")
            service = create_app(settings, watch=False)
            async with LifespanManager(service) as manager:
                transport = httpx.ASGITransport(app=manager.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://nba.test") as client:
                    body = {{"customer_id": "c-1", "placement": "web.home"}}
                    answer = await client.post("/v1/decide", json=body)
                    print(answer.json()["decision_id"], flush=True)

        asyncio.run(main())
        os._exit(0)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env = {k: v for k, v in env.items() if not k.startswith("NBA_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    decision_id = done.stdout.decode().strip()
    lines = logged(done.stderr.decode())
    assert [line["decision_id"] for line in lines if line["event"] == "decision"] == [decision_id]

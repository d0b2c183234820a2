"""Decisions and outcomes through the real app, on a small catalogue whose answers are known."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.routes.decisions import _answer
from tests.conftest import AppFactory, Clock

CATALOGUE = Path(__file__).parents[1] / "fixtures" / "catalogue"


@pytest.fixture
async def api(make_client: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(policies=CATALOGUE) as client:
        yield client


async def faq_views(api: httpx.AsyncClient, customer: str, n: int) -> None:
    events = [
        {"customer_id": customer, "type": "faq_view", "properties": {"article_id": f"a{i}"}} for i in range(n)
    ]
    assert (await api.post("/v1/events", json={"events": events})).status_code == 202


async def decide(api: httpx.AsyncClient, **body: object) -> dict[str, object]:
    r = await api.post("/v1/decide", json={"customer_id": "c-1", "placement": "web.product_page", **body})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_faq_reader_gets_proactive_chat_with_its_reasons(api: httpx.AsyncClient) -> None:
    quiet = await decide(api, explain=True)
    assert [a["action_id"] for a in quiet["actions"]] == ["generic_banner"]
    await faq_views(api, "c-1", 2)
    answer = await decide(api, explain=True, context={"device": "mobile"})
    assert answer["group"] == "treatment"
    assert answer["fallback"] is False
    assert answer["policy_version"] == "test-1"
    assert answer["model_version"] == "prior"
    [action] = answer["actions"]
    assert action["action_id"] == "proactive_chat"
    assert action["probability"] == 1.0
    assert action["payload"] == {"message": "Questions? We're here."}
    statuses = {v["action_id"]: v["status"] for v in answer["explanation"]}
    assert statuses == {
        "proactive_chat": "chosen",
        "generic_banner": "not_chosen",
        "service_notice": "ineligible",
        "cart_email": "ineligible",
    }


async def test_the_event_in_a_decide_is_applied_before_deciding(api: httpx.AsyncClient) -> None:
    await faq_views(api, "c-1", 1)
    event = {"type": "faq_view", "event_id": "e-9", "properties": {"article_id": "x"}}
    answer = await decide(api, event=event)
    assert answer["event"] == {"accepted": 1, "duplicates": 0}
    assert [a["action_id"] for a in answer["actions"]] == ["proactive_chat"]
    again = await decide(api, event={"type": "faq_view", "event_id": "e-9"})
    assert again["event"] == {"accepted": 0, "duplicates": 1}


async def test_cart_email_needs_consent(api: httpx.AsyncClient) -> None:
    cart = {"customer_id": "c-1", "type": "add_to_cart", "properties": {"item_id": "sku-1", "price": 20}}
    await api.post("/v1/events", json=cart)
    body = {"placement": "email.cart_recovery", "explain": True}
    without = await decide(api, **body)
    assert without["actions"] == []
    assert {v["action_id"]: v["status"] for v in without["explanation"]}["cart_email"] == "no_consent"
    consent = {"customer_id": "c-1", "type": "consent", "properties": {"channel": "email", "granted": True}}
    await api.post("/v1/events", json=consent)
    granted = await decide(api, **body)
    assert [a["action_id"] for a in granted["actions"]] == ["cart_email"]
    capped = await decide(api, **body)
    assert capped["actions"] == []
    verdict = {v["action_id"]: v for v in capped["explanation"]}["cart_email"]
    assert verdict["status"] == "capped"
    assert "email channel limit of 1 per 24h" in verdict["reason"]


async def test_a_dismissal_cools_the_action_down_and_outcomes_are_idempotent(
    api: httpx.AsyncClient, clock: Clock
) -> None:
    await faq_views(api, "c-1", 2)
    first = await decide(api)
    outcome = {"decision_id": first["decision_id"], "action_id": "proactive_chat", "type": "dismiss"}
    r = await api.post("/v1/outcomes", json=outcome)
    assert r.status_code == 202
    assert r.json() == {"accepted": 1, "duplicates": 0, "errors": []}
    assert (await api.post("/v1/outcomes", json=outcome)).json()["duplicates"] == 1
    cooled = await decide(api, explain=True)
    assert [a["action_id"] for a in cooled["actions"]] == ["generic_banner"]
    verdict = {v["action_id"]: v for v in cooled["explanation"]}["proactive_chat"]
    assert (verdict["status"], verdict["reason"]) == ("suppressed", "dismissed within 1h")
    clock.advance(3601)
    await faq_views(api, "c-1", 2)
    assert [a["action_id"] for a in (await decide(api))["actions"]] == ["proactive_chat"]


async def test_outcome_errors(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/outcomes", json={"decision_id": "d-nope", "action_id": "x", "type": "click"})
    assert r.status_code == 404
    assert r.json()["error"] == "decision_not_found"
    answer = await decide(api)
    wrong = {"decision_id": answer["decision_id"], "action_id": "cart_email", "type": "click"}
    r = await api.post("/v1/outcomes", json=wrong)
    assert r.status_code == 422
    assert r.json()["error"] == "action_not_in_decision"
    right = {"decision_id": answer["decision_id"], "action_id": "generic_banner", "type": "click"}
    batch = await api.post("/v1/outcomes", json={"outcomes": [right, wrong, {**right, "decision_id": "d-x"}]})
    assert batch.status_code == 202
    body = batch.json()
    assert (body["accepted"], body["duplicates"]) == (1, 0)
    errors = [(e["index"], e["error"]) for e in body["errors"]]
    assert errors == [(1, "action_not_in_decision"), (2, "decision_not_found")]


async def test_unknown_placement_is_a_422_that_lists_the_known_ones(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/decide", json={"customer_id": "c-1", "placement": "web.nowhere"})
    assert r.status_code == 422
    assert r.json()["error"] == "unknown_placement"
    assert "web.product_page" in r.json()["detail"]


async def test_a_body_sent_in_pieces_is_decided(api: httpx.AsyncClient) -> None:
    data = json.dumps({"customer_id": "c-1", "placement": "web.product_page"}).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 7):
            yield data[start : start + 7]

    r = await api.post("/v1/decide", content=pieces(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 200, r.text
    assert [a["action_id"] for a in r.json()["actions"]] == ["generic_banner"]


async def test_the_fast_lane_answers_what_the_route_would(api: httpx.AsyncClient) -> None:
    """The lane writes its answer's headers itself: those of the route's Response, and the request id."""
    body = {"customer_id": "c-1", "placement": "web.faq", "event": {"type": "faq_view"}, "explain": True}
    r = await api.post("/v1/decide", json=body, headers={"x-request-id": "lane-1"})
    assert r.status_code == 200, r.text
    route = _answer(r.json())
    assert r.content == route.body
    assert r.headers.raw == [*route.raw_headers, (b"x-request-id", b"lane-1")]


# Bodies the fast lane (app/routes/decisions.py FastDecide) does not take: the route answers them.
@pytest.mark.parametrize(
    ("body", "code", "field", "hint"),
    [
        pytest.param(b'{"customer_id":"c-1","placement":"web.home","context":{"x":NaN}}', "invalid_request",
                     "context.x", "finite", id="nan"),
        pytest.param(b"[1]", "invalid_request", "body", "dictionary", id="array"),
        pytest.param(b"", "invalid_request", "body", "required", id="empty"),
        pytest.param(b'{"customer_id": "c-1"', "invalid_json", None, "at character 21", id="cut-short"),
        pytest.param(b'{"placement":"web.home"}', "invalid_request", "body", "customer_id", id="no-id"),
    ],
)  # fmt: skip
async def test_a_body_that_does_not_fit_is_answered_by_the_route(
    api: httpx.AsyncClient, body: bytes, code: str, field: str | None, hint: str
) -> None:
    r = await api.post("/v1/decide", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    answer = r.json()
    assert answer["error"] == code
    assert hint in answer["detail"]
    assert [f["field"] for f in answer.get("fields", [])] == ([field] if field else [])


async def test_actions_lists_the_catalogue(api: httpx.AsyncClient) -> None:
    body = (await api.get("/v1/actions")).json()
    assert body["version"] == "test-1"
    ids = {a["id"] for a in body["actions"]}
    assert ids == {"proactive_chat", "generic_banner", "service_notice", "cart_email"}

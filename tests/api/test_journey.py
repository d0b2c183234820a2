"""A customer's journey through the shipped catalogue, as a website and a marketing platform see it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from feature_store.features import feature_names
from policies import holdout
from policies.catalogue import default_path, load
from tests.conftest import AppFactory, Clock


def treatment_customer(prefix: str) -> str:
    """A customer id that the shipped catalogue's holdout puts in treatment (95% of ids are)."""
    shipped = load(default_path(), feature_names()).holdout
    return next(
        f"{prefix}-{i}"
        for i in range(100)
        if holdout.group(shipped.seed, shipped.share, f"c:{prefix}-{i}") == holdout.TREATMENT
    )


@pytest.fixture
async def api(make_client: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as client:
        yield client


async def send(api: httpx.AsyncClient, customer: str, *events: dict[str, Any]) -> None:
    batch = [{"customer_id": customer, **event} for event in events]
    r = await api.post("/v1/events", json={"events": batch})
    assert r.status_code == 202, r.text


async def decide(api: httpx.AsyncClient, customer: str, placement: str, **body: Any) -> dict[str, Any]:
    request = {"customer_id": customer, "placement": placement, "explain": True, **body}
    r = await api.post("/v1/decide", json=request)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    assert answer["group"] == "treatment"
    assert answer["fallback"] is False
    return answer


def verdicts(answer: dict[str, Any]) -> dict[str, str]:
    return {v["action_id"]: v["status"] for v in answer["explanation"]}


async def test_faq_reader_is_offered_a_proactive_chat(api: httpx.AsyncClient) -> None:
    customer = treatment_customer("faq")
    before = await decide(api, customer, "chat.proactive")
    assert verdicts(before)["proactive_chat_help"] == "ineligible"
    reads = [{"type": "faq_view", "properties": {"article_id": f"a-{i}"}} for i in range(2)]
    await send(api, customer, *reads)
    after = await decide(api, customer, "chat.proactive", context={"device": "desktop"})
    assert [a["action_id"] for a in after["actions"]] == ["proactive_chat_help"]
    assert after["actions"][0]["payload"]["cta"] == "Chat with us"


async def test_abandoned_cart_email_needs_email_consent(api: httpx.AsyncClient, clock: Clock) -> None:
    customer = treatment_customer("cart")
    await send(api, customer, {"type": "add_to_cart", "properties": {"item_id": "sku-1", "price": 30.0}})
    clock.advance(31 * 60)
    without = await decide(api, customer, "email.cart_recovery")
    assert without["actions"] == []
    assert verdicts(without)["cart_recovery_email"] == "no_consent"

    await send(api, customer, {"type": "consent", "properties": {"channel": "email", "granted": True}})
    with_consent = await decide(api, customer, "email.cart_recovery")
    assert [a["action_id"] for a in with_consent["actions"]] == ["cart_recovery_email"]
    assert with_consent["actions"][0]["probability"] == 1.0

    await send(api, customer, {"type": "purchase", "properties": {"order_id": "o-1"}})
    bought = await decide(api, customer, "email.cart_recovery")
    assert bought["actions"] == []
    assert verdicts(bought)["cart_recovery_email"] == "ineligible"

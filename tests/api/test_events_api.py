"""Events through the real app: what a website or platform sends, and the profile it builds."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from tests.conftest import Clock


def at(clock: Clock, seconds_ago: float = 0) -> str:
    return datetime.fromtimestamp(clock.now - seconds_ago, tz=UTC).isoformat().replace("+00:00", "Z")


async def test_single_event_updates_profile(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/events",
        json={
            "customer_id": "c-42",
            "type": "add_to_cart",
            "properties": {"item_id": "sku-1", "price": 19.9},
        },
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0}
    profile = (await client.get("/v1/customers/c-42")).json()
    assert profile["cart"]["items"][0]["item_id"] == "sku-1"
    assert profile["cart"]["value"] == 19.9
    assert profile["stage"] == "purchase"
    assert profile["counts"]["add_to_cart"]["total"] == 1


async def test_batch_with_duplicates(client: httpx.AsyncClient, clock: Clock) -> None:
    events = [
        {"event_id": f"e{i % 3}", "customer_id": f"c{i % 2}", "type": "page_view", "timestamp": at(clock, i)}
        for i in range(6)
    ]
    r = await client.post("/v1/events", json={"events": events})
    assert r.status_code == 202, r.text
    # e0/c0, e1/c1, e2/c0, e0/c1, e1/c0, e2/c1: every pair is new once.
    assert r.json() == {"accepted": 6, "duplicates": 0}
    r = await client.post("/v1/events", json={"events": events})
    assert r.json() == {"accepted": 0, "duplicates": 6}


async def test_ids_with_slashes_can_be_read_and_erased(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", json={"customer_id": "shop/eu/42", "type": "page_view"})
    assert r.status_code == 202
    profile = await client.get("/v1/customers/shop/eu/42")
    assert profile.status_code == 200
    assert profile.json()["id"] == "shop/eu/42"
    assert (await client.delete("/v1/customers/shop%2Feu%2F42")).status_code == 204
    assert (await client.get("/v1/customers/shop/eu/42")).status_code == 404


async def test_a_post_without_a_body_needs_no_content_type(client: httpx.AsyncClient) -> None:
    """`curl -X POST .../v1/admin/reload` sends neither a body nor Content-Length nor Content-Type."""
    request = client.build_request("POST", "/v1/admin/reload")
    request.headers.pop("content-length", None)
    assert "content-type" not in request.headers
    response = await client.send(request)
    assert response.status_code == 200, response.text
    assert response.json()["actions"] > 0

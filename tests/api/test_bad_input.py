"""What the API answers to input it cannot take: the status, one error shape, a field path that points at
the problem, a detail that says what to fix, and nothing applied. See ../shared/API.md, "Conventions"."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import AppFactory, Clock

CODE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def error_body(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The one error shape: ``error`` (snake_case), ``detail``, and on 422s maybe ``fields``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    assert set(body) <= {"error", "detail", "fields"}, body
    assert CODE.match(body["error"]), body
    assert body["error"] == code, body
    assert isinstance(body["detail"], str)
    assert len(body["detail"]) > 20, body  # a sentence, not a bare status phrase
    return body


def invalid(r: httpx.Response, field: str, *hints: str, code: str = "invalid_request") -> dict[str, str]:
    """A 422 whose ``fields`` names ``field`` and whose problem (or detail) carries every hint."""
    body = error_body(r, 422, code)
    assert isinstance(body["fields"], list), body
    for entry in body["fields"]:
        assert set(entry) == {"field", "problem"}, entry
    problems = {entry["field"]: entry["problem"] for entry in body["fields"]}
    assert field in problems, body
    assert field in body["detail"], body
    for hint in hints:
        assert hint.lower() in problems[field].lower(), (hint, body)
        assert hint.lower() in body["detail"].lower(), (hint, body)
    return problems


async def unknown(client: httpx.AsyncClient, profile_id: str, id_type: str = "customer") -> None:
    """Nothing was applied for ``profile_id``: the service has no profile for it."""
    r = await client.get(f"/v1/customers/{profile_id}", params={"id_type": id_type})
    error_body(r, 404, "customer_not_found")


def at(clock: Clock, seconds_ahead: float = 0) -> str:
    return datetime.fromtimestamp(clock.now + seconds_ahead, tz=UTC).isoformat().replace("+00:00", "Z")


def ok_event(customer_id: str = "c-ok", **extra: Any) -> dict[str, Any]:
    return {"customer_id": customer_id, "type": "page_view", **extra}


def cart(**properties: Any) -> dict[str, Any]:
    return {"customer_id": "c-1", "type": "add_to_cart", "properties": properties}


def consent(**properties: Any) -> dict[str, Any]:
    return {"customer_id": "c-1", "type": "consent", "properties": properties}


# ---------------------------------------------------------------------------------------------------
# POST /v1/events: one event that does not fit
# ---------------------------------------------------------------------------------------------------

SINGLE = [
    pytest.param({**ok_event("c-1"), "colour": "red"}, "colour", (), id="unknown-field"),
    pytest.param({**ok_event("c-1"), "Type": "page_view"}, "Type", (), id="unknown-field-wrong-case"),
    pytest.param(
        {"customer_id": 42, "type": "page_view"}, "customer_id", ("string",), id="customer-id-number"
    ),
    pytest.param({"customer_id": "c-1", "type": 7}, "type", ("string",), id="type-number"),
    pytest.param({"customer_id": "c-1", "type": None}, "type", ("string",), id="type-null"),
    pytest.param({"customer_id": "c-1"}, "type", ("required",), id="type-missing"),
    pytest.param(
        {**ok_event("c-1"), "properties": ["a", "b"]}, "properties", ("dictionary",), id="props-list"
    ),
    pytest.param(
        {**ok_event("c-1"), "properties": {"size": {"eu": 42}}},
        "properties.size",
        ("nested",),
        id="prop-nested-object",
    ),
    pytest.param(
        {**ok_event("c-1"), "properties": {"sizes": [{"eu": 42}]}},
        "properties.sizes",
        ("nested",),
        id="prop-list-of-objects",
    ),
    pytest.param(
        {**ok_event("c-1"), "properties": {"tags": list(range(33))}},
        "properties.tags",
        ("32",),
        id="prop-list-too-long",
    ),
    pytest.param(
        {**ok_event("c-1"), "properties": {"note": "x" * 1025}},
        "properties.note",
        ("1024",),
        id="prop-string-too-long",
    ),
    pytest.param(
        {**ok_event("c-1"), "properties": {f"p{i}": i for i in range(65)}},
        "properties",
        ("64",),
        id="too-many-props",
    ),
    pytest.param(
        {**ok_event("c-1"), "properties": {"bad key": 1}}, "properties.bad key", (), id="prop-name-with-space"
    ),
    # Names the client chose are kept in the path even when they look like the parser's own words.
    pytest.param(
        {**ok_event("c-1"), "properties": {"batch": {"x": 1}}},
        "properties.batch",
        ("nested",),
        id="prop-named-batch",
    ),
    pytest.param(
        {**ok_event("c-1"), "properties": {"body": {"x": 1}}},
        "properties.body",
        ("nested",),
        id="prop-named-body",
    ),
    pytest.param(
        cart(item_id="sku-1", price="19.90"), "properties", ("price", "number"), id="cart-price-string"
    ),
    pytest.param({**ok_event("c-1"), "event_id": "e" * 129}, "event_id", ("128",), id="event-id-129"),
    pytest.param(
        {"customer_id": "c" * 129, "type": "page_view"}, "customer_id", ("128",), id="customer-id-129"
    ),
    pytest.param(
        {"anonymous_id": "a" * 129, "type": "page_view"}, "anonymous_id", ("128",), id="anonymous-id-129"
    ),
    pytest.param(
        {"customer_id": "c-1\n", "type": "page_view"}, "customer_id", ("printable",), id="id-newline"
    ),
    pytest.param({"customer_id": "c-\x00", "type": "page_view"}, "customer_id", ("printable",), id="id-nul"),
    pytest.param(
        {"anonymous_id": "a\x1b[31m", "type": "page_view"}, "anonymous_id", ("printable",), id="id-escape"
    ),
    pytest.param({**ok_event("c-1"), "event_id": "e\t1"}, "event_id", ("printable",), id="event-id-tab"),
    pytest.param({"customer_id": "", "type": "page_view"}, "customer_id", ("1 character",), id="id-empty"),
    pytest.param({**ok_event("c-1"), "event_id": ""}, "event_id", ("1 character",), id="event-id-empty"),
    pytest.param({"type": "page_view"}, "body", ("customer_id", "anonymous_id"), id="no-id"),
    pytest.param(
        {"customer_id": None, "anonymous_id": None, "type": "page_view"},
        "body",
        ("customer_id", "anonymous_id"),
        id="ids-null",
    ),
    pytest.param({"customer_id": "c-1", "type": "PageView"}, "type", ("pattern",), id="type-capitals"),
    pytest.param({"customer_id": "c-1", "type": "1st_visit"}, "type", ("pattern",), id="type-digit-first"),
    pytest.param({"customer_id": "c-1", "type": "page view"}, "type", ("pattern",), id="type-space"),
    pytest.param({"customer_id": "c-1", "type": "page-view"}, "type", ("pattern",), id="type-hyphen"),
    pytest.param({"customer_id": "c-1", "type": ""}, "type", ("pattern",), id="type-empty"),
    pytest.param({"customer_id": "c-1", "type": "a" * 65}, "type", ("pattern",), id="type-65"),
    pytest.param(
        {**ok_event("c-1"), "timestamp": "2026-11-22T10:00:00"}, "timestamp", ("timezone",), id="ts-naive"
    ),
    pytest.param({**ok_event("c-1"), "timestamp": 1764000000}, "timestamp", ("RFC 3339",), id="ts-number"),
    # A Unix time in quotes is still not RFC 3339, and whether it counts seconds or milliseconds is a guess.
    pytest.param({**ok_event("c-1"), "timestamp": "1764000000"}, "timestamp", ("RFC 3339",), id="ts-digits"),
    pytest.param({**ok_event("c-1"), "timestamp": "2026-11-22"}, "timestamp", ("RFC 3339",), id="ts-date"),
    pytest.param({**ok_event("c-1"), "timestamp": "yesterday"}, "timestamp", ("RFC 3339",), id="ts-word"),
    pytest.param(
        {**ok_event("c-1"), "timestamp": "2026-13-22T10:00:00Z"}, "timestamp", ("month",), id="ts-month-13"
    ),
]


@pytest.mark.parametrize(("event", "field", "hints"), SINGLE)
async def test_event_that_does_not_fit(
    client: httpx.AsyncClient, event: dict[str, Any], field: str, hints: tuple[str, ...]
) -> None:
    r = await client.post("/v1/events", json=event)
    invalid(r, field, *hints)
    await unknown(client, "c-1")


# The well-known types' rules (feature_store/events.py): the detail names the property at fault.
TYPE_RULES = [
    pytest.param(cart(price=9.5), "item_id", id="cart-without-item"),
    pytest.param(cart(item_id=""), "item_id", id="cart-empty-item"),
    pytest.param(cart(item_id="sku-1", quantity=0), "quantity", id="cart-quantity-0"),
    pytest.param(cart(item_id="sku-1", quantity=1.5), "quantity", id="cart-quantity-1.5"),
    pytest.param(cart(item_id="sku-1", quantity=True), "quantity", id="cart-quantity-bool"),
    pytest.param(cart(item_id="sku-1", price=-1), "price", id="cart-price-negative"),
    pytest.param(
        {"customer_id": "c-1", "type": "remove_from_cart", "properties": {}},
        "item_id",
        id="remove-without-item",
    ),
    pytest.param(consent(channel="email"), "granted", id="consent-without-granted"),
    pytest.param(consent(channel="email", granted="yes"), "granted", id="consent-granted-string"),
    pytest.param(consent(granted=True), "channel", id="consent-without-channel"),
    pytest.param(consent(channel="Email", granted=True), "channel", id="consent-channel-capitals"),
    pytest.param(
        {"customer_id": "c-1", "type": "purchase", "properties": {"item_ids": "sku-1"}},
        "item_ids",
        id="purchase-item-ids-string",
    ),
    pytest.param(
        {"customer_id": "c-1", "type": "purchase", "properties": {"item_ids": ["sku-1", 2]}},
        "item_ids",
        id="purchase-item-ids-number",
    ),
    pytest.param(
        {"customer_id": "c-1", "type": "purchase", "properties": {"revenue": "10"}},
        "revenue",
        id="purchase-revenue-string",
    ),
    pytest.param(
        {"customer_id": "c-1", "type": "unsubscribe", "properties": {"channel": "e mail"}},
        "channel",
        id="unsubscribe-bad-channel",
    ),
]


@pytest.mark.parametrize(("event", "prop"), TYPE_RULES)
async def test_well_known_type_rules(client: httpx.AsyncClient, event: dict[str, Any], prop: str) -> None:
    r = await client.post("/v1/events", json=event)
    problems = invalid(r, "properties", prop, event["type"])
    assert prop in problems["properties"]
    await unknown(client, "c-1")


async def test_the_same_properties_fit_an_unknown_type(client: httpx.AsyncClient) -> None:
    """The rules belong to the well-known types; a type of the client's own takes any properties."""
    r = await client.post(
        "/v1/events",
        json={"customer_id": "c-1", "type": "acme.cart_added", "properties": {"quantity": 1.5, "price": "x"}},
    )
    assert r.status_code == 202, r.text


# ---------------------------------------------------------------------------------------------------
# POST /v1/events: batches, applied whole or not at all
# ---------------------------------------------------------------------------------------------------


def batch(*bad: tuple[int, dict[str, Any]], size: int = 5) -> dict[str, Any]:
    """``size`` good events for customers b-0, b-1, ..., with the events at the given indexes replaced."""
    events = [ok_event(f"b-{i}", event_id=f"e-{i}") for i in range(size)]
    for index, event in bad:
        events[index] = event
    return {"events": events}


async def nothing_applied(client: httpx.AsyncClient, size: int = 5) -> None:
    for i in range(size):
        await unknown(client, f"b-{i}")


BATCH = [
    pytest.param(batch((3, ok_event("b-3", colour="red"))), "events[3].colour", (), id="unknown-field"),
    pytest.param(
        batch((2, {"customer_id": "b-2", "type": 7})), "events[2].type", ("string",), id="type-number"
    ),
    pytest.param(
        batch((1, {"customer_id": "b-1", "type": "Page"})), "events[1].type", ("pattern",), id="type-pattern"
    ),
    pytest.param(batch((4, {"type": "page_view"})), "events[4]", ("customer_id",), id="no-id"),
    pytest.param(
        batch((0, {"customer_id": "b" * 129, "type": "page_view"})),
        "events[0].customer_id",
        ("128",),
        id="long-id",
    ),
    pytest.param(
        batch((2, {**consent(channel="email"), "customer_id": "b-2"})),
        "events[2].properties",
        ("granted",),
        id="type-rule",
    ),
    pytest.param(
        batch((1, ok_event("b-1", properties={"size": {"eu": 42}}))),
        "events[1].properties.size",
        ("nested",),
        id="nested-property",
    ),
    pytest.param(
        batch((3, ok_event("b-3", timestamp="2026-11-22T10:00:00"))),
        "events[3].timestamp",
        ("timezone",),
        id="naive-timestamp",
    ),
    pytest.param(batch((2, "page_view")), "events[2]", (), id="item-not-an-object"),  # type: ignore[arg-type]
    pytest.param({**batch(), "colour": "red"}, "colour", (), id="unknown-field-beside-events"),
    pytest.param({"events": []}, "events", ("at least 1",), id="empty"),
    pytest.param({"events": ok_event("b-0")}, "events", ("list",), id="not-a-list"),
    pytest.param({"events": None}, "events", ("list",), id="null"),
]


@pytest.mark.parametrize(("body", "field", "hints"), BATCH)
async def test_batch_that_does_not_fit(
    client: httpx.AsyncClient, body: dict[str, Any], field: str, hints: tuple[str, ...]
) -> None:
    r = await client.post("/v1/events", json=body)
    invalid(r, field, *hints)
    await nothing_applied(client)


async def test_batch_names_every_bad_item(client: httpx.AsyncClient) -> None:
    body = batch((1, ok_event("b-1", colour="red")), (3, {"customer_id": "b-3", "type": "X"}))
    problems = invalid(await client.post("/v1/events", json=body), "events[1].colour")
    assert set(problems) == {"events[1].colour", "events[3].type"}
    await nothing_applied(client)


async def test_batch_of_1001_is_refused_whole(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", json=batch(size=1001))
    invalid(r, "events", "1000")
    await nothing_applied(client, size=3)


async def test_batch_of_1000_is_taken(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", json=batch(size=1000))
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 1000, "duplicates": 0}


# ---------------------------------------------------------------------------------------------------
# POST /v1/events: event times against the service clock (5 minutes of tolerance by default)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ahead", [86_400, 301])
async def test_event_from_the_future_is_refused(client: httpx.AsyncClient, clock: Clock, ahead: int) -> None:
    r = await client.post("/v1/events", json=ok_event("c-1", timestamp=at(clock, ahead)))
    problems = invalid(r, "timestamp", "future", code="timestamp_in_future")
    assert f"{ahead}s" in problems["timestamp"]
    await unknown(client, "c-1")


@pytest.mark.parametrize("ahead", [60, 299])
async def test_event_a_little_ahead_is_taken(client: httpx.AsyncClient, clock: Clock, ahead: int) -> None:
    """Senders' clocks drift: a few minutes ahead is taken as it is."""
    r = await client.post("/v1/events", json=ok_event("c-1", timestamp=at(clock, ahead)))
    assert r.status_code == 202, r.text
    profile = (await client.get("/v1/customers/c-1")).json()
    assert profile["counts"]["page_view"]["total"] == 1


async def test_future_is_judged_by_the_service_clock(client: httpx.AsyncClient, clock: Clock) -> None:
    event = ok_event("c-1", timestamp=at(clock, 86_400))
    error_body(await client.post("/v1/events", json=event), 422, "timestamp_in_future")
    clock.advance(86_400)
    r = await client.post("/v1/events", json=event)
    assert r.status_code == 202, r.text


async def test_one_future_event_refuses_the_whole_batch(client: httpx.AsyncClient, clock: Clock) -> None:
    body = batch((2, ok_event("b-2", timestamp=at(clock, 86_400))))
    body["events"][0]["timestamp"] = at(clock, -60)
    r = await client.post("/v1/events", json=body)
    problems = invalid(r, "events[2].timestamp", "future", code="timestamp_in_future")
    assert set(problems) == {"events[2].timestamp"}
    assert "nothing was applied" in r.json()["detail"]
    await nothing_applied(client)


# ---------------------------------------------------------------------------------------------------
# POST /v1/events: the body as a whole
# ---------------------------------------------------------------------------------------------------


async def chunks(data: bytes, size: int = 500) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def padded(body: dict[str, Any], length: int) -> bytes:
    """``body`` as JSON, padded with trailing whitespace (still valid JSON) to exactly ``length`` bytes."""
    data = json.dumps(body).encode()
    assert len(data) <= length
    return data + b" " * (length - len(data))


JSON = {"content-type": "application/json"}
LIMIT = 2048


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_over_the_limit(make_client: AppFactory, chunked: bool) -> None:
    data = padded(batch(), LIMIT + 1)
    async with make_client(max_body_bytes=LIMIT) as client:
        r = await client.post("/v1/events", content=chunks(data) if chunked else data, headers=JSON)
        assert ("content-length" not in r.request.headers) is chunked
        body = error_body(r, 413, "payload_too_large")
        assert str(LIMIT) in body["detail"]
        await nothing_applied(client)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_at_the_limit_is_taken(make_client: AppFactory, chunked: bool) -> None:
    data = padded(batch(), LIMIT)
    async with make_client(max_body_bytes=LIMIT) as client:
        r = await client.post("/v1/events", content=chunks(data) if chunked else data, headers=JSON)
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": 5, "duplicates": 0}


# The decisions' fast lane (app/routes/decisions.py) takes only JSON bodies within the limit; the rest it
# hands on to the full stack, whose limits answer them as for any route.
DECIDE = {"customer_id": "c-1", "placement": "web.home", "event": {"type": "page_view"}}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_decide_body_over_the_limit(make_client: AppFactory, chunked: bool) -> None:
    data = padded(DECIDE, LIMIT + 1)
    async with make_client(max_body_bytes=LIMIT) as client:
        r = await client.post("/v1/decide", content=chunks(data, 700) if chunked else data, headers=JSON)
        assert str(LIMIT) in error_body(r, 413, "payload_too_large")["detail"]
        await unknown(client, "c-1")
        r = await client.post("/v1/decide", content=padded(DECIDE, LIMIT), headers=JSON)
        assert (r.status_code, r.json()["fallback"]) == (200, False)


@pytest.mark.parametrize(
    "headers",
    [pytest.param({"content-type": "text/plain"}, id="text-plain"), pytest.param({}, id="none")],
)
async def test_decide_body_that_is_not_json_by_its_content_type(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    r = await client.post("/v1/decide", content=json.dumps(DECIDE).encode(), headers=headers)
    assert "application/json" in error_body(r, 415, "unsupported_media_type")["detail"]
    await unknown(client, "c-1")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"content-type": "text/plain"}, id="text-plain"),
        pytest.param({"content-type": "application/x-www-form-urlencoded"}, id="form"),
        pytest.param({"content-type": "multipart/form-data; boundary=x"}, id="multipart"),
        pytest.param({}, id="none"),
    ],
)
async def test_body_that_is_not_json_by_its_content_type(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    r = await client.post("/v1/events", content=json.dumps(ok_event("c-1")).encode(), headers=headers)
    body = error_body(r, 415, "unsupported_media_type")
    assert "application/json" in body["detail"]
    await unknown(client, "c-1")


async def test_form_body_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", data={"customer_id": "c-1", "type": "page_view"})
    error_body(r, 415, "unsupported_media_type")
    await unknown(client, "c-1")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.nba+json"])
async def test_json_content_types_are_taken(client: httpx.AsyncClient, content_type: str) -> None:
    data = json.dumps(ok_event("c-1")).encode()
    r = await client.post("/v1/events", content=data, headers={"content-type": content_type})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    "data", [b'{"customer_id": "c-1", "type": "page_view",', b"{'customer_id': 'c-1'}", b"\xff\xfe", b"nul"]
)
async def test_invalid_json(client: httpx.AsyncClient, data: bytes) -> None:
    r = await client.post("/v1/events", content=data, headers=JSON)
    body = error_body(r, 422, "invalid_json")
    assert "JSON" in body["detail"]
    assert "character" in body["detail"]  # where the decoder gave up
    assert "decode error" not in body["detail"].lower()  # the decoder's reason, not a placeholder


@pytest.mark.parametrize(
    "data",
    [
        pytest.param([ok_event("c-1")], id="array"),
        pytest.param("page_view", id="string"),
        pytest.param(42, id="number"),
    ],
)
async def test_body_that_is_not_an_object(client: httpx.AsyncClient, data: Any) -> None:
    r = await client.post("/v1/events", json=data)
    invalid(r, "body")
    await unknown(client, "c-1")


@pytest.mark.parametrize("data", [b"", b"null"], ids=["empty", "null"])
async def test_body_missing(client: httpx.AsyncClient, data: bytes) -> None:
    invalid(await client.post("/v1/events", content=data, headers=JSON), "body")


# ---------------------------------------------------------------------------------------------------
# POST /v1/identities
# ---------------------------------------------------------------------------------------------------

LINK = {"anonymous_id": "a-1", "customer_id": "c-1"}


@pytest.mark.parametrize(
    ("body", "field", "hints"),
    [
        pytest.param({**LINK, "colour": "red"}, "colour", (), id="unknown-field"),
        pytest.param({"anonymous_id": "a-1"}, "customer_id", ("required",), id="no-customer-id"),
        pytest.param({"customer_id": "c-1"}, "anonymous_id", ("required",), id="no-anonymous-id"),
        pytest.param({**LINK, "customer_id": "c" * 129}, "customer_id", ("128",), id="customer-id-129"),
        pytest.param({**LINK, "anonymous_id": "a" * 129}, "anonymous_id", ("128",), id="anonymous-id-129"),
        pytest.param({**LINK, "customer_id": ""}, "customer_id", ("1 character",), id="customer-id-empty"),
        pytest.param(
            {**LINK, "anonymous_id": "a\n1"}, "anonymous_id", ("printable",), id="anonymous-id-newline"
        ),
        pytest.param({**LINK, "customer_id": 1}, "customer_id", ("string",), id="customer-id-number"),
    ],
)
async def test_identity_that_does_not_fit(
    client: httpx.AsyncClient, body: dict[str, Any], field: str, hints: tuple[str, ...]
) -> None:
    await client.post("/v1/events", json={"anonymous_id": "a-1", "type": "page_view"})
    invalid(await client.post("/v1/identities", json=body), field, *hints)
    # The visitor is still on its own: nothing was linked.
    r = await client.get("/v1/customers/a-1", params={"id_type": "anonymous"})
    assert r.json()["id"] == "a-1", r.text
    await unknown(client, "c-1")


async def test_identity_conflict_and_repeat(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", json={"anonymous_id": "a-1", "type": "page_view"})
    assert r.status_code == 202, r.text
    r = await client.post("/v1/identities", json=LINK)
    assert r.status_code == 200, r.text
    assert r.json() == {**LINK, "merged": True}

    # The same visitor cannot also become someone else.
    r = await client.post("/v1/identities", json={"anonymous_id": "a-1", "customer_id": "c-2"})
    body = error_body(r, 409, "identity_conflict")
    assert "a-1" in body["detail"]
    await unknown(client, "c-2")

    # Saying the same link again is an answer, not an error, and merges nothing twice.
    r = await client.post("/v1/identities", json=LINK)
    assert r.status_code == 200, r.text
    assert r.json() == {**LINK, "merged": False}
    profile = (await client.get("/v1/customers/a-1", params={"id_type": "anonymous"})).json()
    assert profile["id"] == "c-1"
    assert profile["anonymous_ids"] == ["a-1"]
    assert profile["counts"]["page_view"]["total"] == 1


# ---------------------------------------------------------------------------------------------------
# GET /v1/customers/{id}
# ---------------------------------------------------------------------------------------------------


async def test_unknown_customer(client: httpx.AsyncClient) -> None:
    body = error_body(await client.get("/v1/customers/c-nobody"), 404, "customer_not_found")
    assert "c-nobody" in body["detail"]
    assert "id_type=anonymous" in body["detail"]  # the likely mix-up, and its fix


async def test_unknown_anonymous_id(client: httpx.AsyncClient) -> None:
    await client.post("/v1/events", json=ok_event("c-1"))
    r = await client.get("/v1/customers/c-1", params={"id_type": "anonymous"})
    body = error_body(r, 404, "customer_not_found")
    assert "id_type=customer" in body["detail"]


@pytest.mark.parametrize(
    ("path", "field", "hints"),
    [
        pytest.param("/v1/customers/c-1?id_type=bogus", "query.id_type", ("anonymous",), id="id-type"),
        pytest.param("/v1/customers/" + "c" * 129, "path.customer_id", ("128",), id="id-129"),
        pytest.param("/v1/customers/c%0A1", "path.customer_id", ("printable",), id="id-newline"),
    ],
)
async def test_customer_lookup_that_does_not_fit(
    client: httpx.AsyncClient, path: str, field: str, hints: tuple[str, ...]
) -> None:
    invalid(await client.get(path), field, *hints)


async def test_id_of_128_is_looked_up(client: httpx.AsyncClient) -> None:
    long_id = "c" * 128
    assert (await client.post("/v1/events", json=ok_event(long_id))).status_code == 202
    r = await client.get(f"/v1/customers/{long_id}")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == long_id


# ---------------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/nope"), ("POST", "/v1/event"), ("GET", "/")])
async def test_unknown_route(client: httpx.AsyncClient, method: str, path: str) -> None:
    r = await client.request(method, path, json={})
    body = error_body(r, 404, "not_found")
    assert "/docs" in body["detail"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", "/v1/events", "POST"), ("PUT", "/v1/identities", "POST"), ("POST", "/v1/customers/c-1", "GET")],
)
async def test_wrong_method(client: httpx.AsyncClient, method: str, path: str, allowed: str) -> None:
    r = await client.request(method, path, json={} if method != "GET" else None)
    body = error_body(r, 405, "method_not_allowed")
    assert allowed in r.headers["allow"]
    assert method in body["detail"]
    assert allowed in body["detail"]

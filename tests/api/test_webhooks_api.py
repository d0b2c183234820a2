"""Inbound webhooks through the real app: signed deliveries from marketing platforms become events.

Deliveries are signed with the ``standardwebhooks`` package, as a sending platform signs them; the
catalogue declares the sources (docs/webhooks.md).
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.api.test_bad_input import error_body, invalid
from tests.conftest import AppFactory, Clock

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "catalogue"
CRM_SECRET = "whsec_" + base64.b64encode(b"crm-secret-for-tests-0123456789").decode()
RESEND_SECRET = "whsec_" + base64.b64encode(b"resend-secret-for-tests-012345").decode()
SOURCES = """
sources:
  crm: {secret: NBA_TEST_CRM_SECRET, format: generic}
  resend: {secret: NBA_TEST_RESEND_SECRET, format: resend, customer_tag: customer_id}
  forgotten: {secret: NBA_TEST_FORGOTTEN_SECRET}
"""


@pytest.fixture
def catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test catalogue plus a sources file; the secrets of crm and resend set, forgotten's not."""
    folder = tmp_path / "catalogue"
    shutil.copytree(FIXTURE, folder)
    (folder / "sources.yaml").write_text(SOURCES)
    monkeypatch.setenv("NBA_TEST_CRM_SECRET", CRM_SECRET)
    monkeypatch.setenv("NBA_TEST_RESEND_SECRET", RESEND_SECRET)
    monkeypatch.delenv("NBA_TEST_FORGOTTEN_SECRET", raising=False)
    return folder


@pytest.fixture
async def client(make_client: AppFactory, catalogue: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(policies=catalogue) as client:
        yield client


def signed(
    secret: str, body: Any, msg_id: str, at: float, *, family: str = "webhook"
) -> tuple[bytes, dict[str, str]]:
    """The body as a platform sends it, with its signature headers."""
    text = body if isinstance(body, str) else json.dumps(body)
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(at, UTC), text)
    headers = {
        "content-type": "application/json",
        f"{family}-id": msg_id,
        f"{family}-timestamp": str(int(at)),
        f"{family}-signature": signature,
    }
    return text.encode(), headers


async def deliver(
    client: httpx.AsyncClient,
    source: str,
    body: Any,
    *,
    clock: Clock,
    msg_id: str = "msg_1",
    secret: str | None = None,
    age_s: float = 0,
    family: str = "webhook",
) -> httpx.Response:
    default = RESEND_SECRET if source == "resend" else CRM_SECRET
    content, headers = signed(secret or default, body, msg_id, clock.now - age_s, family=family)
    return await client.post(f"/v1/webhooks/{source}", content=content, headers=headers)


def resend_event(kind: str, customer_id: str | None = "c-42", **data: Any) -> dict[str, Any]:
    """A Resend payload as its docs show it (https://resend.com/docs/dashboard/webhooks/event-types)."""
    tags = {"category": "cart_recovery"} | ({"customer_id": customer_id} if customer_id else {})
    return {
        "type": kind,
        "created_at": "2025-11-22T10:00:00.000Z",
        "data": {
            "created_at": "2025-11-22T09:59:58.123456+00:00",
            "email_id": "56761188-7520-42d8-8898-ff6fc54ce618",
            "from": "Acme <shop@example.com>",
            "to": ["someone@example.com"],
            "subject": "You left something behind",
            "tags": tags,
            **data,
        },
    }


def at(clock: Clock, seconds_ago: float = 0) -> str:
    return datetime.fromtimestamp(clock.now - seconds_ago, tz=UTC).isoformat().replace("+00:00", "Z")


async def profile(client: httpx.AsyncClient, customer_id: str) -> dict[str, Any]:
    r = await client.get(f"/v1/customers/{customer_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# ---------------------------------------------------------------------------------------------------
# Accepted deliveries change profiles
# ---------------------------------------------------------------------------------------------------


async def test_generic_delivery_applies_custom_and_well_known_events(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    await client.post(
        "/v1/events",
        json={"customer_id": "c-7", "type": "consent", "properties": {"channel": "email", "granted": True}},
    )
    body = {
        "events": [
            {"customer_id": "c-7", "type": "webinar_attended", "properties": {"webinar": "w-1"}},
            {"customer_id": "c-7", "type": "unsubscribe", "properties": {"channel": "email"}},
        ]
    }
    r = await deliver(client, "crm", body, clock=clock)
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 2, "duplicates": 0, "ignored": 0}
    seen = await profile(client, "c-7")
    assert seen["counts"]["webinar_attended"]["total"] == 1
    assert seen["consent"]["email"]["granted"] is False


async def test_resend_events_become_email_events(client: httpx.AsyncClient, clock: Clock) -> None:
    link = {"link": "https://shop.example.com/cart", "ipAddress": "192.0.2.1", "timestamp": "x"}
    bounce = {"message": "mailbox full", "subType": "General", "type": "Permanent"}
    deliveries = [
        resend_event("email.delivered"),
        resend_event("email.opened"),
        resend_event("email.clicked", click=link),
        resend_event("email.bounced", bounce=bounce),
    ]
    for number, payload in enumerate(deliveries):
        r = await deliver(client, "resend", payload, clock=clock, msg_id=f"msg_{number}", family="svix")
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": 1, "duplicates": 0, "ignored": 0}
    seen = await profile(client, "c-42")
    for kind in ("email_delivered", "email_open", "email_click", "email_bounced"):
        assert seen["counts"][kind]["total"] == 1, (kind, seen["counts"])
    assert seen["counts"]["email_open"]["last_at"] == "2025-11-22T10:00:00.000Z"


async def test_resend_complaint_withdraws_email_consent(client: httpx.AsyncClient, clock: Clock) -> None:
    await client.post(
        "/v1/events",
        json={"customer_id": "c-42", "type": "consent", "properties": {"channel": "email", "granted": True}},
    )
    assert (await profile(client, "c-42"))["consent"]["email"]["granted"] is True
    # Consent keeps the value with the latest event time: the complaint comes a second after the grant.
    clock.advance(1)
    complaint = resend_event("email.complained") | {"created_at": at(clock)}
    r = await deliver(client, "resend", complaint, clock=clock, family="svix")
    assert r.status_code == 202, r.text
    assert (await profile(client, "c-42"))["consent"]["email"]["granted"] is False


async def test_unmapped_resend_types_are_ignored_and_said_so(client: httpx.AsyncClient, clock: Clock) -> None:
    for number, kind in enumerate(("email.delivery_delayed", "contact.updated", "something.new")):
        payload = {"type": kind, "created_at": "2025-11-22T10:00:00.000Z", "data": {"id": "x"}}
        r = await deliver(client, "resend", payload, clock=clock, msg_id=f"msg_{number}", family="svix")
        assert r.status_code == 202, r.text
        answer = r.json()
        assert answer["accepted"] == answer["duplicates"] == 0
        assert answer["ignored"] == 1
        assert kind in answer["reason"]
        assert "docs/webhooks.md" in answer["reason"]


async def test_no_api_key_needed_the_signature_is_the_authentication(
    make_client: AppFactory, catalogue: Path, clock: Clock
) -> None:
    async with make_client(policies=catalogue, api_keys={"k-admin": "admin"}) as client:
        r = await deliver(client, "crm", {"customer_id": "c-1", "type": "page_view"}, clock=clock)
        assert r.status_code == 202, r.text
        r = await deliver(
            client, "crm", {"customer_id": "c-1", "type": "page_view"}, clock=clock, secret=RESEND_SECRET
        )
        error_body(r, 401, "invalid_signature")


# ---------------------------------------------------------------------------------------------------
# Repeats
# ---------------------------------------------------------------------------------------------------


async def test_the_same_delivery_twice_is_applied_once(client: httpx.AsyncClient, clock: Clock) -> None:
    body = {"events": [{"customer_id": "c-1", "type": "page_view"}, {"customer_id": "c-1", "type": "login"}]}
    first = await deliver(client, "crm", body, clock=clock, msg_id="msg_a")
    clock.advance(60)  # the platform retries a minute later, signing again
    again = await deliver(client, "crm", body, clock=clock, msg_id="msg_a")
    assert first.json() == {"accepted": 2, "duplicates": 0, "ignored": 0}
    assert again.json() == {"accepted": 0, "duplicates": 2, "ignored": 0}
    assert (await profile(client, "c-1"))["counts"]["page_view"]["total"] == 1
    # Another delivery with the same content is another event.
    other = await deliver(client, "crm", body, clock=clock, msg_id="msg_b")
    assert other.json() == {"accepted": 2, "duplicates": 0, "ignored": 0}


async def test_the_same_platform_event_in_two_deliveries_is_applied_once(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    event = {"event_id": "crm-evt-9", "customer_id": "c-1", "type": "page_view"}
    assert (await deliver(client, "crm", event, clock=clock, msg_id="msg_a")).json()["accepted"] == 1
    assert (await deliver(client, "crm", event, clock=clock, msg_id="msg_b")).json()["duplicates"] == 1


async def test_a_resend_retry_is_a_duplicate(client: httpx.AsyncClient, clock: Clock) -> None:
    payload = resend_event("email.opened")
    for expected in (
        {"accepted": 1, "duplicates": 0, "ignored": 0},
        {"accepted": 0, "duplicates": 1, "ignored": 0},
    ):
        r = await deliver(client, "resend", payload, clock=clock, msg_id="msg_2Kx", family="svix")
        assert r.json() == expected
    assert (await profile(client, "c-42"))["counts"]["email_open"]["total"] == 1


# ---------------------------------------------------------------------------------------------------
# Refused deliveries
# ---------------------------------------------------------------------------------------------------


async def test_a_wrong_signature_is_401_and_applies_nothing(client: httpx.AsyncClient, clock: Clock) -> None:
    body = {"customer_id": "c-1", "type": "page_view"}
    r = await deliver(client, "crm", body, clock=clock, secret=RESEND_SECRET)
    error_body(r, 401, "invalid_signature")
    assert CRM_SECRET not in r.text
    # A body changed after signing.
    content, headers = signed(CRM_SECRET, body, "msg_1", clock.now)
    r = await client.post("/v1/webhooks/crm", content=content.replace(b"c-1", b"c-2"), headers=headers)
    error_body(r, 401, "invalid_signature")
    assert (await client.get("/v1/customers/c-1")).status_code == 404
    assert (await client.get("/v1/customers/c-2")).status_code == 404


async def test_missing_signature_headers_are_401(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/webhooks/crm", json={"customer_id": "c-1", "type": "page_view"})
    body = error_body(r, 401, "invalid_signature")
    assert "missing: webhook-id, webhook-timestamp, webhook-signature" in body["detail"]
    content, headers = signed(CRM_SECRET, {"customer_id": "c-1", "type": "page_view"}, "msg_1", 0)
    del headers["webhook-id"]
    r = await client.post("/v1/webhooks/crm", content=content, headers=headers)
    assert "webhook-id" in error_body(r, 401, "invalid_signature")["detail"]


@pytest.mark.parametrize("age_s", [301, -301])
async def test_a_timestamp_outside_five_minutes_is_401(
    client: httpx.AsyncClient, clock: Clock, age_s: float
) -> None:
    """A captured delivery replayed later, or one stamped by a clock far ahead: correctly signed, refused."""
    r = await deliver(client, "crm", {"customer_id": "c-1", "type": "page_view"}, clock=clock, age_s=age_s)
    body = error_body(r, 401, "timestamp_out_of_window")
    assert "300s" in body["detail"]
    assert (await client.get("/v1/customers/c-1")).status_code == 404
    ok = await deliver(client, "crm", {"customer_id": "c-1", "type": "page_view"}, clock=clock, age_s=290)
    assert ok.status_code == 202, ok.text


async def test_an_unknown_source_is_404_naming_it_only(client: httpx.AsyncClient, clock: Clock) -> None:
    r = await deliver(client, "mailchimp", {"customer_id": "c-1", "type": "page_view"}, clock=clock)
    body = error_body(r, 404, "source_not_found")
    assert "'mailchimp'" in body["detail"]
    for configured in ("crm", "resend", "forgotten"):  # not told to a sender not yet authenticated
        assert configured not in body["detail"]


async def test_a_source_without_its_secret_is_503_naming_the_variable(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    r = await deliver(client, "forgotten", {"customer_id": "c-1", "type": "page_view"}, clock=clock)
    body = error_body(r, 503, "source_not_configured")
    assert "NBA_TEST_FORGOTTEN_SECRET" in body["detail"]


async def test_a_secret_that_is_not_one_is_503(
    client: httpx.AsyncClient, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBA_TEST_FORGOTTEN_SECRET", "whsec_")
    r = await deliver(client, "forgotten", {"customer_id": "c-1", "type": "page_view"}, clock=clock)
    body = error_body(r, 503, "source_not_configured")
    assert "NBA_TEST_FORGOTTEN_SECRET" in body["detail"]


async def test_the_secret_is_read_per_request(
    client: httpx.AsyncClient, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBA_TEST_FORGOTTEN_SECRET", CRM_SECRET)
    r = await deliver(client, "forgotten", {"customer_id": "c-1", "type": "page_view"}, clock=clock)
    assert r.status_code == 202, r.text


async def test_a_body_over_the_limit_is_413(make_client: AppFactory, catalogue: Path, clock: Clock) -> None:
    async with make_client(policies=catalogue, max_body_bytes=1024) as client:
        body = {"customer_id": "c-1", "type": "page_view", "properties": {"page": "/" + "x" * 1000}}
        r = await deliver(client, "crm", body, clock=clock)
        error_body(r, 413, "payload_too_large")


# ---------------------------------------------------------------------------------------------------
# Malformed payloads: 422 naming the field, nothing applied
# ---------------------------------------------------------------------------------------------------


async def test_generic_payload_errors_name_the_field(client: httpx.AsyncClient, clock: Clock) -> None:
    r = await deliver(client, "crm", {"customer_id": "c-1"}, clock=clock)
    invalid(r, "type", "field required")
    batch = {
        "events": [{"customer_id": "c-1", "type": "page_view"}, {"customer_id": "c-1", "type": "Bad Type"}]
    }
    r = await deliver(client, "crm", batch, clock=clock)
    invalid(r, "events[1].type", "pattern")
    r = await deliver(
        client, "crm", {"customer_id": "c-1", "type": "page_view", "colour": "red"}, clock=clock
    )
    invalid(r, "colour", "extra")
    assert (await client.get("/v1/customers/c-1")).status_code == 404


async def test_a_body_that_is_not_json_is_422(client: httpx.AsyncClient, clock: Clock) -> None:
    r = await deliver(client, "crm", "{not json", clock=clock)
    error_body(r, 422, "invalid_json")


async def test_a_resend_email_without_the_customer_tag_is_422(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    r = await deliver(client, "resend", resend_event("email.opened", customer_id=None), clock=clock)
    invalid(r, "data.tags.customer_id", "customer_id=<customer id>")
    r = await deliver(client, "resend", resend_event("email.opened", customer_id="c\n42"), clock=clock)
    invalid(r, "data.tags.customer_id", "printable")


async def test_resend_payload_errors_name_the_field(client: httpx.AsyncClient, clock: Clock) -> None:
    r = await deliver(client, "resend", {"created_at": "2025-11-22T10:00:00Z", "data": {}}, clock=clock)
    invalid(r, "type", "field required")
    no_time = resend_event("email.opened")
    del no_time["created_at"]
    r = await deliver(client, "resend", no_time, clock=clock)
    invalid(r, "created_at", "field required")
    r = await deliver(
        client, "resend", resend_event("email.opened") | {"created_at": "yesterday"}, clock=clock
    )
    invalid(r, "created_at", "RFC 3339")
    r = await deliver(client, "resend", resend_event("email.opened") | {"data": []}, clock=clock)
    invalid(r, "data")
    assert (await client.get("/v1/customers/c-42")).status_code == 404


# ---------------------------------------------------------------------------------------------------
# The contract, as OpenAPI tells it
# ---------------------------------------------------------------------------------------------------


async def test_openapi_documents_the_webhook_route(client: httpx.AsyncClient) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"]["/v1/webhooks/{source}"]["post"]
    assert {"202", "401", "404", "413", "422", "503"} <= set(operation["responses"])
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert {"webhook-id", "webhook-timestamp", "webhook-signature", "svix-signature"} <= headers
    assert "security" not in operation

"""The operators' dead-letter endpoints, on the real app with its real delivery worker: who may call them,
pages and counts, a replay that the worker then delivers to a real receiver, and the input they refuse.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from app import delivery as delivery_module
from feature_store import ProfileStore
from feature_store.outbox import Message
from feature_store.profile import iso
from tests.api.test_auth import KEYS, bearer
from tests.api.test_bad_input import error_body, invalid
from tests.conftest import AppFactory, Clock
from tests.integration.test_delivery import (
    SECRET,
    SECRET_BYTES,
    VARIABLE,
    Receiver,
    Reply,
    message,
    now_ms,
    verified,
)
from tests.integration.test_learner import until

CATALOGUE = Path(__file__).parents[1] / "fixtures" / "catalogue"
PATH = "/v1/admin/dead-letters"
DISCARD = f"{PATH}/discard"


def catalogue_to(tmp_path: Path, url: str) -> Path:
    """The fixture catalogue with a destination ``crm`` at ``url``: 1 s timeout, 2 attempts."""
    folder = tmp_path / "catalogue"
    shutil.copytree(CATALOGUE, folder)
    line = f'  crm: {{url: "{url}", secret: {VARIABLE}, timeout: 1s, attempts: 2}}\n'
    (folder / "destinations.yaml").write_text("destinations:\n" + line)
    return folder


async def dead(store: ProfileStore, clock: Clock, *decisions: str) -> list[Message]:
    """Dead letters for ``crm``, made as a worker makes them (claimed, then given up). They are due an
    hour ahead and claimed then, out of reach of a service's worker that may be running now."""
    outbox, made = store.outbox(), []
    for decision in decisions:
        m = message(clock, decision)
        later = now_ms(clock) + 3_600_000
        await outbox.enqueue(m, later)
        [claimed] = await outbox.claim("crm", later, 1000, 1, "seed")
        assert await outbox.dead(claimed, later, "answered 400: missing email", 400)
        made.append(m)
        clock.advance(0.001)
    return made


async def listing(api: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await api.get(PATH, params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# Who may call them -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["k-web", "k-server"])
async def test_only_an_admin_key_lists_or_replays_dead_letters(make_client: AppFactory, key: str) -> None:
    async with make_client(api_keys=KEYS) as api:
        error_body(await api.get(PATH, headers=bearer(key)), 403, "forbidden")
        error_body(await api.post(PATH, json={"all": True}, headers=bearer(key)), 403, "forbidden")
        error_body(await api.get(PATH), 401, "unauthorized")
        assert (await api.get(PATH, headers=bearer("k-admin"))).status_code == 200
        r = await api.post(PATH, json={"all": True}, headers=bearer("k-admin"))
        assert (r.status_code, r.json()) == (200, {"replayed": 0, "unknown": []})
        error_body(await api.post(DISCARD, json={"all": True}, headers=bearer(key)), 403, "forbidden")
        r = await api.post(DISCARD, json={"all": True}, headers=bearer("k-admin"))
        assert (r.status_code, r.json()) == (200, {"discarded": 0, "unknown": []})


# Listing, replaying and discarding ---------------------------------------------------------------------


async def test_discarded_dead_letters_are_no_longer_listed_nor_counted_nor_sent(
    make_client: AppFactory, store: ProfileStore, clock: Clock
) -> None:
    first, second, third = await dead(store, clock, "d-1", "d-2", "d-3")
    async with make_client() as api:
        r = await api.post(DISCARD, json={"ids": [first.id, "msg_not_a_dead_letter"]})
        assert (r.status_code, r.json()) == (200, {"discarded": 1, "unknown": ["msg_not_a_dead_letter"]})
        page = await listing(api)
        assert [letter["id"] for letter in page["dead_letters"]] == [second.id, third.id]
        assert page["counts"] == {"due": 0, "in_flight": 0, "dead": 2}
        r = await api.post(PATH, json={"ids": [first.id]})  # a discarded letter cannot be replayed
        assert r.json() == {"replayed": 0, "unknown": [first.id]}
        clock.advance(3_601)  # past their deaths, which dead() dates an hour ahead: "all" is all by now
        r = await api.post(DISCARD, json={"all": True})
        assert r.json() == {"discarded": 2, "unknown": []}
        page = await listing(api)
        assert (page["dead_letters"], page["counts"]) == ([], {"due": 0, "in_flight": 0, "dead": 0})
    for m in (first, second, third):
        kept = await store.outbox().message(m.id)
        assert kept is not None
        assert (kept.state, kept.body) == ("discarded", "")


async def test_dead_letters_are_listed_a_page_at_a_time_with_the_outboxs_counts(
    make_client: AppFactory, store: ProfileStore, clock: Clock
) -> None:
    first, second, third = await dead(store, clock, "d-1", "d-2", "d-3")
    async with make_client() as api:
        page = await listing(api, limit=2)
        assert [letter["id"] for letter in page["dead_letters"]] == [first.id, second.id]
        assert page["counts"] == {"due": 0, "in_flight": 0, "dead": 3}
        letter = page["dead_letters"][0]
        times = {name: letter.pop(name) for name in ("created_at", "last_attempt_at", "dead_at")}
        assert letter == {
            "id": first.id,
            "destination": "crm",
            "action_id": "cart_email",
            "channel": "email",
            "decision_id": "d-1",
            "customer_id": "c-42",
            "anonymous_id": None,
            "attempts": 1,
            "last_status": 400,
            "last_error": "answered 400: missing email",
        }
        assert times["created_at"] == iso(first.created_ms)
        assert times["last_attempt_at"] == times["dead_at"] == iso(first.created_ms + 3_600_000)
        rest = await listing(api, limit=2, cursor=page["next_cursor"])
        assert [letter["id"] for letter in rest["dead_letters"]] == [third.id]
        assert rest["next_cursor"] is None


async def test_a_replayed_dead_letter_is_delivered_by_the_services_worker_with_the_same_id(
    make_client: AppFactory,
    store: ProfileStore,
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(VARIABLE, SECRET)
    # A fresh logger, so that the app's logging configuration (and this test's stderr) applies to it.
    monkeypatch.setattr(delivery_module, "log", structlog.get_logger("nba.delivery"))
    async with Receiver(Reply(400, body="missing email"), Reply(200)) as receiver:
        folder = catalogue_to(tmp_path, receiver.url)
        async with make_client(policies=folder, delivery_poll_s=0.05) as api:
            m = message(clock)
            await store.outbox().enqueue(m, now_ms(clock))

            async def dead_lettered() -> bool:
                return (await listing(api))["counts"]["dead"] == 1

            await until(dead_lettered, 10, "the 400 to make a dead letter")
            page = await listing(api)
            [letter] = page["dead_letters"]
            assert (letter["id"], letter["attempts"], letter["last_status"]) == (m.id, 1, 400)

            r = await api.post(PATH, json={"ids": [m.id, "msg_not_a_dead_letter"]})
            assert r.status_code == 200, r.text
            assert r.json() == {"replayed": 1, "unknown": ["msg_not_a_dead_letter"]}

            async def delivered() -> bool:
                found = await store.outbox().message(m.id)
                return found is not None and found.state == "delivered"

            await until(delivered, 10, "the replay to be delivered")
            answers = [page, await listing(api), (await api.get("/v1/actions")).json()]
    assert receiver.ids() == [m.id, m.id]
    assert verified(receiver.requests[1]) == json.loads(m.body)
    logged = capsys.readouterr().err
    assert "delivery_delivered" in logged
    for text in (logged, json.dumps(answers)):
        assert SECRET_BYTES not in text


# Input they refuse -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field", "hint"),
    [
        ({"limit": 0}, "query.limit", "greater than or equal to 1"),
        ({"limit": 1001}, "query.limit", "less than or equal to 1000"),
        ({"cursor": "msg_1"}, "query.cursor", "pattern"),
    ],
)
async def test_a_bad_listing_parameter_is_a_422_naming_it(
    client: httpx.AsyncClient, params: dict[str, Any], field: str, hint: str
) -> None:
    invalid(await client.get(PATH, params=params), field, hint)


@pytest.mark.parametrize(
    ("body", "field", "hint"),
    [
        ({"ids": "msg_1"}, "ids", "list"),
        ({"ids": []}, "ids", "at least 1"),
        ({"ids": ["msg_1", ""]}, "ids[1]", "at least 1 character"),
        ({"ids": ["msg\n1"]}, "ids[0]", "printable"),
        ({"all": False}, "all", "true"),
        ({"everything": True}, "everything", "extra"),
        ({}, "body", 'give either "ids"'),
        ({"ids": ["msg_1"], "all": True}, "body", 'give either "ids"'),
    ],
)
@pytest.mark.parametrize("path", [PATH, DISCARD], ids=["replay", "discard"])
async def test_a_bad_replay_or_discard_is_a_422_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient,
    store: ProfileStore,
    clock: Clock,
    path: str,
    body: dict[str, Any],
    field: str,
    hint: str,
) -> None:
    [m] = await dead(store, clock, "d-1")
    invalid(await client.post(path, json=body), field, hint)
    assert [letter["id"] for letter in (await listing(client))["dead_letters"]] == [m.id]

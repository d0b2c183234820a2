"""Decisions end to end on a real Redis: what is logged, holdout groups across catalogues, instances and
identity merges, the fallback when the store is down or frozen, outcomes and contact limits, erasure.

The fixture catalogue (tests/fixtures/catalogue) has known answers: two faq views make proactive_chat
the choice on web.product_page, generic_banner otherwise; the web channel allows 3 contacts per 30m.
Tests that are not about the time budget get a generous one, so that a slow machine cannot turn a
decision into a fallback."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import structlog

from app import services
from feature_store.embedded import EmbeddedRedis, free_port
from feature_store.keys import DECISION_LOG, OUTCOME_LOG
from policies import holdout
from tests.conftest import AppFactory, Clock

CATALOGUE = Path(__file__).parents[1] / "fixtures" / "catalogue"
SEED = "test-seed"
ROOMY = 5000  # a decision budget (ms) that no test machine exceeds


def catalogue_copy(tmp_path: Path, name: str, *, share: float = 0.0, epsilon: float = 0.0) -> Path:
    """The fixture catalogue in a folder of its own, with another holdout share or epsilon."""
    folder = tmp_path / name
    shutil.copytree(CATALOGUE, folder)
    file = folder / "catalogue.yaml"
    text = file.read_text()
    edits = {
        f'holdout: {{share: 0.0, seed: "{SEED}"}}': f'holdout: {{share: {share}, seed: "{SEED}"}}',
        "epsilon: 0.0}": f"epsilon: {epsilon}}}",
    }
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    file.write_text(text)
    return folder


async def faq_views(api: httpx.AsyncClient, customer: str, n: int) -> None:
    events = [
        {"customer_id": customer, "type": "faq_view", "properties": {"article_id": f"a{i}"}} for i in range(n)
    ]
    assert (await api.post("/v1/events", json={"events": events})).status_code == 202


async def decide(
    api: httpx.AsyncClient, customer: str | None, placement: str = "web.product_page", **body: Any
) -> dict[str, Any]:
    who = {"customer_id": customer} if customer is not None else {}
    r = await api.post("/v1/decide", json={**who, "placement": placement, **body})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def ids(answer: dict[str, Any]) -> list[str]:
    return [a["action_id"] for a in answer["actions"]]


def verdicts(answer: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {v["action_id"]: (v["status"], v["reason"]) for v in answer["explanation"]}


def decision_log(raw_redis: redis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in raw_redis.xrange(DECISION_LOG)]


async def test_a_decision_is_logged_with_what_the_policy_saw(
    make_client: AppFactory, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    exploring = catalogue_copy(tmp_path, "exploring", epsilon=0.2)
    async with make_client(policies=exploring, decision_ttl_hours=2, decision_budget_ms=ROOMY) as api:
        await faq_views(api, "c-1", 2)
        answer = await decide(api, "c-1", context={"device": "mobile"})
    [entry] = decision_log(raw_redis)
    assert entry["decision_id"] == answer["decision_id"]
    assert (entry["customer"], entry["placement"], entry["group"]) == (
        "c:c-1",
        "web.product_page",
        "treatment",
    )
    # epsilon 0.2 over two eligible actions: the best gets 0.8 + 0.1, the other 0.1.
    eligible = json.loads(entry["eligible"])
    assert eligible == pytest.approx({"proactive_chat": 0.9, "generic_banner": 0.1})
    assert sum(eligible.values()) == pytest.approx(1.0)
    [served] = json.loads(entry["actions"])
    [returned] = answer["actions"]
    assert served["action_id"] == returned["action_id"]
    assert served["channel"] == "web"
    assert served["probability"] == pytest.approx(eligible[served["action_id"]])
    assert returned["probability"] == pytest.approx(served["probability"])
    assert json.loads(entry["counterfactual"]) == []
    features = json.loads(entry["features"])
    assert features["faq_view_30m"] == 2
    assert features["faq_view_total"] == 2
    assert "stage" in features
    assert "orders" not in features  # zeros are left out: they are what most features hold
    assert json.loads(entry["context"]) == {"device": "mobile"}
    assert entry["catalogue_version"] == "test-1"
    assert entry["model_version"] == "prior"
    assert 0 < float(entry["latency_ms"]) < ROOMY
    key = f"nba:dec:{answer['decision_id']}"
    summary = raw_redis.hgetall(key)
    assert (summary["customer"], summary["group"]) == ("c:c-1", "treatment")
    assert 2 * 3600 - 60 < raw_redis.ttl(key) <= 2 * 3600


async def test_a_decision_and_the_events_it_read_are_kept_compact_in_the_embedded_redis(
    make_client: AppFactory, raw_redis: redis.Redis
) -> None:
    """The summary (with its features' JSON) and the recent events (each event's JSON) have values longer
    than Redis's default limit for its compact encoding: the embedded Redis's limit keeps them compact."""
    async with make_client(decision_budget_ms=ROOMY) as api:
        await faq_views(api, "c-1", 2)
        answer = await decide(api, "c-1", context={"device": "mobile"})
    summary = raw_redis.hgetall(f"nba:dec:{answer['decision_id']}")
    recent = raw_redis.zrange("nba:{c:c-1}:r", 0, -1)
    assert max(len(value) for value in summary.values()) > 64
    assert len(recent) == 2
    assert min(len(member) for member in recent) > 64
    compact = {"ziplist", "listpack"}  # Redis 6's name and Redis 7's
    assert raw_redis.object("encoding", f"nba:dec:{answer['decision_id']}") in compact
    assert raw_redis.object("encoding", "nba:{c:c-1}:r") in compact


async def test_control_gets_only_exempt_actions_and_keeps_its_group_when_the_share_changes(
    make_client: AppFactory, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    everyone = catalogue_copy(tmp_path, "everyone", share=1.0)
    nobody = catalogue_copy(tmp_path, "nobody", share=0.0)
    async with make_client(policies=everyone, decision_budget_ms=ROOMY) as api:
        await faq_views(api, "c-1", 2)
        answer = await decide(api, "c-1", "web.faq", explain=True)
    assert answer["group"] == "control"
    assert ids(answer) == ["service_notice"]
    assert verdicts(answer)["proactive_chat"] == ("holdout", "customer is in the control group")
    [entry] = decision_log(raw_redis)
    assert entry["group"] == "control"
    assert [a["action_id"] for a in json.loads(entry["actions"])] == ["service_notice"]
    # What treatment would have got, drawn as if in treatment (web.faq shows two).
    counterfactual = [(a["action_id"], a["probability"]) for a in json.loads(entry["counterfactual"])]
    assert counterfactual == [("proactive_chat", 1.0), ("service_notice", 1.0)]
    assert raw_redis.hget("nba:{c:c-1}:p", "g") == "control"

    async with make_client(policies=nobody, decision_budget_ms=ROOMY) as api:
        again = await decide(api, "c-1", "web.faq")
        assert (again["group"], ids(again)) == ("control", ["service_notice"])
        newcomer = await decide(api, "c-2", "web.faq")
        assert newcomer["group"] == "treatment"
    assert raw_redis.hget("nba:{c:c-1}:p", "g") == "control"
    assert raw_redis.hget("nba:{c:c-2}:p", "g") == "treatment"


async def test_two_instances_on_one_redis_give_every_customer_the_same_group(
    make_client: AppFactory, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    half = catalogue_copy(tmp_path, "half", share=0.5)
    n = 200
    groups: dict[str, str] = {}
    async with (
        make_client(policies=half, decision_budget_ms=ROOMY) as one,
        make_client(policies=half, decision_budget_ms=ROOMY) as other,
    ):
        for i in range(n):
            first, second = (one, other) if i % 2 == 0 else (other, one)
            customer = f"new-{i}"
            groups[customer] = (await decide(first, customer))["group"]
            assert (await decide(second, customer))["group"] == groups[customer], customer
    for customer, group in groups.items():
        assert raw_redis.hget(f"nba:{{c:{customer}}}:p", "g") == group
        assert holdout.group(SEED, 0.5, f"c:{customer}") == group
    control = sum(g == "control" for g in groups.values())
    # Binomial(200, 0.5): mean 100, sd 7.07; four sd either side.
    assert abs(control - n / 2) < 4 * math.sqrt(n / 4), control


async def test_an_identity_merge_keeps_the_known_customers_group(
    make_client: AppFactory, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    half = catalogue_copy(tmp_path, "half", share=0.5)
    known = holdout.group(SEED, 0.5, "c:c-1")
    visitor = next(f"v-{i}" for i in range(100) if holdout.group(SEED, 0.5, f"a:v-{i}") != known)
    async with make_client(policies=half, decision_budget_ms=ROOMY) as api:
        assert (await decide(api, "c-1"))["group"] == known
        assert (await decide(api, None, anonymous_id=visitor))["group"] != known
        link = await api.post("/v1/identities", json={"anonymous_id": visitor, "customer_id": "c-1"})
        assert link.status_code == 200, link.text
        after = await decide(api, None, anonymous_id=visitor)
        assert after["group"] == known
        assert (await decide(api, "c-1"))["group"] == known
    assert raw_redis.hget("nba:{c:c-1}:p", "g") == known


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(str(tmp_path), port=free_port(), persist=True).start()
    yield server
    server.stop()


async def timed_decide(api: httpx.AsyncClient, **body: Any) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = await api.post("/v1/decide", json={"customer_id": "c-1", **body})
    return response, time.monotonic() - start


def assert_fallback(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["fallback"] is True
    assert answer["group"] is None
    assert ids(answer) == ["generic_banner"]
    [action] = answer["actions"]
    assert action["probability"] == 1.0
    assert action["payload"] == {"message": "Free returns"}
    assert answer["policy_version"] == "test-1"
    return answer


async def test_a_stopped_store_answers_the_placements_fallback_at_once(
    make_client: AppFactory, own_redis: EmbeddedRedis
) -> None:
    async with make_client(redis_url=own_redis.url, policies=CATALOGUE) as api:
        assert (await decide(api, "c-1"))["fallback"] is False
        own_redis.stop()
        response, elapsed = await timed_decide(api, placement="web.product_page")
        assert_fallback(response)
        assert elapsed < 1.0
        event = {"type": "faq_view", "event_id": "e-1", "properties": {"article_id": "a"}}
        response, elapsed = await timed_decide(api, placement="web.product_page", event=event)
        answer = assert_fallback(response)
        assert answer["event"] is None  # nothing was acknowledged
        assert elapsed < 1.0


async def test_a_frozen_store_falls_back_within_the_decision_budget(
    make_client: AppFactory,
    own_redis: EmbeddedRedis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert own_redis.pid is not None
    # The service's logger caches its configuration at first use, which was in an earlier test (and its
    # stderr); a fresh one of the same name takes this app's configuration, and so this test's stderr.
    monkeypatch.setattr(services, "log", structlog.get_logger("nba.decisions"))
    async with make_client(redis_url=own_redis.url, policies=CATALOGUE, decision_budget_ms=100) as api:
        assert (await decide(api, "c-1"))["fallback"] is False  # the connection is open and warm
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            response, elapsed = await timed_decide(api, placement="web.product_page")
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
    answer = assert_fallback(response)
    # The store timeout is 0.5 s; the budget of 0.1 s is what bounds a decision.
    assert elapsed < 0.45
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    fallbacks = [e for e in logged if e.get("event") == "decision" and e.get("fallback")]
    assert [(e["decision_id"], e["reason"]) for e in fallbacks] == [(answer["decision_id"], "budget")]


async def test_outcomes_feed_the_contact_policy_and_the_outcome_log(
    make_client: AppFactory, raw_redis: redis.Redis
) -> None:
    async with make_client(policies=CATALOGUE, decision_budget_ms=ROOMY) as api:
        await faq_views(api, "c-1", 2)
        first = await decide(api, "c-1")
        assert ids(first) == ["proactive_chat"]
        for kind in ("impression", "click"):
            outcome = {"decision_id": first["decision_id"], "action_id": "proactive_chat", "type": kind}
            r = await api.post("/v1/outcomes", json=outcome)
            assert (r.status_code, r.json()["accepted"]) == (202, 1), r.text
        second = await decide(api, "c-1", explain=True)
        assert ids(second) == ["proactive_chat"]  # an impression and a click change nothing
        assert verdicts(second)["proactive_chat"][0] == "chosen"
        conversion = {
            "decision_id": second["decision_id"],
            "action_id": "proactive_chat",
            "type": "conversion",
            "value": 12.5,
        }
        assert (await api.post("/v1/outcomes", json=conversion)).status_code == 202
        third = await decide(api, "c-1", explain=True)
        assert ids(third) == ["generic_banner"]
        assert verdicts(third)["proactive_chat"] == ("suppressed", "already converted")
    logged = [fields for _, fields in raw_redis.xrange(OUTCOME_LOG)]
    got = [
        (e["decision_id"], e["action_id"], e["type"], float(e["value"]), e["customer"], e["group"])
        for e in logged
    ]
    assert got == [
        (first["decision_id"], "proactive_chat", "impression", 0.0, "c:c-1", "treatment"),
        (first["decision_id"], "proactive_chat", "click", 0.0, "c:c-1", "treatment"),
        (second["decision_id"], "proactive_chat", "conversion", 12.5, "c:c-1", "treatment"),
    ]
    assert all(e["placement"] == "web.product_page" for e in logged)


async def test_contact_limits_count_the_actions_served_across_decisions(
    make_client: AppFactory, clock: Clock
) -> None:
    async with make_client(policies=CATALOGUE, decision_budget_ms=ROOMY) as api:
        served = [ids(await decide(api, "c-1"))]
        await faq_views(api, "c-1", 2)
        served += [ids(await decide(api, "c-1")) for _ in range(2)]
        assert served == [["generic_banner"], ["proactive_chat"], ["proactive_chat"]]
        fourth = await decide(api, "c-1", explain=True)
        assert fourth["actions"] == []
        capped = ("capped", "web channel limit of 3 per 30m reached")
        assert verdicts(fourth)["proactive_chat"] == capped
        assert verdicts(fourth)["generic_banner"] == capped
        clock.advance(31 * 60)
        # The faq views are out of their 30 minutes too: the banner is the choice again.
        assert ids(await decide(api, "c-1")) == ["generic_banner"]


async def test_erasure_removes_the_contact_history(make_client: AppFactory, raw_redis: redis.Redis) -> None:
    async with make_client(policies=CATALOGUE, decision_budget_ms=ROOMY) as api:
        await faq_views(api, "c-1", 2)
        first = await decide(api, "c-1")
        dismiss = {"decision_id": first["decision_id"], "action_id": "proactive_chat", "type": "dismiss"}
        assert (await api.post("/v1/outcomes", json=dismiss)).status_code == 202
        await decide(api, "c-1")
        assert "nba:{c:c-1}:k" in raw_redis.keys("nba:{c:c-1}:*")
        assert (await api.delete("/v1/customers/c-1")).status_code == 204
        assert raw_redis.keys("nba:{c:c-1}:*") == []


async def test_an_outcome_reported_after_erasure_does_not_bring_the_customer_back(
    make_client: AppFactory, raw_redis: redis.Redis
) -> None:
    async with make_client(policies=CATALOGUE, decision_budget_ms=ROOMY) as api:
        await faq_views(api, "c-1", 2)
        first = await decide(api, "c-1")
        assert (await api.delete("/v1/customers/c-1")).status_code == 204
        # The decision is kept for its outcomes (NBA_DECISION_TTL_HOURS); one may come in late.
        late = {"decision_id": first["decision_id"], "action_id": "proactive_chat", "type": "dismiss"}
        assert (await api.post("/v1/outcomes", json=late)).status_code == 202
        assert raw_redis.keys("nba:{c:c-1}:*") == []


async def test_a_dismissal_reported_after_login_reaches_the_customer(
    make_client: AppFactory, raw_redis: redis.Redis
) -> None:
    """A decision made for a visitor, dismissed after the visitor was linked to a customer: the contact
    policy of the customer sees the dismissal, and nothing lands on the visitor's merged-away keys."""
    async with make_client(policies=CATALOGUE, decision_budget_ms=ROOMY) as api:
        events = [
            {"anonymous_id": "v-1", "type": "faq_view", "properties": {"article_id": f"a{i}"}} for i in (1, 2)
        ]
        assert (await api.post("/v1/events", json={"events": events})).status_code == 202
        shown = await decide(api, None, anonymous_id="v-1")
        assert ids(shown) == ["proactive_chat"]
        link = await api.post("/v1/identities", json={"anonymous_id": "v-1", "customer_id": "c-1"})
        assert link.status_code == 200, link.text
        dismiss = {"decision_id": shown["decision_id"], "action_id": "proactive_chat", "type": "dismiss"}
        assert (await api.post("/v1/outcomes", json=dismiss)).status_code == 202
        after = await decide(api, "c-1", explain=True)
        assert verdicts(after)["proactive_chat"] == ("suppressed", "dismissed within 1h")
        assert ids(after) == ["generic_banner"]
    assert [k for k in raw_redis.keys("nba:{a:v-1}:*") if k != "nba:{a:v-1}:alias"] == []

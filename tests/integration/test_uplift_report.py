"""The uplift report on a real Redis, fed through the real app and joined by the real learner, on
traffic whose lift is planted.

The fixture catalogue with half the customers in the control group and web.product_page rewarding the
conversion's value (30-minute windows); web.faq keeps its click reward. Every customer gets a decision
on web.product_page: generic_banner, or proactive_chat after two FAQ views (odd customers), who then also
get one on web.faq (proactive_chat beside the exempt service_notice). Some even customers get a second
web.product_page decision later. Five minutes after the first decisions a customer buys, with a
probability that depends on their group only, so the true lift is the same in every slice: the
difference of the two probabilities, and 40 (the mean order) times it in revenue per customer. Some
treatment buyers also report a conversion outcome; some customers buy only after every window closed,
which counts for nothing.

Every count and sum in the report is checked exactly against a tally made here from the decision log
and the purchases sent. That the 95% intervals hold the planted lift is checked at this seed (at
another, each would miss one time in twenty); that the estimates are close, within 4 standard errors
of the planted rates (a miss is about 1 in 16,000 for each).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.cli import main as nba
from app.settings import Scope
from feature_store import ProfileStore, StoreConfig
from feature_store.keys import DECISION_LOG
from models.learner import Learner
from policies import holdout
from tests.api.test_bad_input import error_body
from tests.conftest import AppFactory, Clock
from tests.integration.test_learner import ROOMY, SEED, catalogue_copy, learner_for, started

MINUTE = 60.0
ROOMY_STORE_MS = 5000  # a store timeout that a loaded test machine does not exceed (the default is 500 ms)
WINDOW_MS = 30 * 60_000  # both placements' attribution
EXEMPT = "service_notice"
KEYS = {"k-web": Scope.WEB, "k-server": Scope.SERVER, "k-admin": Scope.ADMIN}


@dataclass
class Traffic:
    """What was sent: enough to work out, independently of the report, what it must say."""

    start: float  # the first decisions' time (s)
    purchases: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))


@pytest.fixture
async def store(redis_url: str, clock: Clock) -> AsyncIterator[ProfileStore]:
    """The learner's store (conftest's, with a roomy timeout)."""
    roomy = ProfileStore.connect(redis_url, StoreConfig(), clock=clock, timeout_s=ROOMY_STORE_MS / 1000)
    await roomy.load_scripts()
    yield roomy
    await roomy.aclose()


async def settle(learner: Learner) -> None:
    """Learn and publish until there is nothing left: a round closes at most ``batch`` windows, and the
    next one finds them again until they are published."""
    async with asyncio.timeout(120):
        while await learner.step():
            await learner.publish_if_due(force=True)
        await learner.publish_if_due(force=True)


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


async def decide(api: httpx.AsyncClient, customer: str, placement: str) -> dict[str, Any]:
    r = await api.post("/v1/decide", json={"customer_id": customer, "placement": placement})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    assert answer["fallback"] is False
    return answer


async def send(api: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 200):
        r = await api.post("/v1/events", json={"events": events[start : start + 200]})
        assert r.status_code == 202, r.text


async def drive(
    api: httpx.AsyncClient,
    store: ProfileStore,
    clock: Clock,
    folder: Path,
    *,
    customers: int,
    rates: dict[str, float],
    seed: int,
    faq: bool = True,
) -> Traffic:
    """Decisions, purchases (with probability ``rates[group]``) and outcomes, joined by the learner."""
    rng = random.Random(seed)
    learner = await started(learner_for(store, folder, clock))
    traffic = Traffic(clock.now)
    ids = [f"c-{i}" for i in range(customers)]
    chatty = [c for i, c in enumerate(ids) if faq and i % 2]
    # Two FAQ views make proactive_chat eligible (and win) for the odd customers.
    views = [
        {"customer_id": c, "type": "faq_view", "properties": {"article_id": f"a{k}"}}
        for c in chatty
        for k in (1, 2)
    ]
    await send(api, views)
    groups, chats = {}, {}
    for customer in ids:
        answer = await decide(api, customer, "web.product_page")
        groups[customer] = answer["group"]
        if customer in chatty:
            chats[customer] = answer
            await decide(api, customer, "web.faq")
    await settle(learner)

    clock.advance(5 * MINUTE)
    buys, late = [], []
    for n, customer in enumerate(ids):
        if rng.random() < rates[groups[customer]]:
            revenue = round(rng.uniform(20, 60), 2)
            buys.append((customer, revenue))
            answer = chats.get(customer)
            if answer is not None and answer["actions"] and n % 3 == 0:
                outcome = {
                    "decision_id": answer["decision_id"],
                    "action_id": answer["actions"][0]["action_id"],
                    "type": "conversion",
                    "value": revenue,
                }
                assert (await api.post("/v1/outcomes", json=outcome)).status_code == 202
        elif n % 10 == 0:
            late.append((customer, 99.0))
    await send(api, [purchase(c, r, f"o-{c}") for c, r in buys])
    for customer, revenue in buys:
        traffic.purchases[f"c:{customer}"].append((int(clock() * 1000), revenue))
    await settle(learner)

    clock.advance(5 * MINUTE)
    for customer in ids[::10]:  # even customers: generic_banner again, 10 minutes after the first
        await decide(api, customer, "web.product_page")
    await settle(learner)

    clock.advance(35 * MINUTE)  # every window has closed; these purchases are in none of them
    await send(api, [purchase(c, r, f"late-{c}") for c, r in late])
    for customer, revenue in late:
        traffic.purchases[f"c:{customer}"].append((int(clock() * 1000), revenue))
    await settle(learner)
    return traffic


def purchase(customer: str, revenue: float, order: str) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "type": "purchase",
        "properties": {"revenue": revenue, "order_id": order},
    }


def tally(raw_redis: redis.Redis, traffic: Traffic) -> dict[str, dict[str, tuple[int, int, float]]]:
    """Per slice and group: (customers, converted, revenue), from the decision log and the purchases
    sent: a customer is in a slice's group when one of their decisions served (treatment) or would have
    served (control) a non-exempt action of it; converted when they bought in one of those decisions'
    30 minutes; their revenue is what they bought in the union of those windows."""
    windows: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    group_of = {}
    entries: list[tuple[str, dict[str, str]]] = raw_redis.xrange(DECISION_LOG)  # type: ignore[assignment]
    for _, e in entries:
        key = "actions" if e["group"] == "treatment" else "counterfactual"
        for action in json.loads(e[key]):
            if action["action_id"] != EXEMPT:
                for name in ("overall", action["action_id"], e["placement"]):
                    windows[(name, e["group"])][e["customer"]].append(int(e["time_ms"]))
                group_of[e["customer"]] = e["group"]
    out: dict[str, dict[str, tuple[int, int, float]]] = defaultdict(dict)
    for (name, group), by_customer in windows.items():
        converted, revenue = 0, 0.0
        for customer, starts in by_customer.items():
            caught = [
                r
                for t, r in traffic.purchases.get(customer, [])
                if any(s < t <= s + WINDOW_MS for s in starts)
            ]
            converted += bool(caught)
            revenue += sum(caught)
        out[name][group] = (len(by_customer), converted, round(revenue, 2))
    return out


def check_counts(report: dict[str, Any], expected: dict[str, dict[str, tuple[int, int, float]]]) -> None:
    slices = {c["slice"]: c for c in [report["overall"], *report["actions"], *report["placements"]]}
    assert set(slices) == set(expected)
    for name, comparison in slices.items():
        for group in ("treatment", "control"):
            got = comparison[group]
            customers, converted, revenue = expected[name][group]
            assert (got["customers"], got["conversions"]) == (customers, converted), (name, group)
            assert got["revenue"] == pytest.approx(revenue, abs=0.01), (name, group)
            assert got["conversion_rate"] == pytest.approx(converted / customers)
            assert got["revenue_per_customer"] == pytest.approx(revenue / customers, abs=0.01)


async def get_report(api: httpx.AsyncClient, traffic: Traffic, **headers: str) -> httpx.Response:
    query = {"from": stamp(traffic.start - MINUTE), "to": stamp(traffic.start + 11 * MINUTE)}
    return await api.get("/v1/reports/uplift", params=query, headers=headers)


def planted_se(
    comparison: dict[str, Any], rates: dict[str, float], mean: float = 40.0
) -> tuple[float, float]:
    """The standard errors of the conversion and revenue-per-customer differences under the planted
    rates, for the report's group sizes: an order is uniform(20, 60), so E[revenue^2] = p (40^2 + 40^2/12)."""
    nt, nc = comparison["treatment"]["customers"], comparison["control"]["customers"]
    pt, pc = rates["treatment"], rates["control"]
    conversion = math.sqrt(pt * (1 - pt) / nt + pc * (1 - pc) / nc)
    square = mean**2 + 40**2 / 12
    revenue = math.sqrt((pt * square - (pt * mean) ** 2) / nt + (pc * square - (pc * mean) ** 2) / nc)
    return conversion, revenue


async def test_a_planted_lift_is_found(
    make_client: AppFactory, store: ProfileStore, clock: Clock, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    rates = {"treatment": 0.30, "control": 0.12}
    lift = rates["treatment"] - rates["control"]
    folder = catalogue_copy(tmp_path, reward="value", share=0.5)
    clock.now = time.time() - 3 * 3600
    async with make_client(policies=folder, decision_budget_ms=ROOMY, store_timeout_ms=ROOMY_STORE_MS) as api:
        traffic = await drive(api, store, clock, folder, customers=1000, rates=rates, seed=11)
        r = await get_report(api, traffic)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["warnings"] == []
    assert report["left_out"] == {"exempt": report["entries"] - report["used"]}
    check_counts(report, tally(raw_redis, traffic))
    assert [c["slice"] for c in report["actions"]] == ["generic_banner", "proactive_chat"]
    assert [c["slice"] for c in report["placements"]] == ["web.faq", "web.product_page"]
    for comparison in [report["overall"], *report["actions"], *report["placements"]]:
        assert comparison["enough_data"], comparison["slice"]
        conversion, revenue = comparison["conversion"], comparison["revenue_per_customer"]
        se_conversion, se_revenue = planted_se(comparison, rates)
        assert conversion["absolute"]["low"] <= lift <= conversion["absolute"]["high"], comparison["slice"]
        assert abs(conversion["absolute"]["value"] - lift) < 4 * se_conversion
        assert revenue["absolute"]["low"] <= 40 * lift <= revenue["absolute"]["high"], comparison["slice"]
        assert abs(revenue["absolute"]["value"] - 40 * lift) < 4 * se_revenue
        relative = conversion["relative"]
        assert relative["low"] <= lift / rates["control"] <= relative["high"], comparison["slice"]
        assert conversion["p_value"] < 0.001
        assert comparison["conclusion"] == (
            "conversion higher in treatment; revenue per customer higher in treatment"
        )


async def test_no_lift_is_no_lift(
    make_client: AppFactory, store: ProfileStore, clock: Clock, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    rates = {"treatment": 0.2, "control": 0.2}
    folder = catalogue_copy(tmp_path, reward="conversion", share=0.5)
    clock.now = time.time() - 3 * 3600
    async with make_client(policies=folder, decision_budget_ms=ROOMY, store_timeout_ms=ROOMY_STORE_MS) as api:
        traffic = await drive(api, store, clock, folder, customers=400, rates=rates, seed=5, faq=False)
        r = await get_report(api, traffic)
    report = r.json()
    check_counts(report, tally(raw_redis, traffic))
    overall = report["overall"]
    assert overall["enough_data"]
    assert overall["conversion"]["absolute"]["low"] <= 0 <= overall["conversion"]["absolute"]["high"]
    assert overall["revenue_per_customer"]["absolute"]["low"] <= 0
    assert overall["revenue_per_customer"]["absolute"]["high"] >= 0
    assert overall["conclusion"] == (
        "no difference in conversion detected; no difference in revenue per customer detected"
    )


async def test_a_small_sample_is_said_to_be_too_small_on_the_command_line_too(
    make_client: AppFactory,
    store: ProfileStore,
    clock: Clock,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rates = {"treatment": 0.5, "control": 0.2}
    folder = catalogue_copy(tmp_path, reward="conversion", share=0.5)
    clock.now = time.time() - 3 * 3600
    async with make_client(policies=folder, decision_budget_ms=ROOMY, store_timeout_ms=ROOMY_STORE_MS) as api:
        traffic = await drive(api, store, clock, folder, customers=40, rates=rates, seed=3)
        via_http = (await get_report(api, traffic)).json()
    for comparison in [via_http["overall"], *via_http["actions"], *via_http["placements"]]:
        assert not comparison["enough_data"]
        assert comparison["conclusion"] == "too small to conclude"
        [warning] = comparison["warnings"]
        assert warning.startswith("too small to conclude: ")
        assert "customers (fewer than 100)" in warning

    # `nba report` reads the same (on the wall clock: the decisions were made 3 hours ago).
    monkeypatch.setenv("NBA_REDIS_URL", redis_url)
    monkeypatch.setenv("NBA_POLICIES", str(folder))
    window = ["--from", stamp(traffic.start - MINUTE), "--to", stamp(traffic.start + 11 * MINUTE)]
    assert await asyncio.to_thread(nba, ["report", *window, "--json"]) == 0
    via_cli = json.loads(capsys.readouterr().out)
    for name in ("overall", "actions", "placements"):
        assert via_cli[name] == via_http[name]
    assert await asyncio.to_thread(nba, ["report", "--from", "4h"]) == 0
    text = capsys.readouterr().out
    for part in ("overall", "per action: proactive_chat", "per placement: web.faq", "too small to conclude"):
        assert part in text

    assert await asyncio.to_thread(nba, ["report", "--from", "yesterday"]) == 2
    assert "neither a duration" in capsys.readouterr().err
    monkeypatch.setenv("NBA_REDIS_URL", f"unix://{tmp_path}/nothing.sock")
    assert await asyncio.to_thread(nba, ["report"]) == 1


async def test_a_holdout_of_its_own_measures_its_action_within_treatment(
    make_client: AppFactory, store: ProfileStore, clock: Clock, raw_redis: redis.Redis, tmp_path: Path
) -> None:
    """generic_banner withheld from half the customers by its own holdout, a fifth in the control group:
    a customer served the banner buys with probability 0.35, any other 0.15. Its holdout comparison sets
    the treatment customers served it against the treatment customers held out of it who would have been
    (control customers in its holdout too are in neither side), and finds the planted lift of 0.2."""
    rates = {"served": 0.35, "not": 0.15}
    folder = catalogue_copy(tmp_path, reward="conversion", share=0.2, banner_holdout=0.5)
    clock.now = time.time() - 3 * 3600
    rng = random.Random(8)
    async with make_client(policies=folder, decision_budget_ms=ROOMY, store_timeout_ms=ROOMY_STORE_MS) as api:
        learner = await started(learner_for(store, folder, clock))
        traffic = Traffic(clock.now)
        answers = {f"c-{i}": await decide(api, f"c-{i}", "web.product_page") for i in range(1000)}
        await settle(learner)
        clock.advance(5 * MINUTE)
        buys = [
            (c, round(rng.uniform(20, 60), 2))
            for c, a in answers.items()
            if rng.random() < rates["served" if a["actions"] else "not"]
        ]
        await send(api, [purchase(c, r, f"o-{c}") for c, r in buys])
        for customer, revenue in buys:
            traffic.purchases[f"c:{customer}"].append((int(clock() * 1000), revenue))
        clock.advance(30 * MINUTE)
        await settle(learner)
        r = await get_report(api, traffic)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["warnings"] == []

    # Who is on each side, from the decision log: served the banner (treatment), or held out of it and
    # would have been served it (treatment too: a control customer's decision logs no holdout counterfactual).
    sides: dict[str, set[str]] = {"served": set(), "held out": set()}
    entries: list[tuple[str, dict[str, str]]] = raw_redis.xrange(DECISION_LOG)  # type: ignore[assignment]
    for _, e in entries:
        if e["group"] == "treatment" and json.loads(e["actions"]):
            sides["served"].add(e["customer"])
        if "holdout_counterfactual" in e:
            assert e["group"] == "treatment"
            assert [a["action_id"] for a in json.loads(e["holdout_counterfactual"])] == ["generic_banner"]
            sides["held out"].add(e["customer"])
    in_control = {e["customer"] for _, e in entries if e["group"] == "control"}
    held_in_control = {
        c for c in in_control if holdout.held_out(SEED, 0.5, "generic_banner", c)
    }  # in the banner's holdout, and in control: in neither side
    assert held_in_control
    assert not held_in_control & (sides["served"] | sides["held out"])
    assert 300 < len(sides["held out"]) < 500  # half of about 800 treatment customers
    bought = {c: sum(r for _, r in p) for c, p in traffic.purchases.items()}

    [banner] = report["holdouts"]
    assert banner["slice"] == "generic_banner"
    for key, side in (("treatment", "served"), ("control", "held out")):
        got, customers = banner[key], sides[side]
        assert got["customers"] == len(customers)
        assert got["conversions"] == sum(c in bought for c in customers)
        assert got["revenue"] == pytest.approx(sum(bought.get(c, 0.0) for c in customers), abs=0.01)
    # Its treatment side is its row's in the global comparison, whose control side is control's alone.
    [global_banner] = report["actions"]
    assert banner["treatment"] == global_banner["treatment"]
    assert global_banner["control"]["customers"] == len(in_control - held_in_control)
    lift = rates["served"] - rates["not"]
    se, _ = planted_se(banner, {"treatment": rates["served"], "control": rates["not"]})
    conversion = banner["conversion"]["absolute"]
    assert banner["enough_data"]
    assert conversion["low"] <= lift <= conversion["high"]
    assert abs(conversion["value"] - lift) < 4 * se
    assert banner["conclusion"] == "conversion higher in treatment; revenue per customer higher in treatment"


async def test_only_admin_keys_read_the_report(make_client: AppFactory) -> None:
    async with make_client(api_keys=KEYS) as api:
        for key in ("k-web", "k-server"):
            r = await api.get("/v1/reports/uplift", headers={"Authorization": f"Bearer {key}"})
            error_body(r, 403, "forbidden")
        error_body(await api.get("/v1/reports/uplift"), 401, "unauthorized")
        r = await api.get("/v1/reports/uplift", headers={"Authorization": "Bearer k-admin"})
        assert r.status_code == 200, r.text
        assert r.json()["overall"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"from": "last tuesday"}, "query.from"),
        ({"to": "2026-13-01T00:00:00Z"}, "query.to"),
        ({"from": "2026-11-22T10:00:00Z", "to": "2026-11-22T09:00:00Z"}, "query.from"),
        ({"from": "2026-11-22T10:00:00Z", "to": "2026-11-22T10:00:00Z"}, "query.from"),
    ],
)
async def test_a_bad_range_is_a_422_naming_the_field(
    client: httpx.AsyncClient, query: dict[str, str], field: str
) -> None:
    body = error_body(await client.get("/v1/reports/uplift", params=query), 422, "invalid_request")
    assert [f["field"] for f in body["fields"]] == [field]


async def test_the_range_defaults_to_the_last_seven_days(client: httpx.AsyncClient, clock: Clock) -> None:
    r = await client.get("/v1/reports/uplift")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["to"] == stamp(int(clock()))
    assert report["from"] == stamp(int(clock()) - 7 * 86400)
    r = await client.get("/v1/reports/uplift", params={"from": "2026-11-20T10:00:00"})  # no offset: UTC
    assert (r.json()["from"], r.json()["to"]) == ("2026-11-20T10:00:00Z", stamp(int(clock())))

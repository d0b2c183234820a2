"""The load test's traffic (load_tests/traffic.py): heavy-tailed ids, the configured mix, its bodies.

Seeded; tolerances are binomial bounds (five standard deviations), never retries."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from load_tests.traffic import (
    DECIDE,
    EVENTS,
    IDENTITIES,
    OUTCOMES,
    Call,
    Settings,
    Visitor,
    Zipf,
    platform_batch,
)


def within(observed: int, n: int, p: float) -> bool:
    """``observed`` successes of ``n`` is within five standard deviations of ``n * p``."""
    return abs(observed - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1


def visitor(seed: int = 1, **overrides: object) -> Visitor:
    settings = Settings(customers=10_000, products=500, **overrides)  # type: ignore[arg-type]
    return Visitor.create(settings, random.Random(seed), Zipf(10_000, 1.1), Zipf(500, 1.1))


def test_top_one_percent_of_ids_take_most_draws() -> None:
    ids = Zipf(100_000, 1.1)
    rng = random.Random(7)
    draws = [ids.draw(rng) for _ in range(100_000)]
    assert min(draws) >= 1
    assert max(draws) <= 100_000
    top = sum(1 for d in draws if d <= 1000)
    assert ids.share(1000) > 0.7  # the top 1% of ids take about three quarters of the traffic
    assert within(top, len(draws), ids.share(1000))
    assert within(Counter(draws)[1], len(draws), ids.share(1))  # the single hottest id: ~9.5%


def test_a_larger_exponent_is_more_skewed_and_bad_parameters_are_refused() -> None:
    assert Zipf(10_000, 1.5).share(100) > Zipf(10_000, 1.1).share(100) > Zipf(10_000, 0.5).share(100)
    with pytest.raises(ValueError, match="Zipf"):
        Zipf(0, 1.1)
    with pytest.raises(ValueError, match="Zipf"):
        Zipf(10, 0)


def test_settings_from_the_environment() -> None:
    assert Settings.from_env({}) == Settings()
    settings = Settings.from_env(
        {
            "NBA_LOAD_CUSTOMERS": "5000",
            "NBA_LOAD_STEPS": "view=1, add_to_cart=0",
            "NBA_LOAD_PLACEMENTS": "web.home=1",
            "NBA_LOAD_OUTCOME_SHARE": "0.5",
            "NBA_LOAD_SERVER_KEY": "k-server",
        }
    )
    assert settings.customers == 5000
    assert settings.steps == {"view": 1.0, "add_to_cart": 0.0}
    assert settings.placements == {"web.home": 1.0}
    assert settings.outcome_share == 0.5
    assert settings.identities
    for bad in (
        {"NBA_LOAD_STEPS": "browse=1"},
        {"NBA_LOAD_STEPS": "view"},
        {"NBA_LOAD_PLACEMENTS": "web.home=0"},
        {"NBA_LOAD_CLICK_SHARE": "1.5"},
        {"NBA_LOAD_BATCH_MAX": "2000"},
        {"NBA_LOAD_CUSTOMERS": "many"},
        {"NBA_LOAD_PLACEMENTS": "web.home=lots"},
    ):
        with pytest.raises(ValueError, match="NBA_LOAD_"):
            Settings.from_env(bad)


def run(v: Visitor, steps: int) -> list[Call]:
    """Drive a visitor, every decision answered with one action."""
    calls: list[Call] = []
    for i in range(steps):
        for call in v.next_calls():
            calls.append(call)
            answer = {"decision_id": f"d-{i}", "fallback": False, "actions": [{"action_id": "a"}]}
            v.observe(call, answer if call.name == DECIDE else {"accepted": 1})
    return calls


def test_page_views_follow_the_placement_weights() -> None:
    v = visitor(outcome_share=0.0)
    decisions = [c for c in run(v, 20_000) if c.name == DECIDE]
    placements = Counter(c.body["placement"] for c in decisions)
    total = sum(v.settings.placements.values())
    for placement, weight in v.settings.placements.items():
        assert within(placements[placement], len(decisions), weight / total), placement
    events = {c.body["placement"]: c.body["event"]["type"] for c in decisions}
    assert events == {
        "web.home": "page_view",
        "web.cart": "page_view",
        "web.product_page": "product_view",
        "web.faq": "faq_view",
    }


def test_a_share_of_decisions_get_clicks_and_dismissals() -> None:
    v = visitor(outcome_share=0.3, click_share=0.4)
    calls = run(v, 20_000)
    decisions = [c for c in calls if c.name == DECIDE]
    outcomes = [c for c in calls if c.name == OUTCOMES]
    # An owed outcome is the visitor's next call, before any new visit: none is lost.
    assert within(len(outcomes), len(decisions), 0.3)
    clicks = sum(1 for c in outcomes if c.body["type"] == "click")
    assert within(clicks, len(outcomes), 0.4)
    assert {c.body["type"] for c in outcomes} == {"click", "dismiss"}
    assert {c.body["decision_id"] for c in outcomes} <= {f"d-{i}" for i in range(20_000)}


def test_no_outcome_for_a_fallback_or_an_empty_answer() -> None:
    v = visitor(outcome_share=1.0)
    call = v.view()
    v.observe(call, {"decision_id": "d-1", "fallback": True, "actions": [{"action_id": "a"}]})
    v.observe(call, {"decision_id": "d-2", "fallback": False, "actions": []})
    assert v.pending == []


def test_purchases_buy_the_cart_and_visits_start_anonymous_or_known() -> None:
    v = visitor()
    calls = run(v, 20_000)
    purchases = [c.body for c in calls if c.name == EVENTS and c.body["type"] == "purchase"]
    assert purchases
    assert all(p["properties"]["item_ids"] and p["properties"]["revenue"] > 0 for p in purchases)
    assert len({p["properties"]["order_id"] for p in purchases}) == len(purchases)
    event_ids = [c.body["event_id"] for c in calls if c.name == EVENTS]
    assert len(set(event_ids)) == len(event_ids)
    anonymous = [c.body for c in calls if "anonymous_id" in c.body]
    known = [c.body for c in calls if "customer_id" in c.body]
    assert anonymous
    assert known
    assert all("customer_id" not in b for b in anonymous)


def test_logins_link_the_visitor_only_with_a_server_key() -> None:
    for identities in (False, True):
        v = visitor(identities=identities, known_share=0.0)
        calls = run(v, 5000)
        links = [c for c in calls if c.name == IDENTITIES]
        logins = [c for c in calls if c.name == EVENTS and c.body["type"] in ("login", "signup")]
        assert logins
        assert len(links) == (len(logins) if identities else 0)
        assert all(c.scope == "server" for c in links)
        assert all(c.scope == "web" for c in calls if c.name != IDENTITIES)
        assert len({c.body["anonymous_id"] for c in links}) == len(links)  # one customer per visitor id
    v = visitor(identities=True, known_share=0.0)
    anonymous = v.anonymous_id
    event, link = v.login()
    assert link.body == {"anonymous_id": anonymous, "customer_id": v.customer_id}
    assert event.body["customer_id"] == v.customer_id
    assert v.view().body["customer_id"] == v.customer_id


def test_platform_batches_are_within_their_size_and_draw_hot_customers() -> None:
    settings = Settings(batch_min=100, batch_max=500)
    rng = random.Random(3)
    customers = Zipf(settings.customers, settings.zipf_s)
    sizes = []
    for _ in range(50):
        events = platform_batch(settings, rng, customers).body["events"]
        sizes.append(len(events))
        assert len({e["event_id"] for e in events}) == len(events)
    assert min(sizes) >= 100
    assert max(sizes) <= 500
    assert max(sizes) - min(sizes) > 200

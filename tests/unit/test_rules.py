"""Rules evaluated directly (policies/rules.py ``_closures``) answer as simpleeval answers them."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from feature_store.features import NEVER, feature_names, features
from policies.catalogue import default_path, load
from policies.rules import Rule, RuleEvaluationError, compile_rule

FEATURES = feature_names()
SHIPPED = load(default_path(), FEATURES)
SHIPPED_RULES = sorted(
    {a.rule.source for a in SHIPPED.actions.values()}
    | {t.condition.source for t in SHIPPED.triggers.values()}
)

# What the closures take, at their edges: chains, negation, literals of every kind, collections, values
# that decide an and/or, names a profile lacks, comparisons that fail on None.
EDGES = [
    "profile.orders >= 1",
    "1 <= profile.orders < 3",
    "0 < profile.orders <= profile.cart_items < 4",
    "not profile.purchased_7d",
    "not not profile.cart_items",
    "-profile.revenue < -100.0",
    "-profile.orders < +profile.cart_items",
    "profile.page_view_total + profile.product_view_total * 2 - 1 >= 3",
    "profile.days_since_cart_change >= 30 / 1440 and profile.revenue // 100 % 3 == 2",
    "profile.orders / profile.cart_items > 1",  # divides by zero in some
    "2 ** profile.orders > 4",
    "profile.stage in ('loyalty', 'lapsed')",
    "profile.stage not in ['awareness', 'consideration']",
    "profile.orders in {0, 2}",
    "'returns-policy' not in profile.articles_read",
    "context.device == 'mobile' or context.device is None",
    "context.device is not None and context.device != 'tablet'",
    "context.hour >= 12",  # None >= 12 when absent
    "context.vip == True",
    "(profile.orders or profile.cart_items) == 2",
    "(profile.orders and profile.cart_items) == 0",
    "profile.orders or profile.cart_items or profile.revenue",
    "profile.days_since_purchase < 30 and profile.orders > 0 or profile.cart_value > 40",
    "profile.quiz_completed_7d >= 1",  # a feature of a declared type the profile may lack
    "context.tags == [1, 2]",
    "True",
    "None",
    "''",
    # Methods of values, and choices.
    "profile.attributes.get('tier') == 'gold'",
    "profile.attributes.get('has_app') != True",
    "profile.attributes.get('tier', 'none').upper() in ('GOLD', 'NONE')",
    "profile.attributes.get('tier').startswith('g')",  # None has no startswith in some
    "profile.orders > 2 and profile.stage.nonesuch()",  # not a method of str, nor a key: an error
    "profile.orders > 2 and profile.attributes.tier()",  # a key, read as simpleeval reads it, not callable
    "context.page.startswith('/help')",  # None in some
    "profile.articles_read.issuperset(['size-guide']) or context.tags.count(2) > 0",
    "profile.cart_value * 2 > 10 if profile.cart_items else False",
    "(context.hour if context.hour is not None else 0) > 12",
]
# Not taken: simpleeval evaluates these, and the closures must leave them to it.
NOT_DIRECT = [
    "profile.attributes.tier == 'gold'",
    "context.get('device') == 'mobile'",
    "profile.stage.split(sep='-') == ['loyalty']",
    "profile.stage.format() == 'loyalty'",
    "profile.orders == 1j",
    "profile.stage == '" + "x" * 100_001 + "'",
]
KNOWN = FEATURES | {"quiz_completed_7d"}


def _outcome(rule: Rule, profile: dict[str, Any], context: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "holds", rule.evaluate(profile, context)
    except RuleEvaluationError as exc:
        return "error", str(exc)


def _situations(seed: int, count: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Profiles and contexts that take each rule both ways: counts, days, stages, sets, missing names."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        values = features(None, 0)
        for name in values:
            if name.endswith(("_total", "_30m", "_24h", "_7d", "_30d")) or name in ("orders", "cart_items"):
                values[name] = rng.choice([0, 0, 1, 2, 3, 5])
            elif name.startswith("days_since_"):
                values[name] = rng.choice([0.0, 1.5, 2.0, 6.0, 13.9, 29.0, 44.0, 364.0, NEVER])
        values["stage"] = rng.choice(
            ["awareness", "consideration", "purchase", "retention", "loyalty", "lapsed"]
        )
        values["revenue"] = rng.choice([0.0, 49.99, 500.0, 1200.0])
        values["cart_value"] = rng.choice([0.0, 20.0, 45.5, 80.0, 120.0])
        values["purchased_7d"] = values["purchased_30d"] = rng.random() < 0.3
        values["articles_read"] = frozenset(rng.sample(["returns-policy", "delivery-times", "size-guide"], 2))
        values["is_known"] = rng.random() < 0.7
        values["top_item_views"] = rng.choice([0, 1, 3, 4])
        values["attributes"] = rng.choice(
            [{}, {"tier": "gold", "has_app": True}, {"tier": "silver", "has_app": False}, {"tier": 3}]
        )
        if rng.random() < 0.5:
            values["quiz_completed_7d"] = rng.choice([0, 1])
        context = {
            k: v
            for k, v in (
                ("device", rng.choice(["mobile", "desktop", "tablet"])),
                ("hour", rng.choice([3, 12, 14, 22])),
                ("vip", rng.choice([True, False, 1])),
                ("tags", rng.choice([[1, 2], [2], []])),
                ("page", rng.choice(["/help/returns", "/", "/products/1"])),
            )
            if rng.random() < 0.7
        }
        out.append((values, context))
    return out


SITUATIONS = _situations(seed=7, count=200)


DIRECT_SHIPPED = [source for source in SHIPPED_RULES if compile_rule(source, KNOWN).direct is not None]


@pytest.mark.parametrize("source", DIRECT_SHIPPED + EDGES)
def test_a_direct_rule_answers_as_simpleeval_does(source: str) -> None:
    rule = compile_rule(source, KNOWN)
    assert rule.direct is not None
    by_simpleeval = dataclasses.replace(rule, direct=None)
    outcomes = set()
    for profile, context in SITUATIONS:
        direct, reference = _outcome(rule, profile, context), _outcome(by_simpleeval, profile, context)
        assert direct == reference, (profile, context)
        outcomes.add(direct)
    if source in ("True", "None", "''"):
        return
    assert len(outcomes) > 1, "the situations take each rule more than one way"


def test_the_shipped_rules_are_all_direct() -> None:
    assert DIRECT_SHIPPED == SHIPPED_RULES


@pytest.mark.parametrize("source", NOT_DIRECT, ids=lambda s: s[:60])
def test_other_constructs_are_left_to_simpleeval(source: str) -> None:
    assert compile_rule(source, KNOWN).direct is None


def test_a_missing_feature_fails_as_in_simpleeval() -> None:
    rule = compile_rule("profile.orders > 1 and profile.cart_items > 0", KNOWN)
    assert rule.direct is not None
    direct = _outcome(rule, {"orders": 2}, {})
    assert direct == _outcome(dataclasses.replace(rule, direct=None), {"orders": 2}, {})
    assert direct[0] == "error"
    assert "NameNotDefined" in direct[1]
    assert "profile.cart_items" in direct[1]


@pytest.mark.parametrize("value", [eval, random], ids=["a forbidden function", "a module"])
def test_a_method_call_refuses_what_simpleeval_refuses(value: Any) -> None:
    """Features and JSON never hold these; were one to, the closures refuse it as simpleeval does
    (simpleeval, which checks every value, refuses a module already in the mapping that holds it)."""
    rule = compile_rule("profile.attributes.reach('1')", KNOWN)
    assert rule.direct is not None
    profile = {"attributes": {"reach": value}}
    for outcome in (
        _outcome(rule, profile, {}),
        _outcome(dataclasses.replace(rule, direct=None), profile, {}),
    ):
        assert outcome[0] == "error"
        assert outcome[1].startswith("FeatureNotAvailable: Sorry, modules are not allowed") or outcome[1] == (
            "FeatureNotAvailable: This function is forbidden"
        )

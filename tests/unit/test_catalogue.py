"""The catalogue: the shipped one loads and holds the retail journey; a broken one lists every problem at
once; rules and durations behave as docs/catalogue.md says. Pure code: no Redis, no event loop (the
``nba check`` tests start the CLI in a subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from feature_store.features import NEVER, feature_names, features
from policies.catalogue import Catalogue, CatalogueInvalid, CatalogueProblem, default_path, load
from policies.durations import parse_duration
from policies.rules import RuleError, RuleEvaluationError, compile_rule

ROOT = Path(__file__).resolve().parents[2]
FEATURES = feature_names()
MINUTE = 1 / 1440  # of a day, as days_since_* counts


@pytest.fixture(scope="module")
def shipped() -> Catalogue:
    return load(default_path(), FEATURES)


def profile(**overrides: Any) -> dict[str, Any]:
    """The features of a customer seen for the first time, with some changed."""
    out = features(None, 0)
    unknown = set(overrides) - set(out)
    assert not unknown, f"not features: {unknown}"
    out.update(overrides)
    return out


def eligible(catalogue: Catalogue, placement: str, features: Mapping[str, Any], **context: Any) -> set[str]:
    """The actions of a placement whose rule holds and whose consent is granted (before contact policy)."""
    out = set()
    for action in catalogue.by_placement[placement]:
        try:
            holds = action.rule.evaluate(features, context)
        except RuleEvaluationError:
            holds = False
        consent = action.spec.consent
        if holds and (consent is None or features["consent"].get(consent) is True):
            out.add(action.id)
    return out


# The shipped catalogue ----------------------------------------------------------------------------------

PLACEMENTS = {
    "web.home": "web",
    "web.product_page": "web",
    "web.cart": "web",
    "web.faq": "web",
    "web.support": "web",
    "chat.proactive": "chat",
    "email.cart_recovery": "email",
    "email.lifecycle": "email",
    "email.browse_abandonment": "email",
    "email.post_purchase": "email",
    "email.winback": "email",
    "push.app": "push",
}
ARTICLES = {
    # action -> (article id, features under which the suggestion holds while the article is unread)
    "article_returns_policy": ("returns-policy", {"orders": 1}),
    "article_delivery_times": ("delivery-times", {"cart_items": 1}),
    "article_payment_options": ("payment-options", {"cart_items": 1}),
    "article_size_guide": ("size-guide", {"top_item_views": 2}),
    "article_warranty_claims": ("warranty-claims", {"orders": 1, "support_ticket_30d": 1}),
}


def test_the_shipped_catalogue_loads(shipped: Catalogue) -> None:
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}\.\d+", shipped.version)
    assert {name: p.channel for name, p in shipped.placements.items()} == PLACEMENTS
    assert len(shipped.actions) >= 22
    assert len({a.source for a in shipped.actions.values()}) >= 5, "actions are split by journey stage"
    for placement, actions in shipped.by_placement.items():
        assert actions, f"{placement} has no action"


def test_the_shipped_catalogue_has_the_journey(shipped: Catalogue) -> None:
    required = {
        "proactive_chat_help",
        "cart_recovery_email",
        "browse_abandonment_email",
        "welcome_email",
        "first_purchase_incentive",
        "post_purchase_follow_up",
        "nps_survey",
        "referral_ask_email",
        "winback_email",
        "order_status_message",
        *ARTICLES,
    }
    assert required <= set(shipped.actions)


def test_the_shipped_catalogue_has_the_four_triggers_and_they_deliver(shipped: Catalogue) -> None:
    triggers = {t.id: t.spec for t in shipped.triggers.values()}
    assert set(triggers) == {"cart_abandonment", "browse_abandonment", "post_purchase_nps", "winback"}
    cart = triggers["cart_abandonment"]
    assert (cart.start, cart.delay, set(cart.cancel)) == (
        ("add_to_cart",),
        30 * 60_000,
        {"checkout_started", "purchase"},
    )
    assert triggers["post_purchase_nps"].delay == 7 * 86_400_000
    assert triggers["winback"].delay == 30 * 86_400_000
    for trigger in triggers.values():
        actions = shipped.by_placement[trigger.placement]
        assert actions, trigger.id
        assert all(a.spec.destination == "platform" for a in actions), trigger.id
    assert shipped.destinations["platform"].secret == "NBA_PLATFORM_SECRET"
    # At its due time, the cart email's rule holds for the cart the trigger was started by.
    cart_left = profile(is_known=True, cart_items=1, cart_value=30.0, days_since_cart_change=30 * MINUTE)
    assert "cart_recovery_email" in eligible(
        shipped, "email.cart_recovery", cart_left | {"consent": {"email": True}}
    )


def test_every_shipped_action_is_complete(shipped: Catalogue) -> None:
    for action in shipped.actions.values():
        spec = action.spec
        assert spec.description, spec.id
        assert spec.value > 0, spec.id
        assert "message" in spec.payload or "template" in spec.payload, spec.id
        if spec.channel in ("email", "push"):
            assert spec.consent == spec.channel, f"{spec.id} must need {spec.channel} consent"
        if spec.exempt:
            assert spec.reoffer_after_conversion, f"{spec.id}: a service message is offered again"


def test_the_shipped_contact_policy(shipped: Catalogue) -> None:
    policy = shipped.contact_policy
    limits = {ch: {(limit.max, limit.per) for limit in lim} for ch, lim in policy.channels.items()}
    day, week = 86_400_000, 7 * 86_400_000
    assert limits["email"] == {(1, day), (3, week)}
    assert (3, 30 * 60_000) in limits["web"]
    assert policy.overall
    assert 0 < shipped.holdout.share <= 0.1
    weights = {key for a in shipped.actions.values() for key in a.spec.context_weights}
    assert {"device", "referrer"} <= weights


def test_fallbacks_only_where_nothing_is_sent_blind(shipped: Catalogue) -> None:
    for name, placement in shipped.placements.items():
        if placement.channel == "web":
            assert placement.fallback, f"{name} should have a fallback"
        else:
            assert not placement.fallback, f"{name}: no {placement.channel} without knowing who"


def test_article_suggestions_never_repeat_an_article_read(shipped: Catalogue) -> None:
    for action_id, (article, overrides) in ARTICLES.items():
        action = shipped.actions[action_id]
        assert action.spec.exempt
        assert action.spec.payload["article_id"] == article
        unread = profile(**overrides)
        assert action.rule.evaluate(unread, {}), action_id
        read = unread | {"articles_read": frozenset({article, "something-else"})}
        assert not action.rule.evaluate(read, {}), action_id


def test_proactive_chat_for_a_faq_reader_before_buying(shipped: Catalogue) -> None:
    reader = profile(stage="consideration", faq_view_30m=2)
    assert eligible(shipped, "chat.proactive", reader) == {"proactive_chat_help"}
    assert eligible(shipped, "chat.proactive", reader | {"orders": 1}) == set()
    assert eligible(shipped, "chat.proactive", profile(faq_view_30m=1)) == set()
    pricing = profile(page_view_30m=3)
    assert eligible(shipped, "chat.proactive", pricing, page_type="pricing") == {"proactive_chat_help"}
    assert eligible(shipped, "chat.proactive", pricing, page_type="home") == set()


def test_abandoned_cart_email_after_thirty_minutes(shipped: Catalogue) -> None:
    cart = profile(stage="purchase", is_known=True, cart_items=2, cart_value=60.0, consent={"email": True})
    assert eligible(shipped, "email.cart_recovery", cart | {"days_since_cart_change": 31 * MINUTE}) == {
        "cart_recovery_email"
    }
    assert eligible(shipped, "email.cart_recovery", cart | {"days_since_cart_change": 29 * MINUTE}) == set()
    later = cart | {"days_since_cart_change": 31 * MINUTE}
    assert eligible(shipped, "email.cart_recovery", later | {"consent": {}}) == set()
    assert eligible(shipped, "email.cart_recovery", later | {"consent": {"email": False}}) == set()
    assert eligible(shipped, "email.cart_recovery", later | {"purchased_24h": True}) == set()
    big = cart | {"cart_value": 120.0, "days_since_cart_change": 1.5}
    assert eligible(shipped, "email.cart_recovery", big) == {
        "cart_recovery_email",
        "cart_recovery_incentive_email",
    }


def test_lifecycle_emails(shipped: Catalogue) -> None:
    known = profile(is_known=True, consent={"email": True})
    signup = known | {"stage": "consideration", "signup_total": 1, "days_since_signup": 0.2}
    assert eligible(shipped, "email.lifecycle", signup) == {"welcome_email"}
    browsing = known | {"top_item_views": 3, "days_since_product_view": 0.5}
    assert eligible(shipped, "email.lifecycle", browsing) == {"browse_abandonment_email"}
    assert eligible(shipped, "email.lifecycle", browsing | {"purchased_7d": True}) == set()
    bought = known | {"stage": "retention", "orders": 1, "purchased_7d": True, "purchased_30d": True}
    assert eligible(shipped, "email.lifecycle", bought | {"days_since_purchase": 3}) == {
        "post_purchase_follow_up"
    }
    assert eligible(shipped, "email.lifecycle", bought | {"days_since_purchase": 10}) == {"nps_survey"}
    loyal = bought | {"stage": "loyalty", "orders": 4, "days_since_purchase": 20}
    assert eligible(shipped, "email.lifecycle", loyal) == {"referral_ask_email"}
    lapsed = known | {"stage": "lapsed", "orders": 2, "days_since_purchase": 120}
    assert eligible(shipped, "email.lifecycle", lapsed) == {"winback_email"}


def test_service_messages(shipped: Catalogue) -> None:
    bought = profile(orders=1, purchased_24h=True, purchased_7d=True, days_since_purchase=0.5)
    assert "order_status_message" in eligible(shipped, "web.support", bought)
    assert shipped.actions["order_status_message"].spec.exempt
    assert "order_status_message" not in eligible(shipped, "web.support", profile())


@pytest.mark.parametrize(
    ("who", "overrides", "context"),
    [
        ("a first page view", {"page_view_total": 1, "days_since_page_view": 0.0}, {"device": "desktop"}),
        ("a brand-new visitor", {}, {}),
    ],
)
def test_nothing_fits_some_profiles(
    shipped: Catalogue, who: str, overrides: dict[str, Any], context: dict[str, Any]
) -> None:
    """Doing nothing is an answer: an empty ``actions`` list, not an action of its own."""
    someone = profile(**overrides)
    for placement in shipped.placements:
        assert eligible(shipped, placement, someone, **context) == set(), f"{who} at {placement}"


def test_nothing_on_the_cart_page_right_after_an_order(shipped: Catalogue) -> None:
    bought = profile(
        stage="retention",
        is_known=True,
        orders=1,
        purchased_24h=True,
        purchased_7d=True,
        days_since_purchase=0.01,
    )
    assert eligible(shipped, "web.cart", bought) == set()


# A broken catalogue: every problem at once ------------------------------------------------------------

MAIN = """
version: "t.1"
contact_policy:
  channels:
    web: [{max: 3, per: 30m}]
    emial: [{max: 1, per: 24h}]
placements:
  web.home: {channel: web, fallback: [ghost, fine]}
  email.lifecycle: {channel: email}
  web.cart: {channel: web, limt: 2}
"""
ACTIONS = """
actions:
  - id: fine
    channel: web
    placements: [web.home]
    rule: "profile.orders == 0"
  - id: unknown_feature
    channel: web
    placements: [web.home]
    rule: "profile.faq_views_30m >= 2"
  - id: bad_syntax
    channel: web
    placements: [web.home]
    rule: "profile.orders >"
  - id: dunder
    channel: web
    placements: [web.home]
    rule: "profile.attributes.__class__ == 1"
  - id: unknown_name
    channel: web
    placements: [web.home]
    rule: "orders > 1"
  - id: no_such_placement
    channel: web
    placements: [web.hme]
  - id: wrong_channel
    channel: email
    placements: [web.home]
  - id: bad_duration
    channel: web
    placements: [web.home]
    cooldown_after_dismiss: 3 days
  - id: negative_value
    channel: web
    placements: [web.home]
    value: -1
  - id: typo
    channel: web
    placements: [web.home]
    limts: [{max: 1, per: 24h}]
"""
MORE = """
version: "t.2"
actions:
  - id: fine
    channel: web
    placements: [web.home]
"""
NOT_YAML = "actions:\n  - id: x\n    channel: web\n   placements: [web.home]\n"


def write(folder: Path, files: Mapping[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def problems_of(path: Path) -> list[CatalogueProblem]:
    with pytest.raises(CatalogueInvalid) as caught:
        load(path, FEATURES)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return caught.value.problems


def one(problems: list[CatalogueProblem], file: str, where: str, problem: str) -> CatalogueProblem:
    found = [p for p in problems if p.file == file and where in p.where and problem in p.problem]
    assert len(found) == 1, f"{file}: {where}: {problem} not in:\n" + "\n".join(map(str, problems))
    return found[0]


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    return write(
        tmp_path / "broken",
        {"catalogue.yaml": MAIN, "actions.yaml": ACTIONS, "more.yaml": MORE, "zz-not-yaml.yaml": NOT_YAML},
    )


def test_a_broken_catalogue_lists_every_problem(broken: Path) -> None:
    problems = problems_of(broken)
    one(problems, "actions.yaml", "action 'unknown_feature'.rule", "unknown feature profile.faq_views_30m")
    one(problems, "actions.yaml", "action 'unknown_feature'.rule", "did you mean faq_view_30m")
    one(problems, "actions.yaml", "action 'bad_syntax'.rule", "syntax error")
    one(problems, "actions.yaml", "action 'dunder'.rule", "'__class__' is not allowed")
    one(problems, "actions.yaml", "action 'unknown_name'.rule", "unknown name 'orders'")
    one(problems, "actions.yaml", "action 'no_such_placement'.placements", "no placement 'web.hme'")
    one(
        problems,
        "actions.yaml",
        "action 'wrong_channel'.placements",
        "on channel 'web', the action on 'email'",
    )
    one(
        problems, "actions.yaml", "action 'bad_duration'.cooldown_after_dismiss", "'3 days' is not a duration"
    )
    one(problems, "actions.yaml", "action 'negative_value'.value", "greater than or equal to 0")
    one(problems, "actions.yaml", "action 'typo'.limts", "unknown field; did you mean limits?")
    one(problems, "catalogue.yaml", "placement 'web.cart'.limt", "did you mean limit?")
    one(problems, "catalogue.yaml", "placement 'web.home'.fallback", "no action 'ghost'")
    one(problems, "catalogue.yaml", "contact_policy.channels.emial", "no placement is on channel 'emial'")
    one(problems, "more.yaml", "version", "already given in catalogue.yaml")
    one(problems, "more.yaml", "action 'fine'", "also defined in actions.yaml")
    one(problems, "zz-not-yaml.yaml", "line 4", "not valid YAML")
    assert len(problems) == 15, "\n".join(map(str, problems))
    # The YAML file could not be read, so references that find nothing say it may hold them.
    assert (
        "zz-not-yaml.yaml, which could not be read"
        in one(problems, "actions.yaml", "no_such_placement", "").problem
    )


def test_without_the_unreadable_file_nothing_is_hedged(broken: Path) -> None:
    (broken / "zz-not-yaml.yaml").unlink()
    problems = problems_of(broken)
    assert len(problems) == 14
    assert not any("could not be read" in p.problem for p in problems)


def test_one_invalid_action_does_not_hide_or_invent_others(tmp_path: Path) -> None:
    """A placement whose definition is wrong still exists: actions naming it are not blamed too."""
    folder = write(
        tmp_path / "c",
        {
            "catalogue.yaml": 'version: "1"\nplacements:\n  web.home: {channel: web, limit: 0}\n',
            "actions.yaml": (
                "actions:\n"
                "  - {id: a, channel: web, placements: [web.home], rule: 'profile.nope'}\n"
                "  - {id: b, channel: web, placements: [web.home], value: -2}\n"
            ),
        },
    )
    problems = problems_of(folder)
    assert [(p.file, p.where) for p in problems] == [
        ("actions.yaml", "action 'b'.value"),
        ("actions.yaml", "action 'a'.rule"),
        ("catalogue.yaml", "placement 'web.home'.limit"),
    ]


def test_a_missing_version(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "c",
        {
            "a.yaml": "placements:\n  web.home: {channel: web}\n",
            "b.yaml": "actions:\n  - {id: a, channel: web, placements: [web.home]}\n",
        },
    )
    [problem] = problems_of(folder)
    assert (problem.file, problem.where) == ("c/", "version")
    assert "needs a version" in problem.problem


def test_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not a catalogue")
    [problem] = problems_of(tmp_path)
    assert "holds no .yaml or .yml file" in problem.problem
    [problem] = problems_of(tmp_path / "nowhere")
    assert "does not exist" in problem.problem


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    """PyYAML would keep the second rule without a word."""
    text = 'version: "1"\nplacements: {w: {channel: web}}\nactions:\n  - id: a\n    channel: web\n'
    text += "    placements: [w]\n    rule: 'True'\n    rule: 'False'\n"
    [problem] = problems_of(write(tmp_path / "c", {"c.yaml": text}))
    assert (problem.where, problem.problem) == (
        "line 8",
        "not valid YAML: 'rule' is given twice in the same mapping (column 5)",
    )


def test_what_yaml_reads_as_other_types(tmp_path: Path) -> None:
    """An unquoted date as version, true or 14 as context values: read as the marketer meant them."""
    text = (
        "version: 2026-11-22\n"
        "placements: {w: {channel: web}}\n"
        "actions:\n"
        "  - {id: a, channel: web, placements: [w], context_weights: {member: {true: 1.5}, hour: {14: 2}}}\n"
    )
    catalogue = load(write(tmp_path / "c", {"c.yaml": text}), FEATURES)
    assert catalogue.version == "2026-11-22"
    assert catalogue.actions["a"].spec.context_weights == {"member": {"true": 1.5}, "hour": {"14": 2.0}}
    [problem] = problems_of(write(tmp_path / "d", {"c.yaml": "version: 1.10\n"}))
    assert "write the version in quotes" in problem.problem


def test_declared_event_types_become_features(tmp_path: Path) -> None:
    text = (
        'version: "1"\nevent_types: [quiz.completed]\nplacements: {w: {channel: web}}\n'
        "actions:\n  - {id: a, channel: web, placements: [w], rule: 'profile.quiz_completed_7d >= 1'}\n"
    )
    catalogue = load(write(tmp_path / "c", {"c.yaml": text}), FEATURES)
    assert catalogue.actions["a"].rule.evaluate({"quiz_completed_7d": 1}, {})


# Rules ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "context", "expected"),
    [
        ("context.device == 'mobile'", {"device": "mobile"}, True),
        ("context.device == 'mobile'", {}, False),
        ("context.device is None", {}, True),
        ("context['items'] == 3", {"items": 3}, True),
        ("context.get('referrer', 'none') == 'none'", {}, True),
        ("context.page.startswith('/help')", {"page": "/help/returns"}, True),
    ],
)
def test_context_reads(rule: str, context: dict[str, Any], expected: bool) -> None:
    assert compile_rule(rule, FEATURES).evaluate(profile(), context) is expected


@pytest.mark.parametrize(
    ("rule", "overrides", "expected"),
    [
        ("profile.faq_view_30m >= 2 and profile.orders == 0", {"faq_view_30m": 2}, True),
        ("profile.faq_view_30m >= 2 and profile.orders == 0", {"faq_view_30m": 2, "orders": 1}, False),
        ("'returns-policy' not in profile.articles_read", {}, True),
        (
            "'returns-policy' not in profile.articles_read",
            {"articles_read": frozenset({"returns-policy"})},
            False,
        ),
        ("profile.days_since_cart_change >= 30 / 1440", {"days_since_cart_change": 31 * MINUTE}, True),
        ("profile.days_since_purchase < 30", {}, False),  # never bought: NEVER days
        ("profile.attributes.get('tier') == 'gold'", {"attributes": {"tier": "gold"}}, True),
        ("profile.stage in ('loyalty', 'lapsed')", {"stage": "loyalty"}, True),
        ("profile.orders == 0\n  and profile.cart_items > 0", {"cart_items": 1}, True),  # a YAML block
        (
            "profile.cart_value * 2 > 10 if profile.cart_items else False",
            {"cart_items": 1, "cart_value": 6},
            True,
        ),
    ],
)
def test_profile_reads(rule: str, overrides: dict[str, Any], expected: bool) -> None:
    assert compile_rule(rule, FEATURES).evaluate(profile(**overrides), {}) is expected
    assert profile()["days_since_purchase"] == NEVER


@pytest.mark.parametrize(
    ("rule", "features", "context"),
    [
        ("context.hour >= 12", {}, {}),  # None >= 12
        ("profile.orders > 1", {}, {}),  # a feature the profile lacks
        ("profile.orders / profile.cart_items > 1", {"orders": 1, "cart_items": 0}, {}),
        ("profile.attributes.get('sizes')[0] == 'M'", {"attributes": {"sizes": []}}, {}),
        ("context.device.startswith('m')", {}, {}),
    ],
)
def test_a_rule_that_cannot_be_evaluated_raises(
    rule: str, features: dict[str, Any], context: dict[str, Any]
) -> None:
    compiled = compile_rule(rule, FEATURES)
    with pytest.raises(RuleEvaluationError):
        compiled.evaluate(features, context)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("", "the rule is empty"),
        ("profile.orders >", "syntax error at column 17"),
        ("profile.stage = 'loyalty'", "'=' assigns, it does not compare: write '=='"),
        ("profile.orders > 1; True", "a rule is one expression"),
        ("import os", "not a statement (Import)"),
        ("profile.ordrs > 1", "unknown feature profile.ordrs; did you mean orders?"),
        ("profile['ordrs'] > 1", "unknown feature profile.ordrs"),
        ("orders > 1", "unknown name 'orders'"),
        ("len(profile.viewed_items) > 1", "only methods of values may be called"),
        ("profile.__class__", "attribute '__class__' is not allowed"),
        ("context.__class__", "attribute '__class__' is not allowed"),
        ("profile.consent.clear() or True", "method 'clear' changes a value"),
        ("context.items == 2", "write context['items']"),
        ("lambda: True", "Lambda is not allowed"),
        ("[x for x in profile.viewed_items]", "ListComp is not allowed"),
        ("(x := 1)", "NamedExpr is not allowed"),
        ("profile.orders @ 2", "operator MatMult is not allowed"),
    ],
)
def test_a_rule_that_cannot_compile(rule: str, message: str) -> None:
    with pytest.raises(RuleError, match=re.escape(message)):
        compile_rule(rule, FEATURES)


# Durations --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [("90s", 90_000), ("30m", 1_800_000), ("24h", 86_400_000), ("7d", 604_800_000), ("2w", 1_209_600_000),
     (" 5 m ", 300_000), (45, 45_000)],
)  # fmt: skip
def test_durations(text: str | int, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["3 days", "1.5h", "30", "m", "", True, 1.5, None])
def test_not_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# Packaging and the command ------------------------------------------------------------------------------


def test_the_wheel_ships_the_catalogue() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "catalogue/*.yaml" in config["tool"]["setuptools"]["package-data"]["policies"]
    assert default_path() == ROOT / "policies" / "catalogue"


def nba_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_nba_check_a_good_catalogue(shipped: Catalogue) -> None:
    expected = (
        f"ok: {len(PLACEMENTS)} placements, {len(shipped.actions)} actions, version {shipped.version}\n"
    )
    for args in ((str(default_path()),), ()):
        result = nba_check(*args)
        assert (result.returncode, result.stdout, result.stderr) == (0, expected, "")


@pytest.mark.slow
def test_nba_check_a_broken_catalogue(broken: Path) -> None:
    result = nba_check(str(broken))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [str(p) for p in problems_of(broken)]
    assert all(re.match(r"^[\w.-]+\.yaml: .+: .+", line) for line in lines), lines

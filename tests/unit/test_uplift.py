"""The uplift report's statistics against known values, and its counting of customers on hand-made
reward entries.

Known values: Newcombe's published intervals for the difference of two proportions (Statistics in
Medicine 17, 1998, table II, method 10), and scipy (a dependency of scikit-learn) for the rest: Wilson's
interval, Pearson's chi-square test (the pooled z-test squared), Katz's relative-risk interval, Student's
t, and Welch's test. The coverage checks use fixed seeds; their bounds are binomial (see each test).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats
from scipy.stats.contingency import relative_risk

from feature_store.features import feature_names
from models import uplift as up
from models.uplift import Collector, Interval, Moments, Purchase
from policies.catalogue import Catalogue, load

MINUTE = 60_000
T0 = 1_795_000_000_000

CATALOGUE = """
version: "u-1"
holdout: {share: 0.5, seed: "unit"}
exploration: {policy: epsilon_greedy, epsilon: 0.0}
placements:
  web.page: {channel: web, reward: conversion, attribution: 30m}
  web.chat: {channel: web, reward: click, attribution: 10m}
  email.win: {channel: email, reward: value, attribution: 1d}
actions:
  - {id: a, channel: web, placements: [web.page, web.chat]}
  - {id: b, channel: web, placements: [web.page], holdout: 0.2}
  - {id: notice, channel: web, placements: [web.chat], exempt: true}
  - {id: mail, channel: email, placements: [email.win], holdout: 0.1}
"""


# --- statistics against known values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "low", "high"),
    [
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (5, 56, 0, 29, -0.0381, 0.1926),
        (0, 10, 0, 20, -0.1611, 0.2775),
        (0, 10, 0, 10, -0.2775, 0.2775),
        (10, 10, 0, 20, 0.6791, 1.0000),
    ],
)
def test_newcombe_matches_the_published_intervals(
    x1: int, n1: int, x2: int, n2: int, low: float, high: float
) -> None:
    got = up.newcombe(x1, n1, x2, n2)
    assert got.value == pytest.approx(x1 / n1 - x2 / n2)
    assert (round(got.low, 4), round(got.high, 4)) == (low, high)


@pytest.mark.parametrize(("x", "n"), [(0, 10), (1, 10), (81, 263), (250, 1000), (7, 7)])
def test_wilson_matches_scipy(x: int, n: int) -> None:
    expected = stats.binomtest(x, n).proportion_ci(method="wilson")
    assert up.wilson(x, n) == pytest.approx((expected.low, expected.high), abs=1e-12)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(56, 70, 48, 80), (30, 250, 45, 260), (3, 120, 1, 90)])
def test_the_z_test_is_pearsons_chi_square(x1: int, n1: int, x2: int, n2: int) -> None:
    table = [[x1, n1 - x1], [x2, n2 - x2]]
    expected = stats.chi2_contingency(table, correction=False).pvalue
    assert up.two_proportion_z(x1, n1, x2, n2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(56, 70, 48, 80), (30, 250, 45, 260), (12, 400, 5, 380)])
def test_the_relative_lift_is_katzs_interval(x1: int, n1: int, x2: int, n2: int) -> None:
    rr = relative_risk(x1, n1, x2, n2)
    ci = rr.confidence_interval(confidence_level=0.95)
    got = up.relative_rate(x1, n1, x2, n2)
    assert (got.value, got.low, got.high) == pytest.approx(
        (rr.relative_risk - 1, ci.low - 1, ci.high - 1), rel=1e-9
    )


@pytest.mark.parametrize("df", [1, 1.5, 2, 3.7, 10, 29.2, 200, 5000])
def test_student_t_matches_scipy(df: float) -> None:
    assert up.t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
    for t in (0.0, 0.3, 1.0, 1.96, 2.5, 6.0, -2.0):
        assert up.t_two_sided(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_matches_scipy(seed: int) -> None:
    rng = random.Random(seed)
    # Revenue-like: most customers spend nothing, a few a skewed amount; groups of different sizes.
    a = [rng.expovariate(1 / 40) if rng.random() < 0.3 else 0.0 for _ in range(57)]
    b = [rng.expovariate(1 / 30) if rng.random() < 0.2 else 0.0 for _ in range(31)]
    got, p = up.welch(Moments.of(a), Moments.of(b))
    expected = stats.ttest_ind(a, b, equal_var=False)
    ci = expected.confidence_interval(confidence_level=0.95)
    assert p == pytest.approx(expected.pvalue, rel=1e-8)
    assert (got.value, got.low, got.high) == pytest.approx(
        (np.mean(a) - np.mean(b), ci.low, ci.high), rel=1e-8
    )


def test_the_relative_revenue_lift_by_the_delta_method() -> None:
    """By hand: means 12 and 8 (ratio 1.5), variances 400 and 100, 100 customers each:
    se of the log ratio = sqrt(400 / (100 * 144) + 100 / (100 * 64)) = sqrt(0.0434028)."""
    got = up.relative_means(Moments(100, 12.0, 400.0), Moments(100, 8.0, 100.0))
    se = math.sqrt(400 / 14400 + 100 / 6400)
    assert got.value == pytest.approx(0.5)
    assert got.low == pytest.approx(1.5 * math.exp(-up.Z95 * se) - 1)
    assert got.high == pytest.approx(1.5 * math.exp(up.Z95 * se) - 1)


def test_what_cannot_be_computed_is_undefined_not_invented() -> None:
    assert math.isnan(up.two_proportion_z(0, 50, 0, 50))  # nobody converted: no test
    assert math.isnan(up.relative_rate(5, 50, 0, 50).value)  # no control conversions: no ratio
    only_treatment = up.relative_rate(0, 50, 5, 50)
    assert only_treatment.value == -1
    assert math.isnan(only_treatment.low)
    assert math.isnan(up.newcombe(1, 0, 1, 10).value)
    none, p = up.welch(Moments.of([0.0] * 20), Moments.of([0.0] * 30))
    assert (none.value, none.low, none.high) == (0, 0, 0)
    assert math.isnan(p)
    one, p = up.welch(Moments.of([1.0]), Moments.of([0.0, 2.0]))
    assert math.isnan(one.value)
    assert math.isnan(p)
    assert math.isnan(up.relative_means(Moments.of([0.0, 0.0]), Moments.of([0.0, 0.0])).low)
    assert not Interval.undefined().excludes_zero()


def test_the_intervals_cover_the_truth_about_95_percent_of_the_time() -> None:
    """2,000 seeded experiments of 300 customers a group (conversion 0.12 against 0.08, revenue 40 per
    conversion, exponential): each interval should hold the true difference 95% of the time. With
    2,000 experiments the observed share has a standard deviation of 0.49 points; 4 of them is 2 points."""
    rng = np.random.default_rng(7)
    runs, n, pt, pc = 2000, 300, 0.12, 0.08
    conversion_hits = revenue_hits = 0
    for _ in range(runs):
        t = rng.random(n) < pt
        c = rng.random(n) < pc
        t_revenue = np.where(t, rng.exponential(40, n), 0.0)
        c_revenue = np.where(c, rng.exponential(40, n), 0.0)
        d = up.newcombe(int(t.sum()), n, int(c.sum()), n)
        conversion_hits += d.low <= pt - pc <= d.high
        r, _ = up.welch(Moments.of(t_revenue.tolist()), Moments.of(c_revenue.tolist()))
        revenue_hits += r.low <= 40 * (pt - pc) <= r.high
    assert abs(conversion_hits / runs - 0.95) < 0.02
    assert abs(revenue_hits / runs - 0.95) < 0.02


# --- the small-sample rule and the conclusion ----------------------------------------------------------


def customers(n: int, converted: int, revenue: float = 10.0) -> list[tuple[bool, float]]:
    return [(i < converted, revenue if i < converted else 0.0) for i in range(n)]


def test_the_small_sample_rule_at_its_edges() -> None:
    enough = up.compare("x", customers(100, 10), customers(100, 90))
    assert enough.enough_data
    assert enough.warnings == ()
    for treatment, control, reason in [
        (customers(99, 30), customers(200, 30), "treatment has 99 customers (fewer than 100)"),
        (customers(200, 30), customers(200, 9), "control has 9 who converted (fewer than 10)"),
        (customers(200, 191), customers(200, 30), "treatment has 9 who did not convert (fewer than 10)"),
    ]:
        small = up.compare("x", treatment, control)
        assert not small.enough_data
        assert small.conclusion == "too small to conclude"
        [warning] = small.warnings
        assert warning.startswith("too small to conclude: ")
        assert reason in warning


def test_a_comparison_says_what_its_intervals_say() -> None:
    better = up.compare("x", customers(1000, 300, 40.0), customers(1000, 150, 40.0))
    assert better.treatment == up.Group(1000, 300, 0.3, 12000.0, 12.0)
    assert better.conversion.absolute.value == pytest.approx(0.15)
    assert better.conversion.relative.value == pytest.approx(1.0)
    assert better.revenue_per_customer.absolute.value == pytest.approx(6.0)
    assert better.revenue_per_customer.relative.value == pytest.approx(1.0)
    assert better.conclusion == "conversion higher in treatment; revenue per customer higher in treatment"
    same = up.compare("x", customers(1000, 150), customers(1000, 150))
    assert same.conclusion == (
        "no difference in conversion detected; no difference in revenue per customer detected"
    )
    assert same.conversion.p_value == pytest.approx(1.0)
    worse = up.compare("x", customers(1000, 100), customers(1000, 150))
    assert worse.conclusion.startswith("conversion lower in treatment")


# --- from reward entries to customers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    folder = tmp_path_factory.mktemp("catalogue")
    (folder / "catalogue.yaml").write_text(CATALOGUE)
    return load(folder, feature_names())


def entry(
    customer: str,
    group: str,
    action: str,
    placement: str = "web.page",
    at: int = T0,
    positive: bool = False,
    counterfactual: bool | None = None,
    held_out: bool = False,
) -> dict[str, str]:
    """A rewards stream entry as the learner writes it (models/learner.py); ``held_out``: a treatment
    customer's holdout counterfactual."""
    counterfactual = group == "control" if counterfactual is None else counterfactual
    return {
        "decision_id": f"d-{customer}-{at}-{placement}",
        "action_id": action,
        "counterfactual": "holdout" if held_out else "1" if counterfactual else "0",
        "customer": customer,
        "placement": placement,
        "group": group,
        "time_ms": str(at),
        "value": "1.0" if positive else "0.0",
        "positive": "1" if positive else "0",
        "source": "purchase" if positive else "none",
    }


def collect(catalogue: Catalogue, entries: list[dict[str, str]], now: int = T0 + 2 * 86_400_000) -> Collector:
    collected = Collector(catalogue, T0 - 60 * MINUTE, T0 + 60 * MINUTE, now)
    for e in entries:
        collected.add(e)
    return collected


def test_the_customer_is_the_unit_and_each_purchase_counts_once(catalogue: Catalogue) -> None:
    entries = [
        # c:1 (treatment): a twice at web.page 5 minutes apart, b once, a at web.chat; one purchase of 30
        # in all those windows, one of 20 only in the last web.page window, one of 99 outside them all.
        entry("c:1", "treatment", "a", at=T0, positive=True),
        entry("c:1", "treatment", "a", at=T0 + 5 * MINUTE, positive=True),
        entry("c:1", "treatment", "b", at=T0, positive=True),
        entry("c:1", "treatment", "a", "web.chat", at=T0),
        # c:2 (control): would have had a at web.page, and at web.chat; bought only after the chat window.
        entry("c:2", "control", "a", at=T0, positive=True),
        entry("c:2", "control", "a", "web.chat", at=T0),
        # c:3 (treatment): b, nothing bought.
        entry("c:3", "treatment", "b", at=T0),
    ]
    purchases = {
        "c:1": [
            Purchase(T0 + 2 * MINUTE, 30.0, "p1"),
            Purchase(T0 + 33 * MINUTE, 20.0, "p2"),
            Purchase(T0 + 3 * 60 * MINUTE, 99.0, "p3"),
        ],
        "c:2": [Purchase(T0 + 15 * MINUTE, 50.0, "p4")],
    }
    collected = collect(catalogue, entries)
    spans = dict((ref, (after, until)) for ref, after, until in collected.purchase_windows())
    assert spans == {
        "c:1": (T0, T0 + 35 * MINUTE),
        "c:2": (T0, T0 + 30 * MINUTE),
        "c:3": (T0, T0 + 30 * MINUTE),
    }
    report = up.analyse(
        collected, {ref: [p for p in ps if p.time_ms <= spans[ref][1]] for ref, ps in purchases.items()}
    )
    assert (report.entries, report.used, report.left_out) == (7, 7, {})
    overall = report.comparison("overall")
    assert overall.slice == "overall"
    assert overall.treatment == up.Group(2, 1, 0.5, 50.0, 25.0)  # c:1 once: 30 + 20; c:3: 0
    assert overall.control == up.Group(1, 1, 1.0, 50.0, 50.0)
    a = report.comparison("a")
    assert a.treatment == up.Group(1, 1, 1.0, 50.0, 50.0)
    assert a.control == up.Group(1, 1, 1.0, 50.0, 50.0)
    b = report.comparison("b")
    assert b.treatment == up.Group(2, 1, 0.5, 30.0, 15.0)  # p2 is after b's window
    assert b.control.customers == 0
    # At the click placement a purchase in the window is the conversion: c:1's p1 is in its 10 minutes,
    # c:2's p4 is not.
    chat = report.comparison("web.chat")
    assert chat.treatment == up.Group(1, 1, 1.0, 30.0, 30.0)
    assert chat.control == up.Group(1, 0, 0.0, 0.0, 0.0)
    assert [c.slice for c in report.actions] == ["a", "b"]
    assert [c.slice for c in report.placements] == ["web.chat", "web.page"]


def test_what_is_left_out_and_why(catalogue: Catalogue) -> None:
    now = T0 + 20 * MINUTE  # web.chat's 10-minute windows of T0 have closed, web.page's 30 have not
    entries = [
        entry("c:1", "treatment", "a", "web.chat"),
        entry("c:1", "treatment", "a", positive=True),  # window open: its early positive is left out
        entry("c:2", "control", "notice", "web.chat", counterfactual=False),  # what control was served
        entry("c:3", "treatment", "notice", "web.chat"),  # exempt: served to both groups
        entry("c:4", "treatment", "a", "web.gone"),  # a placement no longer in the catalogue
        entry("c:5", "treatment", "a", "web.chat"),
        entry("c:5", "control", "a", "web.chat"),  # both groups (an identity merge): out
        entry("c:6", "treatment", "a", "web.chat", at=T0 - 2 * 60 * MINUTE),  # before the range: ignored
        {"customer": "c:7", "time_ms": "soon"},  # no time: malformed, and not known to be in the range
        entry("c:8", "control", "a", "web.chat", held_out=True),  # control logs no holdout counterfactual
        entry("c:9", "treatment", "a", "web.chat", counterfactual=True),  # nor treatment a counterfactual
        # Served a, then held out of it (a holdout introduced meanwhile): on the served side only.
        entry("c:10", "treatment", "a", "web.chat"),
        entry("c:10", "treatment", "a", "web.chat", at=T0 + MINUTE, held_out=True),
    ]
    report = up.analyse(collect(catalogue, entries, now), {})
    assert report.entries == 11
    assert report.left_out == {
        "window_open": 1,
        "exempt": 2,
        "unknown_placement": 1,
        "both_groups": 2,
        "both_arms": 1,
        "malformed": 3,
    }
    assert report.used == 2
    assert report.comparison("overall").treatment.customers == 2
    assert report.holdouts == []  # a has no holdout, and its one held-out entry is left out
    assert any("still open" in w for w in report.warnings)
    assert not any("holdout" in w for w in report.warnings)


def test_an_empty_range_is_said_plainly(catalogue: Catalogue) -> None:
    report = up.analyse(collect(catalogue, []), {}, overdue=3)
    assert report.overall is None
    assert report.actions == report.placements == []
    assert any("no joined rewards" in w for w in report.warnings)
    assert any("3 attribution windows" in w for w in report.warnings)
    data = report.to_dict()
    assert data["from"] == up.iso(T0 - 60 * MINUTE)
    assert data["overall"] is None
    assert "warning: no joined rewards" in up.render(report)


# --- an action's own holdout ---------------------------------------------------------------------------


def test_held_out_customers_are_compared_apart_from_the_global_groups(catalogue: Catalogue) -> None:
    entries = [
        # c:1 (treatment) served mail, bought 30 in its window; c:2 and c:3 (treatment) held out of it and
        # would have been served it: c:2, also served b, bought 20; c:3 nothing. c:4 (control) would have
        # been served mail, and bought nothing.
        entry("c:1", "treatment", "mail", "email.win", positive=True),
        entry("c:2", "treatment", "mail", "email.win", positive=True, held_out=True),
        entry("c:2", "treatment", "b", positive=True),
        entry("c:3", "treatment", "mail", "email.win", held_out=True),
        entry("c:4", "control", "mail", "email.win"),
    ]
    purchases = {
        "c:1": [Purchase(T0 + MINUTE, 30.0, "p1")],
        "c:2": [Purchase(T0 + 2 * MINUTE, 20.0, "p2")],
    }
    report = up.analyse(collect(catalogue, entries), purchases)
    assert (report.entries, report.used, report.left_out) == (5, 5, {})
    # The global comparison: served (treatment) against would have been (control). Held out of mail, c:3
    # was served nothing: in no global group.
    assert report.comparison("overall").treatment == up.Group(2, 2, 1.0, 50.0, 25.0)
    assert report.comparison("overall").control == up.Group(1, 0, 0.0, 0.0, 0.0)
    assert report.comparison("mail").treatment == up.Group(1, 1, 1.0, 30.0, 30.0)
    assert report.comparison("mail").control == up.Group(1, 0, 0.0, 0.0, 0.0)
    # Its own holdout: the same treatment side, against the two it was withheld from.
    mail = report.holdout("mail")
    assert mail.treatment == report.comparison("mail").treatment
    assert mail.control == up.Group(2, 1, 0.5, 20.0, 10.0)
    # b has a holdout too (in the catalogue), and nobody held out of it in the range.
    assert [c.slice for c in report.holdouts] == ["b", "mail"]
    assert report.holdout("b").control.customers == 0
    assert "held out has 0 customers (fewer than 100)" in report.holdout("b").warnings[0]
    assert report.to_dict()["holdouts"][1]["control"]["customers"] == 2
    text = up.render(report)
    assert "own holdout: mail" in text
    assert "\nheld out             2          1   50.00%" in text


def test_a_holdout_finds_the_lift_its_action_makes_and_no_lift_where_there_is_none(
    catalogue: Catalogue,
) -> None:
    """A simulated population: a fifth in control; in treatment, three in ten held out of mail and
    (independently) of b. Everyone has a decision with b at web.page, then one with mail at email.win; a
    customer buys (40) within both windows with probability 0.15, or 0.27 when served mail: mail lifts
    conversion by 0.12 and revenue per customer by 4.8, b by nothing.

    At this seed the 95% intervals hold the planted lifts (at another, each would miss one time in
    twenty), and the estimates are within 4 standard errors of them."""
    rng = random.Random(2024)
    entries, purchases = [], {}
    held: dict[str, set[str]] = {"mail": set(), "b": set()}
    for n in range(8000):
        customer = f"c:{n}"
        group = "control" if rng.random() < 0.2 else "treatment"
        out = {a for a in ("mail", "b") if group == "treatment" and rng.random() < 0.3}
        for a in out:
            held[a].add(customer)
        bought = rng.random() < (0.27 if group == "treatment" and "mail" not in out else 0.15)
        if bought:
            purchases[customer] = [Purchase(T0 + 5 * MINUTE, 40.0, f"o-{n}")]
        for action, placement, at in (("b", "web.page", T0), ("mail", "email.win", T0 + MINUTE)):
            entries.append(entry(customer, group, action, placement, at, bought, held_out=action in out))
    report = up.analyse(collect(catalogue, entries), purchases)
    assert report.left_out == {}
    mail, b = report.holdout("mail"), report.holdout("b")
    assert (mail.control.customers, b.control.customers) == (len(held["mail"]), len(held["b"]))
    for comparison, lift in ((mail, 0.12), (b, 0.0)):
        assert comparison.enough_data
        nt, nc = comparison.treatment.customers, comparison.control.customers
        pt, pc = comparison.treatment.conversion_rate, comparison.control.conversion_rate
        se = math.sqrt(pt * (1 - pt) / nt + pc * (1 - pc) / nc)
        conversion, revenue = comparison.conversion.absolute, comparison.revenue_per_customer.absolute
        assert conversion.low <= lift <= conversion.high, comparison.slice
        assert abs(conversion.value - lift) < 4 * se
        assert revenue.low <= 40 * lift <= revenue.high, comparison.slice
    assert mail.conversion.p_value < 0.001
    assert mail.conclusion == "conversion higher in treatment; revenue per customer higher in treatment"
    assert b.conclusion == (
        "no difference in conversion detected; no difference in revenue per customer detected"
    )

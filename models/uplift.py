"""The incrementality report: treatment against control, per action, per placement and overall.

"Is this working, compared with doing nothing?" The global control group (the catalogue's
``holdout.share``) is served only exempt actions, and each of its decisions is logged with the actions
treatment would have served (``counterfactual``). The learner joins the purchases in the attribution
window to those counterfactual actions exactly as it joins them to the served ones, and appends every
joined (decision, action) to the rewards stream. So for each action the report compares the treatment
customers who were served it with the control customers who would have been, and overall the treatment
customers served anything measurable with the control customers who would have been.

An action's own holdout is compared on its own, beside that (``holdouts``): the treatment customers
served the action against the treatment customers its holdout withheld it from and who would have been
served it (the decision's ``holdout_counterfactual``, joined by the learner as the control counterfactual
is). Control customers are in neither side: what the action adds on top of the rest of the treatment is
measured against customers who get the rest of the treatment.

The unit is the customer, not the decision. In a slice (an action, a placement, or everything), a
customer counts once, and converted if any of their decisions in the slice converted:

- at ``conversion`` and ``value`` placements: the joined reward was positive (a ``conversion``
  outcome, or a purchase in the window: control customers convert through their purchases alike);
- at ``click`` placements: a purchase in the window. A click is not a conversion, and a control
  customer cannot click what they were not shown, so the click reward itself is not compared.

Revenue per customer is what their ``purchase`` events in the union of the slice's attribution windows
brought in, each purchase once (the stream's ``value`` repeats a purchase for every decision whose
window it falls in, and is 1, not revenue, at ``conversion`` placements). Customers without a
purchase count with 0.

Statistics, all 95% and two-sided (docs/uplift.md says why these):

- conversion rate difference: Newcombe's hybrid score interval (from two Wilson intervals), p-value from
  the pooled two-proportion z-test; relative lift (ratio of rates less 1): Katz's log interval;
- revenue per customer difference: Welch's t (interval and p-value, Welch-Satterthwaite degrees of
  freedom); relative lift: the delta method on the log of the ratio of means.

A comparison is **too small to conclude** when either group has fewer than ``MIN_CUSTOMERS`` customers,
or fewer than ``MIN_CONVERSIONS`` customers who converted, or fewer than ``MIN_CONVERSIONS`` who did not:
the normal approximations behind the p-values and intervals are then unreliable. Its figures are still
given, with the warning.

Everything here is pure but :func:`report`, which reads through an ``EvaluationStore``
(feature_store/evaluation.py); the HTTP route (app/routes/reports.py) and ``nba report`` (app/cli.py)
call it. docs/uplift.md is the guide.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from models import rewards
from models.evaluate import finite
from models.evaluate import iso_s as iso
from policies.catalogue import Catalogue

if TYPE_CHECKING:
    from feature_store.evaluation import EvaluationStore

Z95: Final = 1.959963984540054  # the standard normal's 97.5% quantile
ALPHA: Final = 0.05
MIN_CUSTOMERS: Final = 100  # per group, below which a comparison is too small to conclude
MIN_CONVERSIONS: Final = 10  # per group, of converted customers and of the others alike
DEFAULT_RANGE_MS: Final = 7 * 86_400_000
# A window counts as joined this long after it closed: the learner closes it 2 s after its end
# (models/learner.py, CLOSE_GRACE_MS) and publishes within about a second.
SETTLE_MS: Final = 10_000
# The learner is behind when a window closed this long ago is still pending.
OVERDUE_MS: Final = 60_000
PURCHASES_KEPT_MS: Final = 31 * 86_400_000  # a profile keeps its purchases 31 days (feature_store/keys.py)
TREATMENT: Final = "treatment"
CONTROL: Final = "control"
HELD_OUT: Final = "held out"  # the second side of an action's own holdout comparison
# The rewards stream's ``counterfactual`` field: served, what a control customer would have been served,
# what a treatment customer held out of an action would have been served.
SERVED, WOULD_HAVE, HELD_OUT_WOULD_HAVE = (
    rewards.REWARD_KIND[k] for k in (rewards.SERVED, rewards.COUNTERFACTUAL, rewards.HELD_OUT)
)


# --- statistics ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate with its 95% confidence interval; NaN where undefined."""

    value: float
    low: float
    high: float

    @classmethod
    def undefined(cls) -> Interval:
        return cls(math.nan, math.nan, math.nan)

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0  # False when undefined (NaN compares False)


def normal_two_sided(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2))


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion (no continuity correction)."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(x1: int, n1: int, x2: int, n2: int) -> Interval:
    """``x1/n1 - x2/n2`` with Newcombe's hybrid score interval (his method 10, Statistics in Medicine 17,
    1998): each rate's Wilson interval, combined. Good coverage at small counts and near 0 or 1, where
    the textbook Wald interval is too narrow."""
    if n1 <= 0 or n2 <= 0:
        return Interval.undefined()
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1)
    l2, u2 = wilson(x2, n2)
    d = p1 - p2
    return Interval(
        d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    )


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> float:
    """The two-sided p-value of the pooled two-proportion z-test of ``x1/n1 = x2/n2`` (the same as
    Pearson's chi-square test of the 2x2 table without continuity correction). NaN when every customer
    converted or none did."""
    if n1 <= 0 or n2 <= 0:
        return math.nan
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return math.nan
    return normal_two_sided((x1 / n1 - x2 / n2) / se)


def relative_rate(x1: int, n1: int, x2: int, n2: int) -> Interval:
    """``(x1/n1) / (x2/n2) - 1`` with Katz's log interval for the ratio of two rates; the interval is
    undefined when either group has no conversions (the value too when the second has none)."""
    if n1 <= 0 or n2 <= 0 or x2 == 0:
        return Interval.undefined()
    ratio = (x1 / n1) / (x2 / n2)
    if x1 == 0:
        return Interval(ratio - 1, math.nan, math.nan)
    se = math.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2)
    return Interval(ratio - 1, ratio * math.exp(-Z95 * se) - 1, ratio * math.exp(Z95 * se) - 1)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, by the modified Lentz method
    (Press et al., Numerical Recipes, 3rd ed., 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)``."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1 - x) / b


def t_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` (not necessarily whole) degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


def t_density(t: float, df: float) -> float:
    """Student's t density."""
    log_front = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_front - (df + 1) / 2 * math.log1p(t * t / df))


def t_quantile(df: float, alpha: float = ALPHA) -> float:
    """The ``t`` with ``P(|T| >= t) = alpha`` (1.96 for large ``df`` at 5%), by Newton's method from 0:
    ``P(|T| >= t)`` is convex and decreasing for ``t > 0``, so every step stays below the root and the
    steps shrink to it."""
    t = 0.0
    for _ in range(200):
        step = (t_two_sided(t, df) - alpha) / (2 * t_density(t, df))
        t += step
        if step < 1e-13 * t:
            break
    return t


class Moments(NamedTuple):
    """The size, mean and sample variance (``n - 1``) of a group's per-customer values."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Moments:
        n = len(values)
        if n == 0:
            return cls(0, math.nan, math.nan)
        mean = math.fsum(values) / n
        variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else math.nan
        return cls(n, mean, variance)


def welch(first: Moments, second: Moments) -> tuple[Interval, float]:
    """``mean1 - mean2`` with Welch's t interval and two-sided p-value (unequal variances,
    Welch-Satterthwaite degrees of freedom). When neither group varies, the difference is exact: its
    interval is the point and the p-value undefined."""
    if first.n < 2 or second.n < 2:
        return Interval.undefined(), math.nan
    d = first.mean - second.mean
    a, b = first.variance / first.n, second.variance / second.n
    se = math.sqrt(a + b)
    if se == 0:
        return Interval(d, d, d), math.nan
    df = (a + b) ** 2 / (a * a / (first.n - 1) + b * b / (second.n - 1))
    half = t_quantile(df) * se
    return Interval(d, d - half, d + half), t_two_sided(d / se, df)


def relative_means(first: Moments, second: Moments) -> Interval:
    """``mean1 / mean2 - 1``, its interval by the delta method on the log of the ratio:
    ``se = sqrt(var1 / (n1 mean1^2) + var2 / (n2 mean2^2))``. Undefined unless both means are positive."""
    if first.n < 2 or second.n < 2 or not (first.mean > 0 and second.mean > 0):
        value = first.mean / second.mean - 1 if second.n and second.mean > 0 else math.nan
        return Interval(value, math.nan, math.nan)
    ratio = first.mean / second.mean
    se = math.sqrt(first.variance / (first.n * first.mean**2) + second.variance / (second.n * second.mean**2))
    return Interval(ratio - 1, ratio * math.exp(-Z95 * se) - 1, ratio * math.exp(Z95 * se) - 1)


# --- one comparison ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Group:
    """One side of a comparison: its customers, how many converted, and their revenue."""

    customers: int
    conversions: int
    conversion_rate: float
    revenue: float
    revenue_per_customer: float


@dataclass(frozen=True, slots=True)
class Lift:
    """Treatment less control (``absolute``) and treatment over control less 1 (``relative``)."""

    absolute: Interval
    relative: Interval
    p_value: float
    test: str


@dataclass(frozen=True, slots=True)
class Comparison:
    """Treatment against control in one slice: everything, one action, or one placement."""

    slice: str  # "overall", an action id or a placement
    treatment: Group
    control: Group
    conversion: Lift
    revenue_per_customer: Lift
    enough_data: bool
    conclusion: str
    warnings: tuple[str, ...]


CONVERSION_TEST: Final = "two-proportion z-test; Newcombe hybrid score interval; Katz log interval (relative)"
REVENUE_TEST: Final = "Welch's t-test and interval; delta method on the log ratio (relative)"


def too_small(converted: Mapping[str, Sequence[bool]]) -> list[str]:
    """Why a comparison is too small to conclude (empty when it is not): per group, fewer than
    ``MIN_CUSTOMERS`` customers, or fewer than ``MIN_CONVERSIONS`` who converted or who did not."""
    reasons = []
    for name, flags in converted.items():
        n, x = len(flags), sum(flags)
        if n < MIN_CUSTOMERS:
            reasons.append(f"{name} has {n} customers (fewer than {MIN_CUSTOMERS})")
        if x < MIN_CONVERSIONS:
            reasons.append(f"{name} has {x} who converted (fewer than {MIN_CONVERSIONS})")
        if n - x < MIN_CONVERSIONS:
            reasons.append(f"{name} has {n - x} who did not convert (fewer than {MIN_CONVERSIONS})")
    return reasons


def compare(
    name: str,
    treatment: Sequence[tuple[bool, float]],
    control: Sequence[tuple[bool, float]],
    *,
    against: str = CONTROL,
) -> Comparison:
    """Compare two groups of customers, each given as ``(converted, revenue)`` per customer; ``against``
    names the second in warnings (the global ``control``, or an action's ``held out``)."""
    t_flags, c_flags = [c for c, _ in treatment], [c for c, _ in control]
    t_revenue, c_revenue = [r for _, r in treatment], [r for _, r in control]
    xt, nt, xc, nc = sum(t_flags), len(t_flags), sum(c_flags), len(c_flags)
    conversion = Lift(
        newcombe(xt, nt, xc, nc),
        relative_rate(xt, nt, xc, nc),
        two_proportion_z(xt, nt, xc, nc),
        CONVERSION_TEST,
    )
    mt, mc = Moments.of(t_revenue), Moments.of(c_revenue)
    difference, p = welch(mt, mc)
    revenue = Lift(difference, relative_means(mt, mc), p, REVENUE_TEST)
    reasons = too_small({TREATMENT: t_flags, against: c_flags})
    warnings = (f"too small to conclude: {'; '.join(reasons)}",) if reasons else ()
    return Comparison(
        name,
        _group(t_flags, t_revenue),
        _group(c_flags, c_revenue),
        conversion,
        revenue,
        not reasons,
        _conclusion(conversion, revenue, bool(reasons)),
        warnings,
    )


def _group(flags: Sequence[bool], revenue: Sequence[float]) -> Group:
    n, total = len(flags), round(math.fsum(revenue), 2)
    return Group(
        n,
        sum(flags),
        sum(flags) / n if n else math.nan,
        total,
        math.fsum(revenue) / n if n else math.nan,
    )


def _conclusion(conversion: Lift, revenue: Lift, small: bool) -> str:
    """One line for people: what the 95% intervals say (not the p-values: the z-test and Newcombe's
    interval are different approximations and may disagree right at the edge)."""
    if small:
        return "too small to conclude"

    def say(what: str, lift: Lift) -> str:
        if lift.absolute.excludes_zero():
            return f"{what} {'higher' if lift.absolute.value > 0 else 'lower'} in treatment"
        return f"no difference in {what} detected"

    return f"{say('conversion', conversion)}; {say('revenue per customer', revenue)}"


# --- from the rewards stream to customers --------------------------------------------------------------


class Purchase(NamedTuple):
    time_ms: int
    revenue: float
    member: str  # the purchase as the profile keeps it: identifies it


@dataclass(slots=True)
class _Exposure:
    """One customer's decisions for one (action, placement) in the range."""

    positive: bool  # a joined positive reward, at a conversion or value placement
    by_purchase: bool  # at a click placement: converted by a purchase in a window
    windows: list[tuple[int, int]]  # (decision time, window end): purchases in (start, end] count


_Key = tuple[str, str, bool]  # (action, placement, held out of the action)


@dataclass(slots=True)
class _Customer:
    groups: set[str] = field(default_factory=set)
    exposures: dict[_Key, _Exposure] = field(default_factory=dict)  # held-out ones: holdout comparisons only


LEFT_OUT: Final = {
    "window_open": "attribution window still open",
    "exempt": "exempt action (the control group gets it too)",
    "unknown_placement": "placement not in the live catalogue",
    "malformed": "entry could not be read",
    "both_groups": "customer found in both groups (entries of such customers)",
    "both_arms": "customer held out of an action they were also served (their held-out entries)",
}


@dataclass(slots=True)
class Collector:
    """Reads reward entries one at a time into per-customer exposures, keeping only what the report
    needs (the stream can be long). Entries of decisions made outside ``[since_ms, until_ms)`` are
    ignored; the others are used or counted in ``left_out``."""

    catalogue: Catalogue
    since_ms: int
    until_ms: int
    now_ms: int
    customers: dict[str, _Customer] = field(default_factory=dict)
    entries: int = 0  # in the range
    left_out: Counter[str] = field(default_factory=Counter)

    def add(self, entry: Mapping[str, str]) -> None:
        try:
            time_ms = int(entry["time_ms"])
        except (KeyError, ValueError):
            self.left_out["malformed"] += 1
            return
        if not self.since_ms <= time_ms < self.until_ms:
            return
        self.entries += 1
        group, kind = entry.get("group"), entry.get("counterfactual", SERVED)
        placement = self.catalogue.placements.get(entry.get("placement", ""))
        action = self.catalogue.actions.get(entry.get("action_id", ""))
        if "customer" not in entry or "action_id" not in entry or group not in (TREATMENT, CONTROL):
            self.left_out["malformed"] += 1
        elif (action is not None and action.spec.exempt) or (group == CONTROL and kind == SERVED):
            # What control was served is exempt by definition: it is not what the comparison is about.
            self.left_out["exempt"] += 1
        elif kind not in ((WOULD_HAVE,) if group == CONTROL else (SERVED, HELD_OUT_WOULD_HAVE)):
            # Only control decisions log a counterfactual, only treatment ones a holdout counterfactual.
            self.left_out["malformed"] += 1
        elif placement is None:
            self.left_out["unknown_placement"] += 1
        elif time_ms + placement.attribution + SETTLE_MS > self.now_ms:
            # Positive rewards are joined as they come, zeros only at the close: an open window would
            # count treatment's early clicks and conversions and not yet anyone's misses.
            self.left_out["window_open"] += 1
        else:
            customer = self.customers.setdefault(entry["customer"], _Customer())
            customer.groups.add(group)
            key = (entry["action_id"], entry.get("placement", ""), kind == HELD_OUT_WOULD_HAVE)
            exposure = customer.exposures.get(key)
            if exposure is None:
                exposure = customer.exposures[key] = _Exposure(False, placement.reward == "click", [])
            exposure.positive |= placement.reward != "click" and entry.get("positive") == "1"
            exposure.windows.append((time_ms, time_ms + placement.attribution))

    def purchase_windows(self) -> list[tuple[str, int, int]]:
        """Per customer, ``(customer ref, after_ms, until_ms)``: the span whose purchases may count."""
        spans = []
        for ref, customer in self.customers.items():
            if len(customer.groups) == 1:
                windows = [w for e in customer.exposures.values() for w in e.windows]
                spans.append((ref, min(s for s, _ in windows), max(e for _, e in windows)))
        return spans


def _inside(purchase: Purchase, windows: Iterable[tuple[int, int]]) -> bool:
    return any(start < purchase.time_ms <= end for start, end in windows)


@dataclass(slots=True)
class Report:
    since_ms: int
    until_ms: int
    now_ms: int
    catalogue_version: str
    control_share: float
    entries: int  # joined rewards of decisions in the range
    used: int
    left_out: dict[str, int]
    overall: Comparison | None
    actions: list[Comparison]
    placements: list[Comparison]
    holdouts: list[Comparison]  # per action with a holdout of its own: served it against held out of it
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as RFC 3339, NaN as null."""
        data: dict[str, Any] = finite(asdict(self))
        for name in ("since_ms", "until_ms", "now_ms"):
            del data[name]
        data = {
            "from": iso(self.since_ms),
            "to": iso(self.until_ms),
            "generated_at": iso(self.now_ms),
            **data,
        }
        return data

    def comparison(self, name: str) -> Comparison:
        """The overall comparison (``overall``), or an action's or a placement's."""
        if name == "overall" and self.overall is not None:
            return self.overall
        return next(c for c in (*self.actions, *self.placements) if c.slice == name)

    def holdout(self, action_id: str) -> Comparison:
        """An action's own holdout comparison."""
        return next(c for c in self.holdouts if c.slice == action_id)


def analyse(collected: Collector, purchases: Mapping[str, Sequence[Purchase]], *, overdue: int = 0) -> Report:
    """The report from collected exposures and each customer's purchases (``purchases[ref]``, those in
    ``collected.purchase_windows()``'s span); ``overdue``: windows the learner has not joined although
    they closed a while ago."""
    catalogue = collected.catalogue
    left_out = Counter(collected.left_out)
    slices: dict[tuple[str, str], dict[str, list[tuple[bool, float]]]] = {}
    held_out: dict[str, list[tuple[bool, float]]] = {}  # per action: its holdout's side
    used = 0
    for ref, customer in collected.customers.items():
        if len(customer.groups) > 1:
            left_out["both_groups"] += sum(len(e.windows) for e in customer.exposures.values())
            continue
        [group] = customer.groups
        bought = purchases.get(ref, ())
        # Which of the customer's purchases fall in each exposure's windows, and whether it converted.
        caught = {
            key: frozenset(p.member for p in bought if _inside(p, e.windows))
            for key, e in customer.exposures.items()
        }
        revenue = {p.member: p.revenue for p in bought}
        converted = {
            key: e.positive or (e.by_purchase and bool(caught[key])) for key, e in customer.exposures.items()
        }
        keys = [k for k in customer.exposures if not k[2]]
        served = {a for a, _, _ in keys}
        for action_id in sorted({a for a, _, held in customer.exposures if held}):
            inside = [k for k in customer.exposures if k[2] and k[0] == action_id]
            if action_id in served:  # held out and served: the assignment changed (docs/uplift.md)
                left_out["both_arms"] += sum(len(customer.exposures[k].windows) for k in inside)
                continue
            used += sum(len(customer.exposures[k].windows) for k in inside)
            held_out.setdefault(action_id, []).append(_outcome(inside, caught, converted, revenue))
        if not keys:
            continue
        used += sum(len(customer.exposures[k].windows) for k in keys)
        slices_in = {("action", a) for a, _, _ in keys} | {("placement", p) for _, p, _ in keys}
        memberships = [("overall", "overall"), *sorted(slices_in)]
        for kind, name in memberships:
            inside = [k for k in keys if kind == "overall" or (k[0] if kind == "action" else k[1]) == name]
            got = _outcome(inside, caught, converted, revenue)
            slices.setdefault((kind, name), {TREATMENT: [], CONTROL: []})[group].append(got)

    def comparisons(kind: str) -> list[Comparison]:
        return [
            compare(name, arms[TREATMENT], arms[CONTROL])
            for (k, name), arms in sorted(slices.items())
            if k == kind
        ]

    overall = comparisons("overall")
    # Each action with a holdout of its own (in the live catalogue, or held out in the range): its
    # treatment customers, those of its row in ``actions``, against the customers it was withheld from who
    # would have been served it.
    served_it = {name: arms[TREATMENT] for (kind, name), arms in slices.items() if kind == "action"}
    own = {a.id for a in catalogue.actions.values() if a.spec.holdout > 0 and served_it.get(a.id)}
    holdouts = [
        compare(a, served_it.get(a, []), held_out.get(a, []), against=HELD_OUT)
        for a in sorted(own | held_out.keys())
    ]
    warnings = _warnings(collected, left_out, overdue)
    return Report(
        since_ms=collected.since_ms,
        until_ms=collected.until_ms,
        now_ms=collected.now_ms,
        catalogue_version=catalogue.version,
        control_share=catalogue.holdout.share,
        entries=collected.entries,
        used=used,
        left_out={k: v for k, v in left_out.items() if v},
        overall=overall[0] if overall else None,
        actions=comparisons("action"),
        placements=comparisons("placement"),
        holdouts=holdouts,
        warnings=warnings,
    )


def _outcome(
    inside: Sequence[_Key],
    caught: Mapping[_Key, frozenset[str]],
    converted: Mapping[_Key, bool],
    revenue: Mapping[str, float],
) -> tuple[bool, float]:
    """One customer in one slice, from the exposures ``inside`` it: converted if any of them did, and the
    revenue of the purchases ``caught`` in any of their windows, each purchase once."""
    members = frozenset().union(*(caught[k] for k in inside))
    return any(converted[k] for k in inside), math.fsum(revenue[m] for m in members)


def _warnings(collected: Collector, left_out: Mapping[str, int], overdue: int) -> list[str]:
    catalogue = collected.catalogue
    warnings = []
    if catalogue.holdout.share == 0:
        warnings.append(
            "the live catalogue has no control group (holdout.share is 0): without one there is nothing "
            "to compare with (set holdout.share, e.g. 0.05)"
        )
    if not collected.customers:
        warnings.append(
            "no joined rewards for decisions in this range: nothing to compare (rewards are joined by the "
            "learner when a decision's attribution window closes; is it running?)"
        )
    if left_out.get("window_open"):
        warnings.append(
            f"{left_out['window_open']} joined rewards left out because their attribution window is "
            "still open: the end of the range is not complete yet"
        )
    if overdue:
        warnings.append(
            f"{overdue} attribution windows of this range closed over a minute ago and the learner has not "
            "joined them yet (is `nba learn` running?): their misses are missing, so conversion rates "
            "are too high, treatment's most (its clicks and conversion outcomes are joined early)"
        )
    if collected.now_ms - collected.since_ms > PURCHASES_KEPT_MS:
        warnings.append(
            "the range starts more than 31 days ago: a profile keeps its purchases 31 days, so revenue "
            "(and conversions at click placements) may be understated, in both groups alike"
        )
    return warnings


# --- reading -------------------------------------------------------------------------------------------


async def report(
    store: EvaluationStore, catalogue: Catalogue, *, since_ms: int, until_ms: int, now_ms: int
) -> Report:
    """Read the rewards of decisions made in ``[since_ms, until_ms)``, their customers' purchases and
    the learner's overdue windows, and compare (see the module doc)."""
    collected = Collector(catalogue, since_ms, until_ms, now_ms)
    async for entry in store.rewards_of_range(since_ms, until_ms):
        collected.add(entry)
    spans = collected.purchase_windows()
    found = await store.purchases(spans)
    purchases = {
        ref: [Purchase(*p) for p in bought] for (ref, _, _), bought in zip(spans, found, strict=True)
    }
    longest = max((p.attribution for p in catalogue.placements.values()), default=0)
    overdue = await store.overdue(since_ms, min(now_ms - OVERDUE_MS, until_ms + longest))
    # Off the event loop: in the service, the same loop serves decisions.
    return await asyncio.to_thread(analyse, collected, purchases, overdue=overdue)


def default_range(since_ms: int | None, until_ms: int | None, now_ms: int) -> tuple[int, int]:
    """The range when ``from`` or ``to`` is left out: to now, and from 7 days before ``to``."""
    until = now_ms if until_ms is None else until_ms
    return (until - DEFAULT_RANGE_MS if since_ms is None else since_ms), until


# --- rendering -----------------------------------------------------------------------------------------


def _signed(value: float, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    return "n/a" if not math.isfinite(value) else f"{value * scale:+.{digits}f}{unit}"


def _interval(i: Interval, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    if not math.isfinite(i.value):
        return "n/a"
    if not (math.isfinite(i.low) and math.isfinite(i.high)):
        return f"{_signed(i.value, scale, digits, unit)} [n/a]"
    spread = f"[{_signed(i.low, scale, digits, unit)}, {_signed(i.high, scale, digits, unit)}]"
    return f"{_signed(i.value, scale, digits, unit)} {spread}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _rate(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.2%}"


def _money(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.2f}"


def render(r: Report) -> str:
    """The report as a readable table."""
    lines = [
        f"nba report: decisions from {iso(r.since_ms)} to {iso(r.until_ms)}, "
        f"catalogue {r.catalogue_version}, control group {r.control_share:.0%}",
        f"{r.entries} joined rewards of decisions in the range, {r.used} used"
        + (
            "; left out: " + ", ".join(f"{LEFT_OUT.get(k, k)}: {v}" for k, v in r.left_out.items())
            if r.left_out
            else ""
        ),
    ]
    header = f"{'':<12}{'customers':>10}{'converted':>11}{'rate':>9}{'revenue':>12}{'per customer':>14}"
    # Each section's comparisons, and what their second side is called.
    sections = [("overall", [r.overall] if r.overall else [], CONTROL), ("per action", r.actions, CONTROL)]
    sections.append(("per placement", r.placements, CONTROL))
    sections.append(("own holdout", r.holdouts, HELD_OUT))
    for title, comparisons, against in sections:
        for c in comparisons:
            lines.append("")
            lines.append(f"{title}: {c.slice}" if title != "overall" else "overall")
            lines.append(header)
            for name, g in ((TREATMENT, c.treatment), (against, c.control)):
                lines.append(
                    f"{name:<12}{g.customers:>10}{g.conversions:>11}{_rate(g.conversion_rate):>9}"
                    f"{_money(g.revenue):>12}{_money(g.revenue_per_customer):>14}"
                )
            conv, rev = c.conversion, c.revenue_per_customer
            lines.append(
                f"  conversion lift    {_interval(conv.absolute, 100, 2, ' pts')}, relative "
                f"{_interval(conv.relative, 100, 1, '%')}, {_p(conv.p_value)}"
            )
            lines.append(
                f"  revenue/customer   {_interval(rev.absolute)}, relative "
                f"{_interval(rev.relative, 100, 1, '%')}, {_p(rev.p_value)}"
            )
            lines.append(f"  -> {c.conclusion}")
            lines.extend(f"  warning: {w}" for w in c.warnings)
    lines.append("")
    lines.append(
        "95% intervals. Conversion: Newcombe (difference), Katz (relative), two-proportion z-test; "
        "revenue per customer: Welch's t, delta method (relative). Unit: the customer."
    )
    lines.extend(f"warning: {w}" for w in r.warnings)
    return "\n".join(lines)

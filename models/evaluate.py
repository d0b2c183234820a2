"""Off-policy evaluation from the decision log: ``nba evaluate``.

What would the reward have been had another policy decided? Every logged decision carries the exact
probability with which its action was drawn, and the probability of every other action of the draw
(``eligible``), so the log answers that without an experiment:

- **IPS** (inverse propensity scoring): ``mean(pi(a|x) / p(a|x) * r)``, unbiased when the logged
  probabilities are exact and every action the target policy may choose had a logged probability > 0;
- **SNIPS** (self-normalised IPS): ``sum(w r) / sum(w)`` with ``w = pi(a|x) / p(a|x)``: slightly biased,
  much less variable when weights are large;
- **DR** (doubly robust): ``mean(sum_a pi(a|x) rhat(x, a) + w * (r - rhat(x, a_logged)))``, with a reward
  model ``rhat`` (scikit-learn): unbiased if either the probabilities or the reward model are right.

Candidate policies, each choosing among the actions that were eligible in the logged decision:
``logged`` (the logging policy itself: its IPS is the observed mean reward), ``uniform`` (uniform
random), ``model_greedy`` (the best propensity x context weight x value x levers, the propensity from the
current snapshot and the other factors from the live catalogue) and ``value_only`` (the best context
weight x value x levers: the catalogue alone, no model).

Which decisions: treatment decisions that served at least one action, at their first slot (its logged
probability is exact; later slots' probabilities are conditional on the earlier draws), whose
attribution window has closed and whose reward the learner has joined. A decision whose window is still
open is left out even if its positive reward is in: only positives arrive early, and keeping them
would bias every estimate upwards.

Calibration: the logged propensity of every served action with a joined reward (both groups, every
slot) against whether its reward was positive: deciles, AUC, log loss, and a PNG plot.

docs/evaluation.md is the guide. Everything above :func:`evaluate` is pure (numpy, scikit-learn);
:func:`evaluate` reads the store, :func:`main` is the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from models.snapshot import EMPTY, LinearScorer, Snapshot
from models.vectorize import vector
from policies import funnel
from policies.catalogue import Catalogue
from policies.durations import parse_duration

if TYPE_CHECKING:
    from feature_store.evaluation import EvaluationStore

FloatArray = npt.NDArray[np.float64]

Z95: Final = 1.959963984540054  # the standard normal's 97.5% quantile
MIN_DECISIONS: Final = 100  # below this, estimates are printed with a warning
FOLDS: Final = 2
DEFAULT_ATTRIBUTION_MS: Final = 30 * 60_000  # as the learner: a placement unknown to the catalogue
DEFAULT_PLOT: Final = "evaluation-calibration.png"
POLICIES: Final = ("logged", "uniform", "model_greedy", "value_only")


# --- what the log says -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Logged:
    """One decision as off-policy estimates use it: what was seen, what could have been chosen with which
    probability, what was chosen, and what it earned."""

    decision_id: str
    placement: str
    time_ms: int
    features: Mapping[str, Any]
    context: Mapping[str, Any]
    eligible: Mapping[str, float]  # action -> probability at the first draw
    action: str  # served at slot 1
    probability: float  # its logged probability
    reward: float
    model_version: str = "prior"
    slots: int = 1  # how many actions the decision served


@dataclass(slots=True)
class Joined:
    """The decisions usable for estimates, the (propensity, positive) pairs for calibration, and how many
    entries were left out, and why."""

    decisions: list[Logged] = field(default_factory=list)
    propensities: list[float] = field(default_factory=list)
    positives: list[float] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    no_scores: int = 0  # served actions with a reward but no logged propensity (entries before `scores`)


SKIP_REASONS: Final = {
    "control": "control group (they see exempt actions only)",
    "nothing_served": "nothing was served",
    "window_open": "attribution window still open",
    "not_joined": "window closed, reward not joined yet (is the learner running?)",
    "no_eligible": "no `eligible` probabilities logged",
    "zero_probability": "served action logged with probability 0",
    "unknown_actions": "no eligible action left in the live catalogue",
    "malformed": "entry could not be read",
}


def join(
    decisions: Sequence[Mapping[str, str]],
    rewards: Sequence[Mapping[str, str]],
    *,
    now_ms: int,
    attribution: Callable[[str], int],
    reward: str = "positive",
) -> Joined:
    """Join decision log entries with the served actions' rewards, by (decision, action).

    ``attribution(placement)`` is the placement's window in ms; ``reward`` is ``positive`` (1 for a
    positive reward, else 0) or ``value`` (what was earned).
    """
    earned: dict[tuple[str, str], tuple[float, bool]] = {}
    for r in rewards:
        if r.get("counterfactual", "0") != "0":
            continue
        key = (r.get("decision_id", ""), r.get("action_id", ""))
        if key not in earned:  # each is joined once; keep the first should a restart repeat one
            try:
                earned[key] = (float(r.get("value", "0")), r.get("positive") == "1")
            except ValueError:
                continue
    out = Joined()
    for entry in decisions:
        try:
            decision_id = entry["decision_id"]
            placement = entry["placement"]
            time_ms = int(entry["time_ms"])
            served: list[dict[str, Any]] = json.loads(entry.get("actions") or "[]")
            scores: dict[str, list[float]] = json.loads(entry.get("scores") or "{}")
            if not (isinstance(served, list) and all(isinstance(a, dict) for a in served)):
                raise ValueError("actions is not a list of actions")
            propensities = {str(a): float(ps[0]) for a, ps in scores.items()}
        except (KeyError, ValueError, TypeError, IndexError, AttributeError):
            out.skipped["malformed"] += 1
            continue
        closed = time_ms + attribution(placement) <= now_ms
        if closed:
            for action in served:
                got = earned.get((decision_id, str(action.get("action_id"))))
                if got is None:
                    continue
                propensity = propensities.get(str(action.get("action_id")))
                if propensity is None:
                    out.no_scores += 1
                    continue
                out.propensities.append(propensity)
                out.positives.append(1.0 if got[1] else 0.0)
        if entry.get("group") != "treatment":
            out.skipped["control"] += 1
            continue
        if not served:
            out.skipped["nothing_served"] += 1
            continue
        if not closed:
            out.skipped["window_open"] += 1
            continue
        first = served[0]
        action_id = str(first.get("action_id"))
        got = earned.get((decision_id, action_id))
        if got is None:
            out.skipped["not_joined"] += 1
            continue
        try:
            eligible = {str(a): float(p) for a, p in json.loads(entry.get("eligible") or "{}").items()}
            probability = float(first.get("probability", 0.0))
            features = json.loads(entry.get("features") or "{}")
            context = json.loads(entry.get("context") or "{}")
        except (ValueError, AttributeError, TypeError):
            out.skipped["malformed"] += 1
            continue
        if action_id not in eligible:
            out.skipped["no_eligible"] += 1
            continue
        if not probability > 0:
            out.skipped["zero_probability"] += 1
            continue
        value = got[0] if reward == "value" else (1.0 if got[1] else 0.0)
        out.decisions.append(
            Logged(
                decision_id,
                placement,
                time_ms,
                features,
                context,
                eligible,
                action_id,
                probability,
                value,
                entry.get("model_version", "prior"),
                len(served),
            )
        )
    return out


# --- estimators --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its 95% confidence interval and standard error."""

    value: float
    low: float
    high: float
    stderr: float
    n: int


def _normal(terms: FloatArray) -> Estimate:
    """The mean of per-decision terms, with a normal-approximation 95% interval."""
    n = len(terms)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(np.mean(terms))
    se = float(np.std(terms, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(mean, mean - Z95 * se, mean + Z95 * se, se, n)


def mean_reward(rewards: FloatArray) -> Estimate:
    return _normal(np.asarray(rewards, dtype=np.float64))


def ips(target: FloatArray, logged: FloatArray, rewards: FloatArray) -> Estimate:
    """``target``: the target policy's probability of each logged action; ``logged``: its logged
    probability; ``rewards``: what it earned."""
    return _normal(np.asarray(target / logged * rewards, dtype=np.float64))


def snips(target: FloatArray, logged: FloatArray, rewards: FloatArray) -> Estimate:
    """Self-normalised IPS; its interval by the delta method for a ratio of means:
    ``se = sqrt(sum((w_i (r_i - R))^2) / (n (n - 1))) / mean(w)``."""
    n = len(rewards)
    w = np.asarray(target / logged, dtype=np.float64)
    total = float(np.sum(w))
    if n == 0 or total <= 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, n)
    value = float(np.sum(w * rewards)) / total
    if n < 2:
        return Estimate(value, math.nan, math.nan, math.nan, n)
    residual = w * (rewards - value)
    se = math.sqrt(float(np.sum(residual**2)) / (n * (n - 1))) / (total / n)
    return Estimate(value, value - Z95 * se, value + Z95 * se, se, n)


def doubly_robust(
    target: FloatArray, logged: FloatArray, rewards: FloatArray, predicted: FloatArray, direct: FloatArray
) -> Estimate:
    """``predicted``: the reward model's ``rhat(x, a_logged)``; ``direct``: ``sum_a pi(a|x) rhat(x, a)``."""
    return _normal(np.asarray(direct + target / logged * (rewards - predicted), dtype=np.float64))


def effective_sample_size(target: FloatArray, logged: FloatArray) -> float:
    """``(sum w)^2 / sum w^2``: how many decisions the weighted estimate is worth."""
    w = target / logged
    squares = float(np.sum(w**2))
    return float(np.sum(w)) ** 2 / squares if squares > 0 else 0.0


# --- policies ----------------------------------------------------------------------------------------

Policy = Callable[[Logged], Mapping[str, float]]


def logged_policy(d: Logged) -> Mapping[str, float]:
    return d.eligible


def uniform_policy(d: Logged) -> Mapping[str, float]:
    return {a: 1.0 / len(d.eligible) for a in d.eligible}


def greedy(priority: Callable[[Logged, str], float | None]) -> Policy:
    """The policy that picks the action of the highest priority among the eligible ones (``None``: the
    action cannot be chosen), splitting ties evenly."""

    def policy(d: Logged) -> Mapping[str, float]:
        scored = {a: p for a in d.eligible if (p := priority(d, a)) is not None}
        if not scored:
            return {}
        best = max(scored.values())
        winners = [a for a, p in scored.items() if p == best]
        return {a: 1.0 / len(winners) for a in winners}

    return policy


def model_greedy(catalogue: Catalogue, scorer: LinearScorer) -> Policy:
    """Greedy on propensity (the current snapshot) x context weight x value x levers (the live catalogue),
    over the logged features and context; actions no longer in the catalogue cannot be chosen."""

    def score(d: Logged, action_id: str) -> float | None:
        action = catalogue.actions.get(action_id)
        if action is None:
            return None
        propensity = scorer.propensity(action, d.features, d.context, d.placement, d.time_ms)
        return funnel.priority(action, propensity, d.context)

    return greedy(score)


def value_only(catalogue: Catalogue) -> Policy:
    """Greedy on context weight x value x levers: what the catalogue alone would choose."""

    def score(d: Logged, action_id: str) -> float | None:
        action = catalogue.actions.get(action_id)
        if action is None:
            return None
        return funnel.priority(action, 1.0, d.context)

    return greedy(score)


# --- the reward model --------------------------------------------------------------------------------


def _vectors(decisions: Sequence[Logged]) -> Any:
    from sklearn.feature_extraction import DictVectorizer

    rows = (vector(d.features, d.context, d.placement, d.time_ms) for d in decisions)
    # The vocabulary only (no rewards): fitting it on every row leaks nothing into the cross-fitting.
    return DictVectorizer(sparse=True).fit_transform(rows)


def _fit_predict(x_train: Any, y_train: FloatArray, x_test: Any, binary: bool, prior: float) -> FloatArray:
    """One action's reward model on its training rows, predicting its test rows. Too few rows, or a
    single class, predict the training mean shrunk towards ``prior``."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler

    n = len(y_train)
    if x_test.shape[0] == 0:
        return np.zeros(0)
    if n < 10 or (binary and len(np.unique(y_train)) < 2):
        constant = (float(np.sum(y_train)) + 5 * prior) / (n + 5)
        return np.full(x_test.shape[0], constant)
    if binary:
        model = make_pipeline(MaxAbsScaler(), LogisticRegression(C=1.0, max_iter=1000))
        model.fit(x_train, y_train.astype(int))
        return np.asarray(model.predict_proba(x_test)[:, 1], dtype=np.float64)
    model = make_pipeline(MaxAbsScaler(), Ridge(alpha=1.0))
    model.fit(x_train, y_train)
    return np.asarray(model.predict(x_test), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Pairs:
    """Every (decision, eligible action) pair, flat: ``row`` indexes the decision."""

    row: npt.NDArray[np.int64]
    action: list[str]
    logged: npt.NDArray[np.bool_]  # the pair is the logged (decision, action)


def pairs(decisions: Sequence[Logged]) -> Pairs:
    rows, actions, logged = [], [], []
    for i, d in enumerate(decisions):
        for a in d.eligible:
            rows.append(i)
            actions.append(a)
            logged.append(a == d.action)
    return Pairs(np.asarray(rows, dtype=np.int64), actions, np.asarray(logged, dtype=np.bool_))


def reward_model(decisions: Sequence[Logged], *, folds: int = FOLDS, seed: int = 0) -> FloatArray:
    """``rhat(x, a)`` for every pair of :func:`pairs`, cross-fitted.

    One model per action (as the learner has): a logistic regression on the decision's vector
    (models/vectorize.py) when rewards are 0/1, a ridge regression otherwise. The decisions are split at
    random (seeded) into ``folds`` folds; the predictions for a fold's decisions come from models fitted
    on the other folds only, so no decision's own reward is in the model that corrects it.
    """
    flat = pairs(decisions)
    predicted = np.zeros(len(flat.action))
    n = len(decisions)
    if n == 0:
        return predicted
    x = _vectors(decisions)
    rewards = np.asarray([d.reward for d in decisions], dtype=np.float64)
    binary = bool(np.all((rewards == 0) | (rewards == 1)))
    logged_action = np.asarray([d.action for d in decisions], dtype=object)
    pair_action = np.asarray(flat.action, dtype=object)
    fold = np.random.default_rng(seed).permutation(n) % folds
    for k in range(folds):
        train = fold != k
        if not train.any():
            train = np.ones(n, dtype=np.bool_)
        prior = float(np.mean(rewards[train]))
        held = fold[flat.row] == k
        for action in sorted(set(flat.action)):
            rows = np.flatnonzero(train & (logged_action == action))
            at = np.flatnonzero(held & (pair_action == action))
            if len(at) == 0:
                continue
            predicted[at] = _fit_predict(x[rows], rewards[rows], x[flat.row[at]], binary, prior)
    return predicted


# --- policy estimates --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyEstimate:
    policy: str
    ips: Estimate
    snips: Estimate
    dr: Estimate
    effective_n: float  # (sum w)^2 / sum w^2
    agreement: float  # share of decisions where the target could have chosen the logged action
    unsupported: float  # mean target probability on actions the logging policy gave probability 0


def estimate(
    decisions: Sequence[Logged],
    policies: Mapping[str, Policy],
    *,
    folds: int = FOLDS,
    seed: int = 0,
    predicted: FloatArray | None = None,
) -> list[PolicyEstimate]:
    """IPS, SNIPS and DR of each policy over the logged decisions (each policy must give every decision
    a distribution over some of its eligible actions)."""
    flat = pairs(decisions)
    rhat = reward_model(decisions, folds=folds, seed=seed) if predicted is None else predicted
    n = len(decisions)
    logged_p = np.asarray([d.probability for d in decisions], dtype=np.float64)
    rewards = np.asarray([d.reward for d in decisions], dtype=np.float64)
    rhat_logged = np.zeros(n)
    rhat_logged[flat.row[flat.logged]] = rhat[flat.logged]
    support = np.asarray(
        [decisions[i].eligible[a] > 0 for i, a in zip(flat.row, flat.action, strict=True)], dtype=np.bool_
    )
    out = []
    for name, policy in policies.items():
        chosen = [policy(d) for d in decisions]
        pi = np.asarray(
            [chosen[i].get(a, 0.0) for i, a in zip(flat.row, flat.action, strict=True)], dtype=np.float64
        )
        target = np.zeros(n)
        target[flat.row[flat.logged]] = pi[flat.logged]
        direct = np.bincount(flat.row, weights=pi * rhat, minlength=n).astype(np.float64)
        unsupported = np.bincount(flat.row, weights=pi * ~support, minlength=n).astype(np.float64)
        out.append(
            PolicyEstimate(
                name,
                ips(target, logged_p, rewards),
                snips(target, logged_p, rewards),
                doubly_robust(target, logged_p, rewards, rhat_logged, direct),
                effective_sample_size(target, logged_p),
                float(np.mean(target > 0)) if n else math.nan,
                float(np.mean(unsupported)) if n else math.nan,
            )
        )
    return out


# --- calibration -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    low: float  # the lowest propensity in the bucket
    high: float  # the highest
    n: int
    predicted: float  # mean propensity
    observed: float  # share of positive rewards


@dataclass(frozen=True, slots=True)
class Calibration:
    n: int
    positives: int
    mean_predicted: float
    observed_rate: float
    auc: float | None  # None when every outcome is the same
    log_loss: float
    brier: float
    buckets: tuple[Bucket, ...]


def calibration(propensities: Sequence[float], positives: Sequence[float], buckets: int = 10) -> Calibration:
    """The logged propensities against what happened: equal-count buckets (deciles by default, in order
    of propensity; equal propensities may fall in neighbouring buckets), AUC, log loss and Brier score."""
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.asarray(propensities, dtype=np.float64)
    y = np.asarray(positives, dtype=np.float64)
    if len(p) == 0:
        return Calibration(0, 0, math.nan, math.nan, None, math.nan, math.nan, ())
    order = np.argsort(p, kind="stable")
    found = []
    for part in np.array_split(order, min(buckets, len(p))):
        found.append(
            Bucket(
                float(p[part].min()),
                float(p[part].max()),
                len(part),
                float(np.mean(p[part])),
                float(np.mean(y[part])),
            )
        )
    both = len(np.unique(y)) == 2
    clipped = np.clip(p, 1e-6, 1 - 1e-6)
    return Calibration(
        n=len(p),
        positives=int(np.sum(y)),
        mean_predicted=float(np.mean(p)),
        observed_rate=float(np.mean(y)),
        auc=float(roc_auc_score(y, p)) if both else None,
        log_loss=float(log_loss(y, clipped, labels=[0, 1])),
        brier=float(np.mean((p - y) ** 2)),
        buckets=tuple(found),
    )


def plot_calibration(cal: Calibration, path: Path, title: str = "") -> Path:
    """Save the calibration plot as PNG: observed positive rate against mean propensity per bucket (with
    95% intervals), the diagonal, and below it how the propensities spread (actions per 0.01)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    predicted = np.asarray([b.predicted for b in cal.buckets])
    observed = np.asarray([b.observed for b in cal.buckets])
    counts = np.asarray([b.n for b in cal.buckets])
    error = Z95 * np.sqrt(np.clip(observed * (1 - observed), 1e-12, None) / np.maximum(counts, 1))
    top_value = max(float(np.max(predicted, initial=0.0)), float(np.max(observed + error, initial=0.0)))
    edge = min(max(top_value, 0.01) * 1.1, 1.0)
    top.plot([0, edge], [0, edge], linestyle="--", color="grey", label="perfectly calibrated")
    top.errorbar(predicted, observed, yerr=error, fmt="o-", capsize=3, label="deciles of propensity")
    top.set_xlim(0, edge)
    top.set_ylim(0, edge)
    top.set_ylabel("observed positive rate")
    auc = "n/a" if cal.auc is None else f"{cal.auc:.3f}"
    top.set_title(title or f"Calibration: n={cal.n}, AUC {auc}, log loss {cal.log_loss:.4f}")
    top.legend(loc="upper left")
    lows = np.asarray([b.low for b in cal.buckets])
    widths = np.maximum(np.asarray([b.high for b in cal.buckets]) - lows, edge / 200)
    bottom.bar(lows, counts / (widths * 100), width=widths, align="edge", edgecolor="white")
    bottom.set_xlabel("logged propensity (each bar spans a bucket)")
    bottom.set_ylabel("actions per 0.01")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


# --- the report --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Report:
    since_ms: int | None
    until_ms: int | None
    placement: str | None
    reward: str
    catalogue_version: str
    model_version: str
    decisions_read: int
    rewards_read: int
    usable: int
    multi_slot: int
    skipped: dict[str, int]
    model_versions: dict[str, int]  # the usable decisions by the model that made them
    observed: Estimate | None
    estimates: list[PolicyEstimate]
    calibration: Calibration | None
    no_scores: int
    plot: str | None
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as RFC 3339, NaN as null."""
        data: dict[str, Any] = finite(asdict(self))
        data["since"] = _iso(self.since_ms)
        data["until"] = _iso(self.until_ms)
        return data

    def estimate_of(self, policy: str) -> PolicyEstimate:
        return next(e for e in self.estimates if e.policy == policy)


def iso_s(ms: int) -> str:
    """A time as RFC 3339 to the second, UTC (the reports' times)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso_s(ms)


def finite(value: Any) -> Any:
    """``value`` for JSON: NaN and infinities (an estimate that does not exist) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def analyse(
    decision_entries: Sequence[Mapping[str, str]],
    reward_entries: Sequence[Mapping[str, str]],
    catalogue: Catalogue,
    snapshot: Snapshot,
    *,
    now_ms: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    placement: str | None = None,
    reward: str = "positive",
    plot: Path | None = None,
    folds: int = FOLDS,
    seed: int = 0,
) -> Report:
    """The whole evaluation over entries already read: pure but for writing the plot."""

    def attribution(name: str) -> int:
        spec = catalogue.placements.get(name)
        return spec.attribution if spec else DEFAULT_ATTRIBUTION_MS

    served_rewards = [r for r in reward_entries if r.get("counterfactual", "0") == "0"]
    joined = join(decision_entries, served_rewards, now_ms=now_ms, attribution=attribution, reward=reward)
    known = [d for d in joined.decisions if any(a in catalogue.actions for a in d.eligible)]
    joined.skipped["unknown_actions"] += len(joined.decisions) - len(known)
    decisions = known
    warnings: list[str] = []
    estimates: list[PolicyEstimate] = []
    observed = None
    if not decision_entries:
        warnings.append("the decision log is empty (for this window and placement): nothing to evaluate")
    elif not decisions:
        warnings.append(
            "no usable decisions: off-policy estimates need treatment decisions that served an action, "
            "whose attribution window has closed and whose reward the learner has joined (see skipped)"
        )
    else:
        if len(decisions) < MIN_DECISIONS:
            warnings.append(
                f"only {len(decisions)} usable decisions (fewer than {MIN_DECISIONS}): the estimates are "
                "noisy; read them with their intervals, and prefer a longer window"
            )
        scorer = LinearScorer(snapshot)
        policies: dict[str, Policy] = {
            "logged": logged_policy,
            "uniform": uniform_policy,
            "model_greedy": model_greedy(catalogue, scorer),
            "value_only": value_only(catalogue),
        }
        observed = mean_reward(np.asarray([d.reward for d in decisions], dtype=np.float64))
        estimates = estimate(decisions, policies, folds=folds, seed=seed)
        for e in estimates:
            if e.unsupported > 0.005:
                warnings.append(
                    f"{e.policy}: {e.unsupported:.1%} of its choices had logged probability 0 (no "
                    "exploration covered them): IPS and SNIPS count them as earning nothing, DR relies on "
                    "the reward model for them"
                )
    if joined.skipped["zero_probability"]:
        warnings.append(f"{joined.skipped['zero_probability']} decisions skipped: served with probability 0")
    if joined.no_scores:
        warnings.append(
            f"{joined.no_scores} served actions have no logged propensity (decisions logged before the "
            "log carried `scores`): left out of the calibration"
        )
    cal = None
    plot_path = None
    if joined.propensities:
        cal = calibration(joined.propensities, joined.positives)
        if cal.auc is None:
            warnings.append("AUC is undefined: every served action's reward was the same")
        if plot is not None:
            try:
                plot_path = str(plot_calibration(cal, plot))
            except ImportError:
                warnings.append("no calibration plot: matplotlib is not installed (pip install 'nba[tools]')")
    elif decision_entries:
        warnings.append("no calibration: no served action with a logged propensity has a joined reward yet")
    return Report(
        since_ms=since_ms,
        until_ms=until_ms,
        placement=placement,
        reward=reward,
        catalogue_version=catalogue.version,
        model_version=snapshot.version,
        decisions_read=len(decision_entries),
        rewards_read=len(served_rewards),
        usable=len(decisions),
        multi_slot=sum(1 for d in decisions if d.slots > 1),
        skipped={k: v for k, v in joined.skipped.items() if v},
        model_versions=dict(Counter(d.model_version for d in decisions).most_common()),
        observed=observed,
        estimates=estimates,
        calibration=cal,
        no_scores=joined.no_scores,
        plot=plot_path,
        warnings=warnings,
    )


async def evaluate(
    store: EvaluationStore,
    catalogue: Catalogue,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    placement: str | None = None,
    reward: str = "positive",
    plot: Path | None = Path(DEFAULT_PLOT),
    now_ms: int | None = None,
    folds: int = FOLDS,
    seed: int = 0,
) -> Report:
    """Read the decision log, the rewards and the current snapshot, and evaluate (see the module doc)."""
    decisions = await store.decisions(since_ms, until_ms, placement)
    rewards = await store.rewards(since_ms, until_ms, placement) if decisions else []
    text = await store.snapshot()
    snapshot = Snapshot.from_json(text) if text else EMPTY
    return analyse(
        decisions,
        rewards,
        catalogue,
        snapshot,
        now_ms=int(time.time() * 1000) if now_ms is None else now_ms,
        since_ms=since_ms,
        until_ms=until_ms,
        placement=placement,
        reward=reward,
        plot=plot,
        folds=folds,
        seed=seed,
    )


# --- the command -------------------------------------------------------------------------------------


def parse_when(text: str, now_ms: int) -> int:
    """``24h`` (that long ago) or an RFC 3339 time (``2026-11-22T10:00:00Z``; no offset means UTC), in ms."""
    try:
        return now_ms - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (24h, 7d) nor an RFC 3339 time (2026-11-22T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _cell(e: Estimate) -> str:
    if not math.isfinite(e.value):
        return "n/a"
    if not math.isfinite(e.stderr):
        return f"{e.value:.4f}"
    return f"{e.value:.4f} [{e.low:.4f}, {e.high:.4f}]"


def render(report: Report) -> str:
    """The report as a readable table."""
    lines = []
    window = f"{_iso(report.since_ms) or 'the start of the log'} to {_iso(report.until_ms) or 'now'}"
    lines.append(
        f"nba evaluate: decisions from {window}, placement {report.placement or 'all'}, "
        f"reward {report.reward}"
    )
    lines.append(f"catalogue {report.catalogue_version}, current model {report.model_version}")
    skipped = ", ".join(f"{SKIP_REASONS.get(k, k)}: {v}" for k, v in report.skipped.items())
    lines.append(
        f"{report.decisions_read} decisions read, {report.usable} usable"
        + (f" ({report.multi_slot} served several actions: slot 1 evaluated)" if report.multi_slot else "")
    )
    if skipped:
        lines.append(f"left out: {skipped}")
    if report.model_versions:
        lines.append(f"usable decisions were made with {_versions(report.model_versions)}")
    if report.observed is not None:
        lines.append("")
        lines.append(f"observed mean reward: {_cell(report.observed)} (n={report.observed.n})")
        lines.append("")
        header = f"{'policy':<14}{'IPS':<28}{'SNIPS':<28}{'DR':<28}{'eff. n':>9}{'agree':>7}"
        lines.append(header)
        lines.append("-" * len(header))
        for e in report.estimates:
            lines.append(
                f"{e.policy:<14}{_cell(e.ips):<28}{_cell(e.snips):<28}{_cell(e.dr):<28}"
                f"{e.effective_n:>9.1f}{e.agreement:>7.0%}"
            )
        lines.append("95% intervals: IPS and DR normal, SNIPS delta method; DR's reward model cross-fitted")
    cal = report.calibration
    if cal is not None:
        auc = "n/a" if cal.auc is None else f"{cal.auc:.3f}"
        lines.append("")
        lines.append(
            f"calibration of the logged propensities: {cal.n} served actions, {cal.positives} positive; "
            f"AUC {auc}, log loss {cal.log_loss:.4f}, Brier {cal.brier:.4f}"
        )
        lines.append(
            f"mean propensity {cal.mean_predicted:.4f}, observed positive rate {cal.observed_rate:.4f}"
        )
        lines.append(f"{'propensities':<22}{'n':>8}{'predicted':>11}{'observed':>10}")
        for b in cal.buckets:
            lines.append(f"{f'{b.low:.4f}-{b.high:.4f}':<22}{b.n:>8}{b.predicted:>11.4f}{b.observed:>10.4f}")
    if report.plot:
        lines.append(f"calibration plot: {report.plot}")
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _versions(counts: Mapping[str, int]) -> str:
    """``prior: 60, 5207 with 118 snapshots (m-1 to m-117)``: which models made the decisions, briefly."""
    parts = [f"the priors: {counts['prior']}"] if "prior" in counts else []
    learned = {v: n for v, n in counts.items() if v != "prior"}
    if len(learned) <= 3:
        parts.extend(f"{v}: {n}" for v, n in learned.items())
    else:
        ordered = sorted(learned, key=lambda v: (len(v), v))
        parts.append(f"{len(learned)} snapshots ({ordered[0]} to {ordered[-1]}): {sum(learned.values())}")
    return ", ".join(parts)


DESCRIPTION: Final = (
    "Off-policy estimates of candidate policies (IPS, SNIPS, doubly robust) and the calibration of the "
    "online propensities, from the decision log in NBA_REDIS_URL."
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command's options, on ``parser`` (``nba``'s ``evaluate`` subparser, or :func:`main`'s own)."""
    parser.add_argument("--since", help="from this time: RFC 3339, or a duration ago (24h, 7d)")
    parser.add_argument("--until", help="up to this time (excluded): RFC 3339, or a duration ago")
    parser.add_argument("--placement", help="only this placement")
    parser.add_argument(
        "--reward",
        choices=("positive", "value"),
        default="positive",
        help="positive: 1 for a positive reward (default); value: what was earned (use with --placement)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(DEFAULT_PLOT), help=f"calibration plot (PNG; default {DEFAULT_PLOT})"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``nba evaluate [options]`` (``argv``: the options, without ``evaluate``)."""
    parser = argparse.ArgumentParser(prog="nba evaluate", description=DESCRIPTION)
    return run(add_arguments(parser).parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the command with parsed options: 0 when a report was printed, 1 when the store is
    unreachable, 2 for a configuration problem."""
    url = os.environ.get("NBA_REDIS_URL")
    if not url:
        print(
            "nba evaluate: set NBA_REDIS_URL to the Redis the service uses (the decision log and the rewards "
            "are read from it; `nba serve`'s embedded Redis is unix://<data dir>/redis.sock)",
            file=sys.stderr,
        )
        return 2
    now_ms = int(time.time() * 1000)
    try:
        since_ms = parse_when(args.since, now_ms) if args.since else None
        until_ms = parse_when(args.until, now_ms) if args.until else None
    except ValueError as exc:
        print(f"nba evaluate: {exc}", file=sys.stderr)
        return 2
    from feature_store.features import feature_names
    from policies.catalogue import CatalogueInvalid, default_path, load

    path = Path(os.environ.get("NBA_POLICIES") or default_path())
    try:
        catalogue = load(path, feature_names())
    except CatalogueInvalid as exc:
        print(f"nba evaluate: the catalogue in {path} is invalid:\n{exc}", file=sys.stderr)
        return 2
    from feature_store import StoreUnavailable

    try:
        report = asyncio.run(
            _evaluate(url, catalogue, since_ms, until_ms, args.placement, args.reward, args.out, now_ms)
        )
    except StoreUnavailable as exc:
        print(f"nba evaluate: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render(report))
    return 0


async def _evaluate(
    url: str,
    catalogue: Catalogue,
    since_ms: int | None,
    until_ms: int | None,
    placement: str | None,
    reward: str,
    out: Path,
    now_ms: int,
) -> Report:
    from feature_store.evaluation import EvaluationStore

    store = EvaluationStore.connect(url)
    try:
        return await evaluate(
            store,
            catalogue,
            since_ms=since_ms,
            until_ms=until_ms,
            placement=placement,
            reward=reward,
            plot=out,
            now_ms=now_ms,
        )
    finally:
        await store.aclose()


if __name__ == "__main__":
    raise SystemExit(main())

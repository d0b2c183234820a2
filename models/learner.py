"""The one writer of the models: joins decisions with their outcomes and purchases, learns, publishes.

One loop, one process (``nba learn``; ``nba serve`` on its embedded Redis runs one itself). A lock in
Redis keeps a second learner waiting rather than learning beside the first (two writers would drift).

How it learns, with delayed feedback: every served action is learned as a negative as soon as its
decision is read, and a positive reward is learned as a positive on top of it, as soon as it is known
(an outcome when it is read; a purchase in a ``conversion`` or ``value`` window at the close). This is
the "fake negative" method of Ktena et al., *Addressing Delayed Feedback for Continuous Training with
Neural Networks in CTR prediction* (RecSys 2019): the model sees every example at once and in the order
it happened, instead of its clicks now and its misses only when the window closes. It then estimates
``q = p / (1 + p)`` for the true chance ``p``, which :mod:`models.snapshot` turns back into
``p = q / (1 - q)``. Waiting for the close instead would have the model see an action's clicks some
seconds or minutes before its misses, and favour whatever was shown last (docs/learning.md measures it).

Each round:

1. reads new decisions from the decision log: learns each served action as a negative, and enters it
   (and a control customer's counterfactual ones, and a treatment customer's holdout counterfactual
   ones) in the pending set, due when its attribution window closes;
2. reads new outcomes: one that earns a reward under its placement's ``reward`` is learned at once, if
   it happened within its attribution window;
3. takes the pending entries whose window has closed and joins them: with what the customer's
   purchases in the window earned (learned if positive), else as a zero (already learned);
4. publishes when something changed, at most every ``publish_every_s`` (1 s by default): the snapshot,
   the joined entries out of the pending set, the position read to in each stream and the joined
   rewards, all in one transaction.

The guarantee: an observation is learned exactly once, across restarts. Until a publish, what was
learned lives only in this process; a crash loses it together with the position it had read to, so
after the restart the same entries are read again and learned again, from the last published snapshot
(feature_store/learning.py). A published entry is out of the pending set, and behind the published
position, in the same transaction that published the model it went into. Counterfactual and held-out
entries are joined (for measurement) but never learned: those actions were not shown.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from river import linear_model, optim

from feature_store.errors import LockLost
from feature_store.keys import DECISION_LOG, OUTCOME_LOG
from feature_store.learning import LearnerStore
from models.rewards import (
    COUNTERFACTUAL,
    HELD_OUT,
    REWARD_KIND,
    SERVED,
    Earned,
    Pending,
    at_close,
    from_outcome,
)
from models.snapshot import ActionModel, Snapshot, logit, to_model
from models.stopping import pause
from models.vectorize import Centre, vector
from policies.catalogue import Catalogue

log = structlog.get_logger("nba.learner")

Clock = Callable[[], float]
LOCK_MS = 15_000
DEFAULT_ATTRIBUTION_MS = 30 * 60_000
CLOSE_GRACE_MS = 2_000
LEARNING_RATE = 0.1  # AdaGrad's; docs/learning.md says how it was chosen
# The intercept's plain SGD step (river's default). Faster steps help the bandit benchmark and hurt
# the simulator: docs/bandit-benchmark.md and docs/learning.md have the figures.
INTERCEPT_RATE = 0.01


NEGATIVE = Earned(0.0, False, "served")
# Where each kind of action is in a decision log entry (absent from entries that have none).
LOGGED = ((SERVED, "actions"), (COUNTERFACTUAL, "counterfactual"), (HELD_OUT, "holdout_counterfactual"))


@dataclass(slots=True)
class _Action:
    model: linear_model.LogisticRegression
    observations: int = 0
    positives: int = 0
    reward_sum: float = 0.0
    updated_ms: int = 0

    def frozen(self) -> ActionModel:
        return ActionModel(
            weights=dict(self.model._weights),
            intercept=float(self.model.intercept),
            observations=self.observations,
            positives=self.positives,
            reward_sum=self.reward_sum,
            updated_ms=self.updated_ms,
            optimizer=dict(self.model.optimizer.g2),
        )


def _regression(
    intercept: float, weights: Mapping[str, float] | None = None, optimizer: Mapping[str, float] | None = None
) -> linear_model.LogisticRegression:
    """A logistic regression with AdaGrad: each feature's step shrinks with its own history, so counters
    that grow with every event cannot swamp rarer, more telling features (plain SGD let them)."""
    model = linear_model.LogisticRegression(
        optimizer=optim.AdaGrad(LEARNING_RATE), l2=1e-4, intercept_init=intercept, intercept_lr=INTERCEPT_RATE
    )
    for name, weight in (weights or {}).items():
        model._weights[name] = weight
    for name, g2 in (optimizer or {}).items():
        model.optimizer.g2[name] = g2
    return model


@dataclass(slots=True)
class Learner:
    store: LearnerStore
    catalogue: Callable[[], Catalogue]
    clock: Clock = time.time
    publish_every_s: float = 1.0
    # What ``publish_every_s`` is measured on: the wall clock's seconds, unless a simulation moves time.
    pace: Clock = time.monotonic
    log_max: int = 1_000_000
    # Entries per read of a log: Redis serves nothing else while it answers one, and 500 decisions'
    # entries took it up to 0.8 ms, in which every decision waited (docs/performance.md).
    read_batch: int = 100
    # Windows joined per round: fewer a round would close fewer a second (each round reads the logs first).
    batch: int = 500
    close_grace_ms: int = CLOSE_GRACE_MS
    # The lock this learner holds, which its publishes are fenced by (``run`` takes it; a learner driven
    # by hand, as tests and the simulation do, publishes unfenced).
    token: str | None = None
    _actions: dict[str, _Action] = field(default_factory=dict)
    _version: int = 0
    _learned: list[str] = field(default_factory=list)
    _learned_set: set[str] = field(default_factory=set)
    _read: dict[str, str] = field(default_factory=dict)  # stream -> the last entry id learned, to publish
    _rewards: list[dict[str, str]] = field(default_factory=list)
    _last_publish: float = 0.0
    _centre: Centre = field(default_factory=Centre)
    _changed_model: bool = False  # something was learned since the last publish

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def restore(self) -> None:
        """Start from the published snapshot, forgetting whatever this process learned and did not publish
        (``run`` after the store went away, say): the stream entries it came from are read again."""
        self._actions, self._version, self._centre, self._changed_model = {}, 0, Centre(), False
        self._learned, self._learned_set, self._rewards = [], set(), []
        self._read = {}
        await self.store.rewind()
        text = await self.store.snapshot()
        if text is None:
            return
        snapshot = Snapshot.from_json(text)
        self._centre = snapshot.centre
        self._version = int(snapshot.version.removeprefix("m-")) if snapshot.version.startswith("m-") else 0
        for action_id, m in snapshot.actions.items():
            self._actions[action_id] = _Action(
                _regression(m.intercept, m.weights, m.optimizer),
                m.observations,
                m.positives,
                m.reward_sum,
                m.updated_ms,
            )

    async def run(self, stop: asyncio.Event, *, idle_s: float = 0.1) -> None:
        """Learn until ``stop`` is set, as the one learner (waiting for the lock while another holds it).

        Returns early when the lock is lost: found at a renewal, or at a publish, which is refused when
        the lock has passed to another learner since (feature_store/learning.py). What was learned and
        not published is dropped; run again, the learner waits for the lock and starts from what is
        published."""
        token = os.urandom(12).hex()
        while not stop.is_set():
            if await self.store.acquire(token, LOCK_MS):
                break
            log.info("learner_waiting_for_lock")
            await pause(stop, LOCK_MS / 3000)
        else:
            return
        self.token = token
        try:
            await self.store.ensure_groups()
            await self.restore()
            log.info("learner_started", version=self._version, actions=len(self._actions))
            while not stop.is_set():
                if not await self.store.renew(token, LOCK_MS):
                    log.error("learner_lost_lock", at="renewal")
                    return
                busy = await self.step()
                await self.publish_if_due()
                if not busy:
                    await pause(stop, idle_s)
            await self.publish_if_due(force=True)
        except LockLost:
            log.error("learner_lost_lock", at="publish")
        finally:
            self.token = None
            await self.store.release(token)

    async def step(self) -> bool:
        """One round of reading and learning; whether there was anything to do."""
        catalogue = self.catalogue()
        # The time is taken before the outcomes are read: a window that closed by then is closed only
        # after every outcome reported before its close has been read (else a click sent just before
        # the close, read after it, would be lost to the zero).
        now_ms = self.now_ms()
        decisions = await self._take_decisions(catalogue)
        outcomes = await self._take_outcomes(catalogue)
        closed = await self._close_windows(catalogue, now_ms)
        return decisions or outcomes or closed

    async def _take_decisions(self, catalogue: Catalogue) -> bool:
        found = False
        now_ms = self.now_ms()
        while entries := await self.store.read(DECISION_LOG, self.read_batch):
            found = True
            due: dict[str, int] = {}
            for _, fields in entries:
                placement = catalogue.placements.get(fields.get("placement", ""))
                window = placement.attribution if placement else DEFAULT_ATTRIBUTION_MS
                close = int(fields["time_ms"]) + window
                x = _vector(fields)
                self._centre.update(x)  # every decision, control ones too: the traffic as it comes
                self._changed_model = True  # the centre is part of the snapshot
                for kind, name in LOGGED:
                    for action in json.loads(fields.get(name, "[]")):
                        due[Pending(fields["decision_id"], action["action_id"], kind).member()] = close
                        if kind == SERVED:  # the fake negative; a positive reward comes on top of it
                            self._observe(action["action_id"], x, NEGATIVE, now_ms)
            self._read[DECISION_LOG] = entries[-1][0]
            await self.store.add_pending(due)
        return found

    async def _take_outcomes(self, catalogue: Catalogue) -> bool:
        entries = await self.store.read(OUTCOME_LOG, self.read_batch)
        if not entries:
            return False
        earned: list[tuple[Pending, Earned, int]] = []
        for _, fields in entries:
            placement = catalogue.placements.get(fields["placement"])
            reward = placement.reward if placement else "click"
            got = from_outcome(reward, fields["type"], float(fields.get("value", 0)))
            if got is not None:
                pending = Pending(fields["decision_id"], fields["action_id"], SERVED)
                earned.append((pending, got, int(fields.get("time_ms", 0))))
        candidates = [(p, e, t) for p, e, t in earned if p.member() not in self._learned_set]
        closes = await self.store.closes([p.member() for p, _, _ in candidates])
        # Only within its window: an outcome after the close earns nothing, whether or not this learner
        # has closed the window yet (a lagging or restarted learner learns what a prompt one did).
        await self._learn(
            [
                (p, e)
                for (p, e, t), close in zip(candidates, closes, strict=True)
                if close is not None and t <= close
            ]
        )
        self._read[OUTCOME_LOG] = entries[-1][0]
        return True

    async def _close_windows(self, catalogue: Catalogue, now_ms: int) -> bool:
        # A window is closed a little after its end, so that an outcome timed inside it but written to
        # the log a moment later (a slow request, clocks apart between hosts) still counts.
        due = await self.store.due(now_ms - self.close_grace_ms, self.batch)
        members = [m for m in due if m not in self._learned_set]
        if not members:
            return False
        pending = [Pending.parse(m) for m in members]
        summaries = await self.store.summaries([p.decision_id for p in pending])
        windows, rewards = [], []
        for summary in summaries:
            placement = catalogue.placements.get(summary.get("placement", ""))
            rewards.append(placement.reward if placement else "click")
            start = int(summary.get("time_ms", 0))
            window = placement.attribution if placement else DEFAULT_ATTRIBUTION_MS
            windows.append((summary.get("customer", "c:?"), start, start + window))
        bought = await self.store.purchases(windows)
        await self._learn(
            [(p, at_close(r, b)) for p, r, b in zip(pending, rewards, bought, strict=True)],
            summaries=summaries,
        )
        return True

    async def _learn(
        self, items: list[tuple[Pending, Earned]], summaries: list[dict[str, str]] | None = None
    ) -> None:
        if not items:
            return
        if summaries is None:
            summaries = await self.store.summaries([p.decision_id for p, _ in items])
        now = self.now_ms()
        for (pending, earned), summary in zip(items, summaries, strict=True):
            member = pending.member()
            if member in self._learned_set:
                continue
            self._learned.append(member)
            self._learned_set.add(member)
            if not summary:  # expired before its reward came in: nothing left to learn from
                continue
            self._rewards.append(
                {
                    "decision_id": pending.decision_id,
                    "action_id": pending.action_id,
                    "counterfactual": REWARD_KIND[pending.kind],
                    "customer": summary["customer"],
                    "placement": summary["placement"],
                    "group": summary["group"],
                    "time_ms": summary["time_ms"],
                    "value": repr(earned.value),
                    "positive": "1" if earned.positive else "0",
                    "source": earned.source,
                }
            )
            if pending.kind == SERVED and earned.positive:  # its negative was learned when it was served
                self._observe(pending.action_id, _vector(summary), earned, now)

    def _observe(self, action_id: str, x: Mapping[str, float], earned: Earned, now_ms: int) -> None:
        """Learn one example of ``action_id``, with the decision's vector ``x`` (centred here)."""
        state = self._actions.get(action_id)
        if state is None:
            spec = self.catalogue().actions.get(action_id)
            state = _Action(_regression(logit(to_model(spec.spec.prior if spec else 0.05))))
            self._actions[action_id] = state
        state.model.learn_one(self._centre.centred(x), earned.positive)
        self._changed_model = True
        state.observations += int(not earned.positive)  # one per served action: its negative
        state.positives += int(earned.positive)
        state.reward_sum += earned.value
        state.updated_ms = now_ms

    def _changed(self) -> bool:
        return bool(self._learned or self._read)

    async def publish_if_due(self, *, force: bool = False) -> str | None:
        """Publish what was learned since the last publish; the new version, or ``None``."""
        if not self._changed():
            return None
        if not force and self.pace() - self._last_publish < self.publish_every_s:
            return None
        snapshot_json = None
        version = f"m-{self._version}"
        # A new model when something was learned (a served action's negative, read with its decision, is
        # learned too); else only the position and joins. Publishing a position past a decision whose
        # negative is in no published model would lose it to a crash.
        if self._changed_model:
            version = f"m-{self._version + 1}"
            models = {a: s.frozen() for a, s in self._actions.items()}
            centre = Centre(dict(self._centre.means), dict(self._centre.variances), self._centre.count)
            snapshot = Snapshot(version, self.now_ms(), models, centre)
            snapshot_json = snapshot.to_json()
        await self.store.publish(
            snapshot_json, version, self._learned, self._read, self._rewards, self.log_max, self.token
        )
        if snapshot_json is not None:
            self._version += 1
            self._changed_model = False
        self._learned, self._learned_set, self._rewards = [], set(), []
        self._read = {}
        self._last_publish = self.pace()
        if snapshot_json is None:
            return None
        log.info("model_published", version=version, actions=len(self._actions))
        return version


def _vector(summary: Mapping[str, str]) -> dict[str, float]:
    """The vector of a decision, from its summary or its log entry (what the policy saw)."""
    features: dict[str, Any] = json.loads(summary.get("features", "{}"))
    context: dict[str, Any] = json.loads(summary.get("context", "{}"))
    return vector(features, context, summary["placement"], int(summary["time_ms"]))

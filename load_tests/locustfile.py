"""Locust scenarios shaped like a shop's traffic, against any deployment.

    NBA_LOAD_KEY=<web key> locust -f load_tests/locustfile.py --host https://nba.example.com

- ``ShopVisitor``: browser visits (page views with a decision, cart adds, purchases, outcomes for a share
  of the decisions, logins and signups; with ``NBA_LOAD_SERVER_KEY``, identity links).
- ``PlatformBatches``: a marketing platform posting ``{"events": [...]}`` batches, ``NBA_LOAD_PLATFORM_USERS``
  of them (1), each every ``NBA_LOAD_BATCH_EVERY_S`` seconds (10).

What is sent is built by ``load_tests/traffic.py``; every variable and default is in docs/load-testing.md.
A 4xx or 5xx is a failure, and so is a decision answered with ``fallback: true``, under its own name
(``decide (fallback)``), so fallbacks show in the stats.
"""

from __future__ import annotations

import os
import random
from typing import Any

from locust import HttpUser, between, constant_pacing, task

from load_tests.traffic import DECIDE, DECIDE_FALLBACK, Call, Settings, Visitor, Zipf, platform_batch

# Locust reads user classes' weights and wait times when it imports this file, so the settings are
# read here, once per process.
SETTINGS = Settings.from_env(os.environ)
CUSTOMERS = Zipf(SETTINGS.customers, SETTINGS.zipf_s)
PRODUCTS = Zipf(SETTINGS.products, SETTINGS.zipf_s)
KEYS = {
    "web": os.environ.get("NBA_LOAD_KEY", "").strip(),
    "server": os.environ.get("NBA_LOAD_SERVER_KEY", "").strip(),
}


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, "").strip() or default)


class NbaUser(HttpUser):
    abstract = True

    def send(self, call: Call) -> Any:
        """Post one call; a 2xx answer's JSON, or None. Failures are reported, never raised."""
        key = KEYS[call.scope] or KEYS["web"]
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with self.client.post(
            call.path, json=call.body, headers=headers, name=call.name, catch_response=True
        ) as response:
            if not response.ok:
                code = _error_code(response)
                response.failure(f"{response.status_code} {code}")
                return None
            answer = response.json()
            if call.name == DECIDE and answer.get("fallback"):
                # Counted apart from the decisions served from the live profile.
                response.request_meta["name"] = DECIDE_FALLBACK
                response.failure("fallback: true (store slow or down, or budget exceeded)")
            else:
                response.success()
            return answer


def _error_code(response: Any) -> str:
    try:
        return str(response.json().get("error", ""))
    except ValueError:
        return ""


class ShopVisitor(NbaUser):
    weight = 1
    wait_time = between(_env_float("NBA_LOAD_WAIT_MIN_S", 1), _env_float("NBA_LOAD_WAIT_MAX_S", 3))

    def on_start(self) -> None:
        self.visitor = Visitor.create(SETTINGS, random.Random(), CUSTOMERS, PRODUCTS)

    @task
    def step(self) -> None:
        for call in self.visitor.next_calls():
            answer = self.send(call)
            if answer is None:
                return
            self.visitor.observe(call, answer)


class PlatformBatches(NbaUser):
    fixed_count = int(_env_float("NBA_LOAD_PLATFORM_USERS", 1))
    abstract = fixed_count == 0  # Locust takes a fixed_count of 0 as "weighted", so 0 turns it off
    wait_time = constant_pacing(_env_float("NBA_LOAD_BATCH_EVERY_S", 10))

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def batch(self) -> None:
        self.send(platform_batch(SETTINGS, self.rng, CUSTOMERS))

"""Every body the load test builds (load_tests/traffic.py) is accepted by the real app with the shipped
catalogue, sent with the key of the scope the locustfile would use."""

from __future__ import annotations

import random
from collections import Counter

from app.settings import Scope
from load_tests.traffic import (
    DECIDE,
    EVENTS,
    EVENTS_BATCH,
    IDENTITIES,
    OUTCOMES,
    Settings,
    Visitor,
    Zipf,
    platform_batch,
)
from tests.conftest import AppFactory

KEYS = {"k-web": Scope.WEB, "k-server": Scope.SERVER}
BEARER = {"web": {"Authorization": "Bearer k-web"}, "server": {"Authorization": "Bearer k-server"}}


async def test_every_scenario_body_is_accepted(make_client: AppFactory) -> None:
    settings = Settings(customers=500, products=50, identities=True, batch_min=100, batch_max=200)
    customers, products = Zipf(settings.customers, settings.zipf_s), Zipf(settings.products, settings.zipf_s)
    rng = random.Random(11)
    visitors = [Visitor.create(settings, rng, customers, products) for _ in range(5)]
    sent: Counter[str] = Counter()
    async with make_client(api_keys=KEYS, watch=False) as client:
        for step in range(120):
            for call in visitors[step % len(visitors)].next_calls():
                r = await client.post(call.path, json=call.body, headers=BEARER[call.scope])
                assert r.is_success, (call, r.status_code, r.text)
                assert not r.json().get("fallback"), r.text
                assert not r.json().get("errors"), r.text  # outcomes: every item taken
                visitors[step % len(visitors)].observe(call, r.json())
                sent[call.name if call.name != EVENTS else call.body["type"]] += 1
        for _ in range(2):
            call = platform_batch(settings, rng, customers)
            r = await client.post(call.path, json=call.body, headers=BEARER[call.scope])
            assert r.status_code == 202, r.text
            assert r.json()["accepted"] == len(call.body["events"])
            sent[EVENTS_BATCH] += 1
    assert set(sent) >= {DECIDE, OUTCOMES, IDENTITIES, EVENTS_BATCH, "add_to_cart", "purchase"}, sent
    assert {"login", "signup"} & set(sent), sent

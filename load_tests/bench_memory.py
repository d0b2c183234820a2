"""Redis memory per customer profile, measured: ``python -m load_tests.bench_memory [--profiles N]``.

Starts a throwaway redis-server (``feature_store.embedded.temporary()``: no persistence, which does not
change what the data takes in memory), and through the real store (``ProfileStore.ingest``, the code
``POST /v1/events`` runs) creates ``--profiles`` customer profiles (default 1,000,000), each with one
visit's events within the last 24 hours, 30 s apart, each with an event id as a web SDK sends:

- three page views and a product view, for every profile;
- an ``add_to_cart`` for 30% of them, followed by a ``purchase`` (order id, revenue) for a third of those
  (10% of all).

Batches of ``--batch`` profiles' events go in one ``ingest`` call each, ``--in-flight`` calls at a time.
Decisions are not recorded (their holdout fields and contacts add to a profile only where decisions
are made; the decision records themselves expire after a week and the log is capped).

It reports ``INFO memory``'s ``used_memory`` before and after, the difference per profile and scaled to
1 million, the keys per profile, and a breakdown by key kind (``MEMORY USAGE`` of every key of a sample
of profiles; the rest of the difference is Redis's own bookkeeping per key: the keyspace and expiry
tables). One JSON object on stdout; ``load_tests/benchmark.py --memory-profiles N`` includes it in
docs/performance.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Sequence
from typing import Any

import redis

from feature_store import Event, ProfileStore
from feature_store.embedded import temporary
from feature_store.keys import customer

DAY_MS = 86_400_000
SAMPLE = 1000


def customer_id(n: int) -> str:
    return f"cust-{n:08d}"


def visit(n: int, rng: random.Random, now_ms: int) -> list[Event]:
    """One profile's events: one visit within the last 24 hours, 30 s apart."""
    cid, start = customer_id(n), now_ms - rng.randrange(DAY_MS)
    item = f"sku-{rng.randrange(5000)}"
    steps: list[tuple[str, dict[str, Any]]] = [
        ("page_view", {"page": "/"}),
        ("page_view", {"page": "/c/shoes"}),
        ("page_view", {"page": f"/p/{item}"}),
        ("product_view", {"item_id": item, "page": f"/p/{item}"}),
    ]
    draw = rng.random()
    if draw < 0.3:
        steps.append(("add_to_cart", {"item_id": item, "price": 49.9, "quantity": 1}))
    if draw < 0.1:
        steps.append(("purchase", {"order_id": f"o-{n}", "revenue": 49.9}))
    return [
        Event(
            kind, start + k * 30_000, customer_id=cid, event_id=f"{rng.getrandbits(128):032x}", properties=p
        )
        for k, (kind, p) in enumerate(steps)
    ]


async def fill(url: str, profiles: int, *, batch: int, in_flight: int, seed: int) -> int:
    """Create the profiles; returns the number of events applied."""
    rng = random.Random(seed)
    store = ProfileStore.connect(url, timeout_s=60.0, max_connections=in_flight + 1)
    now_ms = store.now_ms()
    applied = 0
    pending: set[asyncio.Task[Any]] = set()

    def collect(finished: set[asyncio.Task[Any]]) -> None:
        nonlocal applied
        applied += sum(task.result().accepted for task in finished)

    try:
        await store.load_scripts()
        for start in range(0, profiles, batch):
            events = [e for n in range(start, min(start + batch, profiles)) for e in visit(n, rng, now_ms)]
            if len(pending) >= in_flight:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                collect(finished)
            pending.add(asyncio.create_task(store.ingest(events)))
        if pending:
            finished, _ = await asyncio.wait(pending)
            collect(finished)
    finally:
        await store.aclose()
    return applied


def breakdown(client: redis.Redis, profiles: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per key kind (the key's last part: p, w, cart, r, d, ...): the mean ``MEMORY USAGE`` per profile
    over a sample of profiles, the share of profiles that have such a key, and Redis's encodings of it
    (a small hash or sorted set is one compact listpack; a member over 64 bytes makes a sorted set a
    skiplist and a hash table, several times larger)."""
    rng = random.Random(seed + 1)
    sample = rng.sample(range(profiles), min(SAMPLE, profiles))
    sizes: dict[str, list[int]] = {}
    encodings: dict[str, set[str]] = {}
    pipe = client.pipeline(transaction=False)
    names: list[str] = []
    for n in sample:
        keys = customer(customer_id(n))
        for key in [*keys.data_keys(), keys.alias]:
            names.append(key.rsplit(":", 1)[1])
            pipe.memory_usage(key, samples=0)
            pipe.object("encoding", key)
    replies = pipe.execute()
    for name, size, encoding in zip(names, replies[::2], replies[1::2], strict=True):
        sizes.setdefault(name, []).append(int(size or 0))
        if encoding is not None:
            encodings.setdefault(name, set()).add(
                encoding.decode() if isinstance(encoding, bytes) else encoding
            )
    return {
        name: {
            "bytes_per_profile": round(sum(values) / len(sample), 1),
            "share_with_key": round(sum(1 for v in values if v) / len(sample), 3),
            "encodings": sorted(encodings.get(name, ())),
        }
        for name, values in sizes.items()
    }


def used_memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"])


def measure(
    profiles: int = 1_000_000, *, batch: int = 1000, in_flight: int = 4, seed: int = 0
) -> dict[str, Any]:
    """Fill a fresh Redis with ``profiles`` profiles and report what they take (see the module docstring)."""
    server = temporary().start()
    try:
        with redis.Redis.from_url(server.url) as client:
            before = used_memory(client)
            started = time.monotonic()
            events = asyncio.run(fill(server.url, profiles, batch=batch, in_flight=in_flight, seed=seed))
            fill_s = time.monotonic() - started
            after = used_memory(client)
            keys = int(client.dbsize())
            kinds = breakdown(client, profiles, seed)
            version = str(client.info("server")["redis_version"])
    finally:
        server.stop()
    per_profile = (after - before) / profiles
    return {
        "profiles": profiles,
        "events": events,
        "events_per_profile": round(events / profiles, 2),
        "profile": "one visit in the last 24 h, 30 s apart, each event with an id: 3 page views and a "
        "product view; an add_to_cart for 30%; a purchase for 10%. No decisions recorded.",
        "redis": version,
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_profile": round(per_profile, 1),
        "per_million_profiles_mb": round(per_profile * 1_000_000 / 2**20, 1),
        "keys_per_profile": round(keys / profiles, 3),
        "by_key_kind": kinds,
        "bookkeeping_per_profile": round(
            per_profile - sum(k["bytes_per_profile"] for k in kinds.values()), 1
        ),
        "fill_s": round(fill_s, 1),
        "events_per_s_while_filling": round(events / fill_s),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000, help="profiles per ingest call")
    parser.add_argument("--in-flight", type=int, default=4, help="ingest calls at a time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    figures = measure(args.profiles, batch=args.batch, in_flight=args.in_flight, seed=args.seed)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

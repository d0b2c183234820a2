"""What the service needs of a Redis's configuration, read from the Redis itself.

The embedded Redis sets all of it (embedded.py). An external one (``NBA_REDIS_URL``) is the operator's,
and a wrong setting there costs data without an error anywhere: an eviction policy drops parts of
profiles as memory fills (every profile key has an expiry, so even the ``volatile-*`` policies may take
them), and without the append-only file a restart loses what was written since the last snapshot.
So the service reads these settings when it starts and says what is wrong and what to set
(docs/operations.md, "Using an external Redis"), and again at every scrape of ``/metrics``
(``nba_redis_config_problems``): a Redis reconfigured, replaced or failed over later is seen too.

A Redis that refuses ``CONFIG GET`` (a managed service that renames it, a user without ``+config``) is
reported as unchecked, not as wrong: the service cannot tell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from redis.exceptions import ResponseError

from feature_store.embedded import COMPACT_VALUE_BYTES, COMPACT_VALUES

_COMPACT: Final = tuple(name for spellings in COMPACT_VALUES for name in spellings)
_PATTERNS: Final = ("maxmemory-policy", "appendonly", "*-max-*-value")  # one pattern a CONFIG GET (Redis 6)


@dataclass(frozen=True, slots=True)
class Finding:
    """One setting that is not what the service needs. ``loses_data``: data already accepted may be lost
    (an error in the log); else it costs memory (a warning). ``value`` is None when it could not be read."""

    setting: str
    value: str | None
    want: str
    why: str
    loses_data: bool


async def read(redis: Any) -> dict[str, str]:
    """The settings :func:`judge` reads, from the Redis behind ``redis`` (a ``redis.asyncio.Redis``), in
    one round trip. Raises ``ResponseError`` when Redis refuses ``CONFIG GET``."""
    async with redis.pipeline(transaction=False) as pipe:
        for pattern in _PATTERNS:
            pipe.config_get(pattern)
        replies: list[dict[str, str]] = await pipe.execute()
    return {name: value for reply in replies for name, value in reply.items()}


async def check(redis: Any) -> list[Finding]:
    """The settings of the Redis behind ``redis`` (a ``redis.asyncio.Redis``) that are not what the
    service needs; empty when all are. A Redis that refuses to say is one finding, ``value`` None."""
    try:
        found = await read(redis)
    except ResponseError as exc:
        return [
            Finding(
                "CONFIG GET",
                None,
                "maxmemory-policy noeviction, appendonly yes",
                f"the configuration could not be read ({exc}); check those two by hand",
                loses_data=True,
            )
        ]
    return judge(found)


def judge(config: dict[str, str]) -> list[Finding]:
    """The findings for ``config``, Redis's settings by name as ``CONFIG GET`` gives them."""
    out = []
    policy = config.get("maxmemory-policy")
    if policy is not None and policy != "noeviction":
        out.append(
            Finding(
                "maxmemory-policy",
                policy,
                "noeviction",
                "at its memory limit Redis would delete keys, and every profile key has an expiry, so any "
                "policy may drop parts of profiles unseen; with noeviction a full Redis refuses writes "
                "and the service answers 503, which senders retry",
                loses_data=True,
            )
        )
    appendonly = config.get("appendonly")
    if appendonly is not None and appendonly != "yes":
        out.append(
            Finding(
                "appendonly",
                appendonly,
                "yes (appendfsync everysec or always)",
                "a 2xx means the data is in Redis; without the append-only file a restart loses what was "
                "written since the last snapshot, or everything without snapshots",
                loses_data=True,
            )
        )
    for name in _COMPACT:
        value = config.get(name)
        if value is not None and value.isdigit() and int(value) < COMPACT_VALUE_BYTES:
            out.append(
                Finding(
                    name,
                    value,
                    str(COMPACT_VALUE_BYTES),
                    "decision summaries and recent events longer than this are kept as full hash tables "
                    "and skip lists: about 1.8 times the memory per profile, and longer pauses at forks",
                    loses_data=False,
                )
            )
    return out

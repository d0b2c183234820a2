"""What the store's Redis calls share: the Lua scripts they run, and Redis's failures as the store's."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Final

from redis import exceptions as rx

from feature_store.errors import StoreUnavailable

_UNAVAILABLE_REPLIES: Final = ("OOM", "MISCONF", "READONLY", "LOADING", "MASTERDOWN", "CLUSTERDOWN")


def lua(name: str) -> str:
    """The source of ``feature_store/lua/<name>``."""
    return resources.files("feature_store").joinpath("lua", name).read_text()


def sha1(source: str) -> str:
    """The name ``EVALSHA`` calls a script by, which Redis gives it when it loads it."""
    return hashlib.sha1(source.encode()).hexdigest()


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Turn Redis's failures of reach into :class:`StoreUnavailable`; let every other error through."""
    try:
        yield
    except (rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError, TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"the profile store is unreachable: {exc}") from exc
    except rx.ResponseError as exc:
        if str(exc).startswith(_UNAVAILABLE_REPLIES):
            raise StoreUnavailable(f"the profile store refused the write: {exc}") from exc
        raise

"""What the store's Redis calls share: the Lua scripts they run, and Redis's failures as the store's."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any, Final

from redis import exceptions as rx

from feature_store.errors import StoreUnavailable

_UNREACHABLE: Final = (rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError, TimeoutError, OSError)
_UNAVAILABLE_REPLIES: Final = ("OOM", "MISCONF", "READONLY", "LOADING", "MASTERDOWN", "CLUSTERDOWN")


def lua(name: str) -> str:
    """The source of ``feature_store/lua/<name>``."""
    return resources.files("feature_store").joinpath("lua", name).read_text()


def sha1(source: str) -> str:
    """The name ``EVALSHA`` calls a script by, which Redis gives it when it loads it."""
    return hashlib.sha1(source.encode()).hexdigest()


class _Translated:
    """Turns Redis's failures of reach into :class:`StoreUnavailable`, and lets every other error
    through: a class, not ``asynccontextmanager``, whose generator and its wrappers cost a decision 2%
    of its time on the way in and out of its two store calls."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is None:
            return
        if isinstance(exc, _UNREACHABLE):
            raise StoreUnavailable(f"the profile store is unreachable: {exc}") from exc
        if isinstance(exc, rx.ResponseError) and _refused(str(exc)):
            raise StoreUnavailable(f"the profile store refused the write: {exc}") from exc


def _refused(message: str) -> bool:
    """Whether Redis refused a write for its state (out of memory, a replica, loading...), not for the
    data: by the error's code, which Redis 6 puts after the script's name when a script's command got it
    (``Error running script (call to f_...): @user_script:70: @user_script: 70: -OOM command not
    allowed...``)."""
    if message.startswith(_UNAVAILABLE_REPLIES):
        return True
    _, wrapped, code = message.rpartition(": -")
    return bool(wrapped) and code.startswith(_UNAVAILABLE_REPLIES)


_TRANSLATED: Final = _Translated()


def translated() -> _Translated:
    """``async with translated():`` turns Redis's failures of reach (and its refusals to write) into
    :class:`StoreUnavailable`; every other error goes through."""
    return _TRANSLATED

"""API keys and scopes: ``Authorization: Bearer <key>``; ``web`` < ``server`` < ``admin``.

With no key configured the service is open, and it only starts on a loopback address (settings.py).
Presented keys are compared by their SHA-256, so the lookup's timing says nothing about the keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import Request

from app.errors import Forbidden, Unauthorized
from app.settings import Scope


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    def __init__(self, keys: Mapping[str, Scope]) -> None:
        self._scopes = {_digest(key): scope for key, scope in keys.items()}

    @property
    def open(self) -> bool:
        return not self._scopes

    def allows(self, authorization: str | None, needed: Scope) -> bool:
        """Whether :meth:`check` would let the call through."""
        try:
            self.check(authorization, needed)
        except (Unauthorized, Forbidden):
            return False
        return True

    def check(self, authorization: str | None, needed: Scope) -> None:
        if self.open:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
        scope = self._scopes.get(_digest(key.strip()))
        if scope is None:
            raise Unauthorized("the API key is not known; check NBA_API_KEYS on the service")
        if scope.rank < needed.rank:
            raise Forbidden(f"this call needs a key with the '{needed}' scope; this key has '{scope}'")


def require(scope: Scope) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A dependency that lets the call through only with a key of ``scope`` or above."""

    async def check(request: Request) -> None:
        request.state.services.keys.check(request.headers.get("authorization"), scope)

    return check

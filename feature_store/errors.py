"""Errors raised by the feature store. Nothing above this package sees a ``redis`` exception.

::

    StoreError                   base of everything below
    ├── StoreUnavailable         Redis cannot be reached, timed out, is loading or refuses writes;
    │                            nothing was acknowledged, the caller may retry (HTTP 503)
    ├── IdentityConflict         an anonymous id is already linked to another customer (HTTP 409)
    └── LockLost                 the learner's lock passed to another learner: its publish was refused
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of the feature store's errors."""


class StoreUnavailable(StoreError):
    """The store could not be reached or refused the write; nothing was applied that was acknowledged."""


class IdentityConflict(StoreError):
    """The anonymous id is already linked to a different customer."""

    def __init__(self, anonymous_id: str, linked_to: str) -> None:
        super().__init__(f"anonymous id {anonymous_id!r} is already linked to another customer")
        self.anonymous_id = anonymous_id
        self.linked_to = linked_to


class LockLost(StoreError):
    """The learner's lock is no longer this learner's (it expired, and another learner may hold it): what
    this learner would have published was not."""

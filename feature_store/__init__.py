"""Live customer profiles in Redis: events in, profiles out (see ``store.py``; key shapes in ``keys.py``)."""

from feature_store.errors import IdentityConflict, LockLost, StoreError, StoreUnavailable
from feature_store.events import Event
from feature_store.keys import IdKind
from feature_store.profile import Profile, StageRules
from feature_store.store import Ingested, ProfileStore, StoreConfig

__all__ = [
    "Event",
    "IdKind",
    "IdentityConflict",
    "Ingested",
    "LockLost",
    "Profile",
    "ProfileStore",
    "StageRules",
    "StoreConfig",
    "StoreError",
    "StoreUnavailable",
]

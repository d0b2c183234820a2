"""Every Redis key this service writes, in one place.

Per-customer keys carry a hash tag, so all of one customer's keys live in one Redis Cluster slot and
one Lua script can touch them together (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags):

==========================  ======  =====================================================  ==========
key                         type    holds                                                  expires
==========================  ======  =====================================================  ==========
``nba:{c:ID}:p``            hash    scalars: counters, last-seen per type, cart and         inactivity
                                    purchase facts, consent, attributes (see profile.py)
``nba:{c:ID}:w``            hash    windowed counters, one field per (bucket, type); the    inactivity
                                    windows' buckets nest (profile.py)
``nba:{c:ID}:cart``         hash    item id -> "quantity|price|changed_ms"                  inactivity
``nba:{c:ID}:r``            zset    the last 20 events, scored by event time (ms)          inactivity
``nba:{c:ID}:d``            zset    event ids (and order ids) seen, scored by arrival (ms)  inactivity;
                                                                                            members
                                                                                            pruned after
                                                                                            the dedupe
                                                                                            window
``nba:{c:ID}:s``            set     anonymous ids merged into this customer                 inactivity
``nba:{c:ID}:pu``           zset    purchases: "time|revenue|event", scored by time (ms),   inactivity;
                                    for attributing them to decisions                      members
                                                                                            pruned after
                                                                                            31 days
``nba:{c:ID}:k``            zset    contacts: "decision|action|channel|kind" (served,       inactivity;
                                    dismiss, conversion), scored by time (ms)               members
                                                                                            pruned after
                                                                                            90 days
``nba:{a:ID}:alias``        string  the customer id an anonymous id was linked to          inactivity
==========================  ======  =====================================================  ==========

Global keys (one each, or one per decision):

==========================  ======  =====================================================  ==========
``nba:{l}:decisions``       stream  the decision log: what each decision saw and chose      capped at
                                                                                            NBA_DECISION
                                                                                            _LOG_MAX
``nba:{l}:outcomes``        stream  outcomes reported for decisions                         same cap
``nba:{l}:rewards``         stream  each served (and counterfactual) action's reward, once  same cap
                                                                                            its window
                                                                                            closed
``nba:{l}:pending``         zset    "decision|action" awaiting its reward, scored by the    when learned
                                    close of its attribution window (ms)
``nba:{l}:model``           string  the published model snapshot (JSON)                    never
``nba:{l}:model:version``   string  its version, polled by every worker                     never
``nba:{l}:lock``            string  held by the one running learner                         seconds
``nba:{l}:read``            hash    stream -> the id of the last entry learned and          never
                                    published (models/learner.py)
``nba:dec:DECISION``        hash    who a decision was for and what it served, and the      NBA_DECISION
                                    outcomes reported (for idempotency)                     _TTL_HOURS
``nba:catalogue:gen``       string  bumped by a reload, so every worker reloads             never
==========================  ======  =====================================================  ==========

The outbox of webhook deliveries (outbox.py, docs/deliveries.md). Its keys share the hash tag ``{o}``,
so that one script can move a message between them; the scripts that claim and replay derive message
and per-destination keys from these prefixes, and the tag keeps them in the declared keys' slot:

==========================  ======  =====================================================  ==========
``nba:{o}:m:ID``            hash    one message: destination, body, customer, decision,     none while
                                    action, channel, attempts, state, lease, last error     waiting or
                                    and status, times (ms)                                  dead; 7 days
                                                                                            after its
                                                                                            delivery
                                                                                            (body
                                                                                            dropped)
``nba:{o}:due:DEST``        zset    messages waiting for DEST, scored by when they are due  never
                                    (ms)
``nba:{o}:leased:DEST``     zset    messages a worker is delivering to DEST, scored by when never
                                    its lease expires (ms); an expired one is claimed again
``nba:{o}:dead``            zset    dead letters, all scored 0, as "<13-digit ms>|ID", so   never
                                    that they list in the order they died and page by
                                    member
``nba:{o}:destinations``    set     every destination ever enqueued to, so that messages    never
                                    for one no longer in the catalogue are found
``nba:{o}:c:REF``           set     ids of a customer's messages not yet delivered, so      on erasure
                                    that erasing the customer erases them
==========================  ======  =====================================================  ==========

Timed triggers (triggers.py, docs/triggers.md), under the hash tag ``{t}``:

==========================  ======  =====================================================  ==========
``nba:{t}:due``             zset    "TRIGGER|c:ID": one pending instance per trigger and    when fired
                                    customer, scored by when it is due (ms)                 or
                                                                                            cancelled
``nba:{t}:firing``          zset    "TRIGGER|c:ID|DUE": instances a worker is firing,       when fired
                                    scored by when its lease expires (ms); an expired one
                                    is claimed again
``nba:{t}:cancelled``       zset    "TRIGGER|c:ID" scored by the time of its latest cancel  after the
                                    event, so that an older start cannot bring it back      dedupe
                                                                                            window
==========================  ======  =====================================================  ==========

Operations dashboard data (monitoring.py, docs/metrics.md), under the hash tag ``{d}``:

==========================  ======  =====================================================  ==========
``nba:{d}:samples``         list    one JSON sample of the service's cumulative metrics    capped at
                                    every 10 s, oldest first                               120 entries
``nba:{d}:slot:N``          string  taken (SET NX) by the one worker that writes the       60 s
                                    sample of 10-s slot N (unix seconds // 10)
==========================  ======  =====================================================  ==========

``{c:ID}`` is a known customer (``customer_id``), ``{a:ID}`` an anonymous visitor (``anonymous_id``):
the two id spaces never collide. "Inactivity" is ``NBA_PROFILE_TTL_DAYS`` (400 days by default),
renewed by writes: by an applied event, for every key of the profile at most once a minute, and for the
keys it creates at once (apply.lua).

Ids are free text, so ``{``, ``}`` and ``%`` are percent-encoded before they go into a key: an id can
neither break the hash tag nor make two customers' keys meet.

"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

PREFIX: Final = "nba"


class IdKind(StrEnum):
    """Which id space a profile id belongs to."""

    CUSTOMER = "c"
    ANONYMOUS = "a"


def _escape(raw_id: str) -> str:
    return raw_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@dataclass(frozen=True, slots=True)
class ProfileKeys:
    """The keys of one profile, in the order the Lua scripts expect them."""

    kind: IdKind
    id: str

    @property
    def tag(self) -> str:
        return f"{PREFIX}:{{{self.kind}:{_escape(self.id)}}}"  # a StrEnum formats as its value

    @property
    def alias(self) -> str:
        return f"{self.tag}:alias"

    @property
    def profile(self) -> str:
        return f"{self.tag}:p"

    @property
    def windows(self) -> str:
        return f"{self.tag}:w"

    @property
    def cart(self) -> str:
        return f"{self.tag}:cart"

    @property
    def recent(self) -> str:
        return f"{self.tag}:r"

    @property
    def dedupe(self) -> str:
        return f"{self.tag}:d"

    @property
    def aliases(self) -> str:
        return f"{self.tag}:s"

    @property
    def contacts(self) -> str:
        return f"{self.tag}:k"

    @property
    def purchases(self) -> str:
        return f"{self.tag}:pu"

    @property
    def ref(self) -> str:
        """The profile as one string, ``c:<id>`` or ``a:<id>`` (the form logs and decisions use)."""
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, ref: str) -> ProfileKeys:
        kind, _, profile_id = ref.partition(":")
        return cls(IdKind(kind), profile_id)

    def script_keys(self) -> list[str]:
        """KEYS for one customer in ``apply.lua``: the data keys, then the alias pointer."""
        tag = self.tag  # built once: this runs for every profile of every batch of events
        return [tag + suffix for suffix in _SCRIPT_SUFFIXES]

    def data_keys(self) -> list[str]:
        """Everything that holds this profile's data (not the alias pointer)."""
        return self.script_keys()[:-1]


# The suffixes of the properties above, in script_keys() order (tests/unit/test_keys.py holds them equal).
_SCRIPT_SUFFIXES: Final = (":p", ":w", ":cart", ":r", ":d", ":s", ":k", ":pu", ":alias")


KEYS_PER_PROFILE: Final = len(_SCRIPT_SUFFIXES)
# The learner's keys share the hash tag {l}, so that it can move them together in one transaction.
DECISION_LOG: Final = f"{PREFIX}:{{l}}:decisions"
OUTCOME_LOG: Final = f"{PREFIX}:{{l}}:outcomes"
PENDING: Final = f"{PREFIX}:{{l}}:pending"
MODEL: Final = f"{PREFIX}:{{l}}:model"
MODEL_VERSION: Final = f"{PREFIX}:{{l}}:model:version"
REWARDS: Final = f"{PREFIX}:{{l}}:rewards"
LEARNER_LOCK: Final = f"{PREFIX}:{{l}}:lock"
LEARNER_READ: Final = f"{PREFIX}:{{l}}:read"
CATALOGUE_GENERATION: Final = f"{PREFIX}:catalogue:gen"


def decision(decision_id: str) -> str:
    return f"{PREFIX}:dec:{decision_id}"


def customer(customer_id: str) -> ProfileKeys:
    return ProfileKeys(IdKind.CUSTOMER, customer_id)


def anonymous(anonymous_id: str) -> ProfileKeys:
    return ProfileKeys(IdKind.ANONYMOUS, anonymous_id)


# The outbox's keys share the hash tag {o} (see the table above). Message ids and destination names are
# checked by outbox.py (letters, digits and ``._:-`` only), so they cannot break the tag.
OUTBOX_MESSAGE_PREFIX: Final = f"{PREFIX}:{{o}}:m:"
OUTBOX_DUE_PREFIX: Final = f"{PREFIX}:{{o}}:due:"
OUTBOX_CUSTOMER_PREFIX: Final = f"{PREFIX}:{{o}}:c:"
OUTBOX_LEASED_PREFIX: Final = f"{PREFIX}:{{o}}:leased:"
OUTBOX_DEAD: Final = f"{PREFIX}:{{o}}:dead"
OUTBOX_DESTINATIONS: Final = f"{PREFIX}:{{o}}:destinations"


def outbox_message(message_id: str) -> str:
    return f"{OUTBOX_MESSAGE_PREFIX}{message_id}"


def outbox_due(destination: str) -> str:
    return f"{OUTBOX_DUE_PREFIX}{destination}"


def outbox_leased(destination: str) -> str:
    return f"{OUTBOX_LEASED_PREFIX}{destination}"


def outbox_customer(ref: str) -> str:
    """The ids of a customer's messages not yet delivered, for erasing them (``ref``: ``c:<id>``).
    outbox.lua builds it too, from the prefix (``discard``)."""
    return f"{OUTBOX_CUSTOMER_PREFIX}{_escape(ref)}"


# Timed triggers share the hash tag {t}, so that one script claims from one into the other.
TRIGGERS_DUE: Final = f"{PREFIX}:{{t}}:due"
TRIGGERS_FIRING: Final = f"{PREFIX}:{{t}}:firing"
TRIGGERS_CANCELLED: Final = f"{PREFIX}:{{t}}:cancelled"

# The operations dashboard's samples (monitoring.py): the capped list, and one claim per 10-s slot so that
# of several workers and replicas only one writes each sample.
DASHBOARD_SAMPLES: Final = f"{PREFIX}:{{d}}:samples"
DASHBOARD_SLOT_PREFIX: Final = f"{PREFIX}:{{d}}:slot:"


def dashboard_slot(slot: int) -> str:
    return f"{DASHBOARD_SLOT_PREFIX}{slot}"

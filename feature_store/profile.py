"""The customer profile: how it is stored, read, staged and merged. Pure code, no I/O.

Stored form (:class:`RawProfile`) is what Redis holds (see ``keys.py``); :func:`decode` turns it into
the :class:`Profile` the API shows and the policies read.

Windowed counts
---------------
Each window is a ring of buckets: ``30m`` in 1-minute buckets, ``24h`` in 1-hour buckets, ``7d`` in
6-hour buckets, ``30d`` in 1-day buckets. A window's count is the sum of the current bucket and the
``buckets`` before it, so it covers the window and at most one bucket more (the 30-minute count covers
the last 30 to 31 minutes). Events land in the bucket of their own event time, so late events count
where they belong, and events older than a window never enter it.

The buckets nest: an event is counted once, in one bucket, and a bucket counts in every window whose
bucket containing it is within that window. An event lands in the finest window it is within (a
minute bucket, unless it is late), and a bucket that has left its own window is folded into the
bucket of the next window that still holds it (``apply.lua``, at most once a minute per profile), or
dropped when none does. The counts are the same as if every window had its own buckets, for a quarter
of the writes per event (docs/performance.md).

Profiles written before the buckets nested hold each event in a bucket of every window, under the
windows' ``legacy_code``: such a bucket counts in its own window only, and is dropped once it leaves
it, so none is left after 31 days.

Journey stage
-------------
The first rule that holds, in this order (thresholds in :class:`StageRules`):

1. ``lapsed``: has ordered, and the last order is more than ``lapsed_after_days`` (90) old;
2. ``loyalty``: ``loyal_orders`` (3) orders or more;
3. ``retention``: at least one order;
4. ``purchase``: something in the cart, or a checkout started within ``checkout_days`` (1);
5. ``consideration``: has ever viewed a product, searched, read the FAQ, changed a cart, started a
   checkout, signed up or clicked an email;
6. ``awareness``: anything else (page views alone).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from feature_store.events import PropertyValue


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    code: str  # its buckets' fields begin with it ("M29345678:page_view")
    bucket_ms: int
    buckets: int
    legacy_code: str  # the same, in the layout written before the buckets nested (see below)


# Finest first; each bucket length divides the next, so that a bucket lies within one bucket of every
# coarser window.
WINDOWS: Final = (
    Window("30m", "M", 60_000, 30, "m"),
    Window("24h", "H", 3_600_000, 24, "h"),
    Window("7d", "Q", 21_600_000, 28, "q"),
    Window("30d", "D", 86_400_000, 30, "d"),
)
RECENT_EVENTS: Final = 20

STAGES: Final = ("awareness", "consideration", "purchase", "retention", "loyalty", "lapsed")
_CONSIDERATION_TYPES: Final = (
    "product_view", "search", "faq_view", "add_to_cart", "remove_from_cart", "checkout_started",
    "signup", "email_click",
)  # fmt: skip
_CONSIDERATION_FIELDS: Final = tuple(f"n:{t}" for t in _CONSIDERATION_TYPES)  # their counters' fields
DAY_MS: Final = 86_400_000


@dataclass(frozen=True, slots=True)
class StageRules:
    loyal_orders: int = 3
    lapsed_after_days: int = 90
    checkout_days: int = 1


@dataclass(frozen=True, slots=True)
class RawProfile:
    """A profile as Redis holds it: the hashes as dicts, sorted sets as (member, score) pairs."""

    profile: Mapping[str, str] = field(default_factory=dict)
    windows: Mapping[str, str] = field(default_factory=dict)
    cart: Mapping[str, str] = field(default_factory=dict)
    recent: tuple[tuple[str, float], ...] = ()
    dedupe: tuple[tuple[str, float], ...] = ()
    aliases: frozenset[str] = frozenset()
    contacts: tuple[tuple[str, float], ...] = ()
    purchases: tuple[tuple[str, float], ...] = ()
    # The recent events as a decision's read returns them (apply.lua): one JSON array, newest first, in
    # place of ``recent``. Decoded by one parse, with no scores to turn into numbers and sort.
    recent_json: str | None = None

    @property
    def exists(self) -> bool:
        return bool(self.profile)


@dataclass(frozen=True, slots=True)
class Counts:
    total: int
    last_at_ms: int | None
    windows: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class CartLine:
    item_id: str
    quantity: int
    price: float | None
    changed_at_ms: int


@dataclass(frozen=True, slots=True)
class Cart:
    lines: tuple[CartLine, ...]
    changed_at_ms: int | None

    @property
    def quantity(self) -> int:
        return sum(line.quantity for line in self.lines)

    @property
    def value(self) -> float:
        return round(sum((line.quantity * (line.price or 0.0) for line in self.lines), 0.0), 2)


@dataclass(frozen=True, slots=True)
class RecentEvent:
    type: str
    time_ms: int
    properties: Mapping[str, PropertyValue]


@dataclass(frozen=True, slots=True)
class Consent:
    granted: bool
    changed_at_ms: int


@dataclass(frozen=True, slots=True)
class ContactRecord:
    """An action served to the customer, or dismissed or converted on: what contact policies count."""

    time_ms: int
    decision_id: str
    action_id: str
    channel: str
    kind: str  # "served", "dismiss" or "conversion"

    def member(self) -> str:
        return f"{self.decision_id}|{self.action_id}|{self.channel}|{self.kind}"

    @classmethod
    def parse(cls, member: str, score: float) -> ContactRecord:
        decision_id, action_id, channel, kind = member.rsplit("|", 3)
        return cls(int(score), decision_id, action_id, channel, kind)


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    kind: str  # "customer" or "anonymous"
    anonymous_ids: tuple[str, ...]
    stage: str
    first_seen_ms: int | None
    last_seen_ms: int | None
    orders: int
    revenue: float
    first_purchase_ms: int | None
    last_purchase_ms: int | None
    counts: Mapping[str, Counts]
    cart: Cart
    recent: tuple[RecentEvent, ...]
    consent: Mapping[str, Consent]
    attributes: Mapping[str, Any]
    group: str | None = None  # holdout group, once assigned
    held_out: Mapping[str, bool] = field(default_factory=dict)  # per-action holdouts, once assigned
    contacts: tuple[ContactRecord, ...] = ()


def as_int(value: str | None) -> int | None:
    """A stored time or count (``None`` when the field is missing)."""
    return None if value is None else int(float(value))


def _stamped(value: str) -> tuple[int, str]:
    stamp, _, rest = value.partition("|")
    return int(stamp), rest


def bucket_field(time_ms: int, event_type: str, now_ms: int) -> str | None:
    """The window field an event at ``time_ms`` adds to as of ``now_ms`` (as apply.lua does): the bucket
    of the finest window it is within, ``None`` when it is within none."""
    for w in WINDOWS:
        number = time_ms // w.bucket_ms
        if number >= now_ms // w.bucket_ms - w.buckets:
            return f"{w.code}{number}:{event_type}"
    return None


_WINDOW_NAMES: Final = tuple(w.name for w in WINDOWS)


def window_sums(windows: Mapping[str, str], now_ms: int) -> dict[str, list[int]]:
    """Sum bucketed counters into ``{type: [count per window, in WINDOWS' order]}`` as of ``now_ms``."""
    # Every decision reads a profile's buckets: summed in lists, and each bucket's name parsed once per
    # process (the buckets of a moment are the same for everyone).
    oldest = [now_ms // w.bucket_ms - w.buckets for w in WINDOWS]
    parsed = _BUCKETS
    if len(parsed) > _BUCKETS_KEPT:
        parsed.clear()
    sums: dict[str, list[int]] = {}
    for name, value in windows.items():
        bucket = parsed.get(name)
        if bucket is None:
            bucket = parsed[name] = _bucket(name)
        first, containing, event_type = bucket
        # The first window whose bucket holding this one is within it, and every coarser one, count it.
        for index in range(first, len(containing)):
            if containing[index] >= oldest[index]:
                per_type = sums.get(event_type)
                if per_type is None:
                    per_type = sums[event_type] = [0] * len(WINDOWS)
                count = int(value)
                for counted in range(index, len(containing)):
                    per_type[counted] += count
                break
    return sums


def window_counts(windows: Mapping[str, str], now_ms: int) -> dict[str, dict[str, int]]:
    """Sum bucketed counters into ``{type: {window name: count}}`` as of ``now_ms``."""
    return {
        event_type: dict(zip(_WINDOW_NAMES, per_type, strict=True))
        for event_type, per_type in window_sums(windows, now_ms).items()
    }


# A field's code: its window's index, and whether it is of the nested layout.
_CODES: Final = {w.code: (i, True) for i, w in enumerate(WINDOWS)} | {
    w.legacy_code: (i, False) for i, w in enumerate(WINDOWS)
}


def _bucket(name: str) -> tuple[int, tuple[int, ...], str]:
    """A window field's first window (its index in WINDOWS), the number of the bucket holding it in
    each window from there on (-1 where it does not count), and its event type. A field of no known
    window counts nowhere."""
    head, _, event_type = name.partition(":")
    code = _CODES.get(head[:1])
    if code is None:
        return 0, (), event_type
    index, nested = code
    number = int(head[1:])
    if not nested:  # the legacy layout: in its own window only
        return index, (-1,) * index + (number,), event_type
    start = number * WINDOWS[index].bucket_ms
    return index, tuple(-1 if i < index else start // w.bucket_ms for i, w in enumerate(WINDOWS)), event_type


# Window field names seen, parsed; cleared when it holds more than the buckets of a month of many types.
_BUCKETS: Final[dict[str, tuple[int, tuple[int, ...], str]]] = {}
_BUCKETS_KEPT: Final = 100_000


def stage(p: Mapping[str, str], cart_lines: int, now_ms: int, rules: StageRules = StageRules()) -> str:
    orders = int(p.get("orders", 0))
    last_purchase = as_int(p.get("t:purchase"))
    if orders > 0:
        if last_purchase is not None and now_ms - last_purchase > rules.lapsed_after_days * DAY_MS:
            return "lapsed"
        return "loyalty" if orders >= rules.loyal_orders else "retention"
    checkout = as_int(p.get("t:checkout_started"))
    if cart_lines > 0 or (checkout is not None and now_ms - checkout <= rules.checkout_days * DAY_MS):
        return "purchase"
    if any(name in p for name in _CONSIDERATION_FIELDS):
        return "consideration"
    return "awareness"


def cart_lines(raw: RawProfile) -> list[CartLine]:
    """The cart's lines, oldest change first."""
    lines = []
    for item_id, value in raw.cart.items():
        quantity, price, changed = value.split("|")
        lines.append(CartLine(item_id, int(quantity), float(price) if price else None, int(changed)))
    lines.sort(key=lambda line: (line.changed_at_ms, line.item_id))
    return lines


def recent_events(raw: RawProfile) -> list[dict[str, Any]]:
    """The recent events as stored, newest first: ``{"y": type, "t": time, "p": properties, ...}``."""
    # The members (JSON objects) parsed as one array: a third of the time of one by one.
    newest_first = raw.recent_json
    if newest_first is None:
        newest_first = f"[{','.join(member for member, _ in sorted(raw.recent, key=lambda pair: -pair[1]))}]"
    events: list[dict[str, Any]] = loads(newest_first)
    return events


# Every digit a 0 and everything else a space: a text's runs of digits, found in C.
_DIGITS: Final = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_DIGITS_19: Final = b"0" * 19


def loads(text: str) -> Any:
    """JSON as the json module reads it, by orjson where that reads the same: a profile's 20 recent
    events in about three quarters of the time, the scan included. Not a text with 19 digits in a row,
    which may be an integer beyond 64 bits (json keeps it whole, orjson makes it a float), nor what
    orjson refuses (NaN, a number beyond a double, a lone surrogate)."""
    try:
        data = text.encode()
        if _DIGITS_19 not in data.translate(_DIGITS):
            return orjson.loads(data)
    except (UnicodeEncodeError, orjson.JSONDecodeError):
        pass
    return json.loads(text)


def held_out(p: Mapping[str, str]) -> dict[str, bool]:
    """The per-action holdouts assigned to a profile (its ``h:`` fields): action -> withheld."""
    return {name[2:]: value == "1" for name, value in p.items() if name.startswith("h:")}


def contacts(raw: RawProfile) -> tuple[ContactRecord, ...]:
    return tuple(ContactRecord.parse(member, score) for member, score in raw.contacts)


def granted(value: str) -> bool:
    """A consent field's value (``<time>|1``): whether it was granted."""
    return _stamped(value)[1] == "1"


def attribute(value: str) -> Any:
    """An attribute field's value (``<time>|<JSON>``)."""
    return loads(_stamped(value)[1])


def decode(raw: RawProfile, *, id: str, kind: str, now_ms: int, rules: StageRules = StageRules()) -> Profile:
    """The profile as the API shows it (``features`` reads the stored form for decisions)."""
    p = raw.profile
    windows = window_counts(raw.windows, now_ms)
    empty = {w.name: 0 for w in WINDOWS}
    counts: dict[str, Counts] = {}
    consent: dict[str, Consent] = {}
    attributes: dict[str, Any] = {}
    for name, value in p.items():
        prefix, _, rest = name.partition(":")
        if prefix == "n":
            counts[rest] = Counts(int(value), as_int(p.get(f"t:{rest}")), windows.get(rest, empty))
        elif prefix == "c":
            consent[rest] = Consent(granted(value), _stamped(value)[0])
        elif prefix == "a":
            attributes[rest] = attribute(value)
    lines = cart_lines(raw)
    recent = [RecentEvent(d["y"], int(d["t"]), d.get("p", {})) for d in recent_events(raw)]
    last_seen = max((c.last_at_ms for c in counts.values() if c.last_at_ms is not None), default=None)
    return Profile(
        id=id,
        kind=kind,
        anonymous_ids=tuple(sorted(raw.aliases)),
        stage=stage(p, len(lines), now_ms, rules),
        first_seen_ms=as_int(p.get("first")),
        last_seen_ms=last_seen,
        orders=int(p.get("orders", 0)),
        revenue=round(float(p.get("revenue", 0)), 2),
        first_purchase_ms=as_int(p.get("first_purchase")),
        last_purchase_ms=as_int(p.get("t:purchase")),
        counts=dict(sorted(counts.items())),
        cart=Cart(tuple(lines), as_int(p.get("cart_changed"))),
        recent=tuple(recent),
        consent=dict(sorted(consent.items())),
        attributes=dict(sorted(attributes.items())),
        group=p.get("g"),
        held_out=held_out(p),
        contacts=contacts(raw),
    )


# How each stored profile field combines when an anonymous profile merges into a known one.
_SUM = ("n:", "orders", "revenue")
_MAX = ("t:", "cart_changed", "cart_cleared", "pruned")
_MIN = ("first", "first_purchase")
_LATEST = ("c:", "a:")
_KNOWN_WINS = ("g", "h:")  # holdout assignments: the known customer's, where it has one


def _merge_field(name: str, known: str, anon: str) -> str:
    if name.startswith(_SUM):
        total = float(known) + float(anon)
        return repr(total) if name == "revenue" else str(int(total))
    if name.startswith(_MAX):
        return str(max(int(known), int(anon)))
    if name.startswith(_MIN):
        return str(min(int(known), int(anon)))
    if name.startswith(_LATEST):
        return anon if _stamped(anon)[0] > _stamped(known)[0] else known
    if name.startswith(_KNOWN_WINS):
        return known
    raise ValueError(f"no merge rule for profile field {name!r}")


def _merge_maps(known: Mapping[str, str], anon: Mapping[str, str], combine: Any) -> dict[str, str]:
    out = dict(known)
    for name, value in anon.items():
        out[name] = combine(name, out[name], value) if name in out else value
    return out


def _merge_line(_item: str, known: str, anon: str) -> str:
    kq, kp, kt = known.split("|")
    aq, ap, at = anon.split("|")
    price = ap if (int(at) > int(kt) and ap) or not kp else kp
    return f"{int(kq) + int(aq)}|{price}|{max(int(kt), int(at))}"


def _merge_scored(
    *sets: Iterable[tuple[str, float]], keep: int | None = None
) -> tuple[tuple[str, float], ...]:
    best: dict[str, float] = {}
    for pairs in sets:
        for member, score in pairs:
            best[member] = max(score, best.get(member, score))
    ordered = sorted(best.items(), key=lambda pair: -pair[1])
    return tuple(ordered[:keep] if keep is not None else ordered)


def _unbought(cart: Mapping[str, str], other: RawProfile) -> dict[str, str]:
    """Cart lines not older than the other side's last cart-emptying purchase (that purchase took them)."""
    cleared = as_int(other.profile.get("cart_cleared"))
    if cleared is None:
        return dict(cart)
    return {item: line for item, line in cart.items() if int(line.rsplit("|", 1)[1]) > cleared}


def merge(known: RawProfile, anon: RawProfile) -> RawProfile:
    """Fold an anonymous visitor's profile into a known customer's.

    Counters and windows add, first times take the earlier and last times the later, consent and
    attributes keep the value with the later event time, cart lines carry over (quantities of the same
    item add) unless the other side's later purchase emptied the cart, recent events interleave by time
    and keep the newest 20, seen event ids are united.
    """
    return RawProfile(
        profile=_merge_maps(known.profile, anon.profile, _merge_field),
        windows=_merge_maps(known.windows, anon.windows, lambda _n, a, b: str(int(a) + int(b))),
        cart=_merge_maps(_unbought(known.cart, anon), _unbought(anon.cart, known), _merge_line),
        recent=_merge_scored(known.recent, anon.recent, keep=RECENT_EVENTS),
        dedupe=_merge_scored(known.dedupe, anon.dedupe),
        aliases=known.aliases | anon.aliases,
        contacts=_merge_scored(known.contacts, anon.contacts),
        purchases=_merge_scored(known.purchases, anon.purchases),
    )


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

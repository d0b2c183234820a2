"""Traffic shaped like a shop's, without Locust: the id distribution, the mix of calls, the bodies.

``load_tests/locustfile.py`` only sends what this module builds and feeds the answers back, so the
whole scenario runs (and is tested) without Locust: ``tests/unit/test_traffic.py`` checks the
distribution and the mix, ``tests/api/test_traffic_bodies.py`` posts every body to the real app.

- :class:`Zipf`: customer (and product) ids drawn from a heavy-tailed distribution over a population.
- :class:`Settings`: every weight and size, read from ``NBA_LOAD_*`` variables (:meth:`Settings.from_env`);
  the defaults and what each means are in ``docs/load-testing.md``.
- :class:`Visitor`: one browser tab's visits, one call at a time (:meth:`Visitor.next_calls`), told what
  each call answered (:meth:`Visitor.observe`): page views with a decision, cart adds, purchases,
  outcomes for a share of the decisions it got, logins and signups that link an anonymous visitor.
- :func:`platform_batch`: a marketing platform's batch of events (``{"events": [...]}``).

Randomness is injected (``random.Random``); ids that must be unique (anonymous ids, event ids, order
ids, new customers) come from the same generator, so seed it from the OS in a load test.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Scope = Literal["web", "server"]
Body = dict[str, Any]
Number = TypeVar("Number", int, float)

# Request names: stats are per endpoint, not per id (Locust's ``name=``).
DECIDE = "decide"
DECIDE_FALLBACK = "decide (fallback)"
EVENTS = "events"
EVENTS_BATCH = "events (batch)"
OUTCOMES = "outcomes"
IDENTITIES = "identities"

STEPS = ("view", "add_to_cart", "purchase", "login")
# The event that a page view at each placement carries; any other placement gets a page_view.
PLACEMENT_EVENTS = {"web.product_page": "product_view", "web.faq": "faq_view"}
PAGES = {"web.home": "/", "web.cart": "/cart"}
BATCH_TYPES = (("email_open", 50), ("email_click", 15), ("page_view", 25), ("attributes", 10))
FAQ_ARTICLES = ("returns-policy", "delivery-times", "sizing", "payment-methods", "track-order")


class Zipf:
    """Ranks 1..n drawn with probability proportional to ``1 / rank**s``: a few ids take most draws.

    Examples
    --------
    >>> ids = Zipf(1000, 1.1)
    >>> 1 <= ids.draw(random.Random(7)) <= 1000
    True
    >>> round(ids.share(10), 2)  # the top 1% of ids
    0.48
    """

    def __init__(self, n: int, s: float) -> None:
        if n < 1 or s <= 0:
            raise ValueError(f"Zipf needs n >= 1 and s > 0, got n={n}, s={s}")
        self.n = n
        self.s = s
        self._cumulative = list(itertools.accumulate(1.0 / math.pow(rank, s) for rank in range(1, n + 1)))

    def draw(self, rng: random.Random) -> int:
        """One rank, 1 being the most frequent."""
        return bisect.bisect_left(self._cumulative, rng.random() * self._cumulative[-1]) + 1

    def share(self, top: int) -> float:
        """The probability that a draw is one of the ``top`` most frequent ranks."""
        return self._cumulative[min(top, self.n) - 1] / self._cumulative[-1]


def _weights(text: str, name: str) -> dict[str, float]:
    """``"a=3,b=1"`` -> ``{"a": 3.0, "b": 1.0}``."""
    weights: dict[str, float] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{name}: expected 'name=weight,...', got {text!r}")
        try:
            weights[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a number") from None
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"{name}: weights must be >= 0 and not all 0, got {text!r}")
    return weights


@dataclass(frozen=True, slots=True)
class Settings:
    """Weights and sizes of the traffic; ``from_env`` reads each from ``NBA_LOAD_<NAME>``."""

    customers: int = 100_000  # the known-customer population that Zipf draws from
    zipf_s: float = 1.1  # the Zipf exponent: larger is more skewed
    products: int = 2_000  # product ids, Zipf-drawn too (bestsellers)
    id_prefix: str = "lt"  # every id starts with it, so load-test profiles are easy to find and erase
    steps: Mapping[str, float] = field(
        default_factory=lambda: {"view": 80.0, "add_to_cart": 12.0, "purchase": 3.0, "login": 5.0}
    )
    placements: Mapping[str, float] = field(
        default_factory=lambda: {
            "web.home": 25.0,
            "web.product_page": 50.0,
            "web.cart": 15.0,
            "web.faq": 10.0,
        }
    )
    known_share: float = 0.3  # visits that start logged in (a known customer)
    signup_share: float = 0.3  # logins that are signups of a new customer
    outcome_share: float = 0.3  # decisions with an action that get an outcome
    click_share: float = 0.4  # of those outcomes, clicks; the rest are dismissals
    visit_calls: float = 8.0  # mean steps per visit, after which a new visitor arrives
    identities: bool = False  # link logins with POST /v1/identities (needs a server key)
    batch_min: int = 100  # events per platform batch: uniform in [batch_min, batch_max]
    batch_max: int = 500

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """The settings from ``NBA_LOAD_*`` variables; identities are on when a server key is given."""
        d = cls()

        def get(name: str, default: object) -> str:
            return env.get(f"NBA_LOAD_{name.upper()}", "").strip() or str(default)

        def num(name: str, default: Number) -> Number:
            try:
                return type(default)(get(name, default))
            except ValueError:
                raise ValueError(f"NBA_LOAD_{name.upper()} must be a number") from None

        settings = cls(
            customers=num("customers", d.customers),
            zipf_s=num("zipf_s", d.zipf_s),
            products=num("products", d.products),
            id_prefix=get("id_prefix", d.id_prefix),
            steps=_weights(env["NBA_LOAD_STEPS"], "NBA_LOAD_STEPS") if env.get("NBA_LOAD_STEPS") else d.steps,
            placements=(
                _weights(env["NBA_LOAD_PLACEMENTS"], "NBA_LOAD_PLACEMENTS")
                if env.get("NBA_LOAD_PLACEMENTS")
                else d.placements
            ),
            known_share=num("known_share", d.known_share),
            signup_share=num("signup_share", d.signup_share),
            outcome_share=num("outcome_share", d.outcome_share),
            click_share=num("click_share", d.click_share),
            visit_calls=num("visit_calls", d.visit_calls),
            identities=bool(env.get("NBA_LOAD_SERVER_KEY", "").strip()),
            batch_min=num("batch_min", d.batch_min),
            batch_max=num("batch_max", d.batch_max),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        unknown = set(self.steps) - set(STEPS)
        if unknown:
            raise ValueError(f"NBA_LOAD_STEPS: unknown steps {sorted(unknown)}; known: {', '.join(STEPS)}")
        shares = ("known_share", "signup_share", "outcome_share", "click_share")
        for name in shares:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"NBA_LOAD_{name.upper()} must be between 0 and 1")
        if self.customers < 1 or self.products < 1 or self.visit_calls < 1:
            raise ValueError("NBA_LOAD_CUSTOMERS, NBA_LOAD_PRODUCTS and NBA_LOAD_VISIT_CALLS must be >= 1")
        if not 1 <= self.batch_min <= self.batch_max <= 1000:
            raise ValueError("need 1 <= NBA_LOAD_BATCH_MIN <= NBA_LOAD_BATCH_MAX <= 1000 (the batch limit)")


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP call to make: ``name`` groups it in the stats, ``scope`` says which key to send."""

    name: str
    path: str
    body: Body
    scope: Scope = "web"


@dataclass(slots=True)
class Visitor:
    """One browser's visits, one step at a time; each new visit is a new anonymous visitor, or a known
    customer (``known_share``), who may log in or sign up along the way."""

    settings: Settings
    rng: random.Random
    customers: Zipf
    products: Zipf
    customer_id: str | None = None
    anonymous_id: str | None = None
    cart: dict[str, float] = field(default_factory=dict)  # item id -> price
    pending: list[Call] = field(default_factory=list)  # outcomes owed for decisions already answered

    @classmethod
    def create(cls, settings: Settings, rng: random.Random, customers: Zipf, products: Zipf) -> Visitor:
        visitor = cls(settings, rng, customers, products)
        visitor.new_visit()
        return visitor

    def unique(self, kind: str) -> str:
        return f"{self.settings.id_prefix}-{kind}-{self.rng.getrandbits(64):016x}"

    def new_visit(self) -> None:
        self.cart.clear()
        self.pending.clear()
        if self.rng.random() < self.settings.known_share:
            self.customer_id, self.anonymous_id = self.known_customer(), None
        else:
            self.customer_id, self.anonymous_id = None, self.unique("v")

    def known_customer(self) -> str:
        return f"{self.settings.id_prefix}-c-{self.customers.draw(self.rng)}"

    def who(self) -> Body:
        return {"customer_id": self.customer_id} if self.customer_id else {"anonymous_id": self.anonymous_id}

    def next_calls(self) -> list[Call]:
        """The calls of the next step, in order: an owed outcome first, otherwise a step of the mix."""
        if self.pending:
            return [self.pending.pop(0)]
        if self.rng.random() < 1 / self.settings.visit_calls:
            self.new_visit()
        step = self.rng.choices(list(self.settings.steps), weights=list(self.settings.steps.values()))[0]
        if step == "purchase" and self.cart:
            return [self.purchase()]
        if step == "add_to_cart":
            return [self.add_to_cart()]
        if step == "login" and self.customer_id is None:
            return self.login()
        # A purchase with an empty cart, or a login of a known customer, is a page view instead.
        return [self.view()]

    def item(self) -> str:
        return f"{self.settings.id_prefix}-sku-{self.products.draw(self.rng)}"

    def view(self) -> Call:
        placements = self.settings.placements
        placement = self.rng.choices(list(placements), weights=list(placements.values()))[0]
        event_type = PLACEMENT_EVENTS.get(placement, "page_view")
        properties: Body
        if event_type == "product_view":
            properties = {"item_id": self.item(), "price": self.price()}
        elif event_type == "faq_view":
            properties = {"article_id": self.rng.choice(FAQ_ARTICLES)}
        else:
            properties = {"page": PAGES.get(placement, "/" + placement.replace(".", "/"))}
        body = {
            **self.who(),
            "placement": placement,
            "event": {"event_id": self.unique("e"), "type": event_type, "properties": properties},
            "context": {"device": "mobile" if self.rng.random() < 0.6 else "desktop"},
        }
        return Call(DECIDE, "/v1/decide", body)

    def price(self) -> float:
        return round(self.rng.uniform(5, 120), 2)

    def add_to_cart(self) -> Call:
        item, price = self.item(), self.price()
        self.cart[item] = price
        properties = {"item_id": item, "price": price, "quantity": 1}
        return Call(EVENTS, "/v1/events", self.event("add_to_cart", properties))

    def purchase(self) -> Call:
        properties = {
            "order_id": self.unique("o"),
            "revenue": round(sum(self.cart.values()), 2),
            "item_ids": sorted(self.cart),
        }
        self.cart.clear()
        return Call(EVENTS, "/v1/events", self.event("purchase", properties))

    def login(self) -> list[Call]:
        """The visitor becomes known: a signup (a new customer) or a login (a Zipf-drawn one), then,
        with a server key, the link that merges the anonymous history into the customer's."""
        signup = self.rng.random() < self.settings.signup_share
        customer = self.unique("c") if signup else self.known_customer()
        anonymous, self.customer_id = self.anonymous_id, customer
        calls = [Call(EVENTS, "/v1/events", self.event("signup" if signup else "login", {}))]
        if self.settings.identities and anonymous is not None:
            body = {"anonymous_id": anonymous, "customer_id": customer}
            calls.append(Call(IDENTITIES, "/v1/identities", body, scope="server"))
        return calls

    def event(self, event_type: str, properties: Body) -> Body:
        return {**self.who(), "event_id": self.unique("e"), "type": event_type, "properties": properties}

    def observe(self, call: Call, answer: Any) -> None:
        """Learn from a 2xx answer: a share of the decisions with actions owe an outcome."""
        if call.name != DECIDE or not isinstance(answer, dict) or answer.get("fallback"):
            return  # a fallback is not recorded and takes no outcomes
        actions = answer.get("actions") or []
        if actions and self.rng.random() < self.settings.outcome_share:
            kind = "click" if self.rng.random() < self.settings.click_share else "dismiss"
            body = {"decision_id": answer["decision_id"], "action_id": actions[0]["action_id"], "type": kind}
            self.pending.append(Call(OUTCOMES, "/v1/outcomes", body))


def platform_batch(settings: Settings, rng: random.Random, customers: Zipf) -> Call:
    """A marketing platform's batch: email opens and clicks, tracked page views and attribute syncs for
    Zipf-drawn known customers, ``batch_min`` to ``batch_max`` events."""
    size = rng.randint(settings.batch_min, settings.batch_max)
    types = [t for t, _ in BATCH_TYPES]
    weights = [w for _, w in BATCH_TYPES]
    events = []
    for event_type in rng.choices(types, weights=weights, k=size):
        properties: Body
        if event_type == "page_view":
            properties = {"page": "/newsletter"}
        elif event_type == "attributes":
            properties = {"newsletter": rng.random() < 0.8, "tier": rng.choice(("bronze", "silver", "gold"))}
        else:
            properties = {"campaign": rng.choice(("weekly", "winback", "launch"))}
        events.append(
            {
                "customer_id": f"{settings.id_prefix}-c-{customers.draw(rng)}",
                "event_id": f"{settings.id_prefix}-e-{rng.getrandbits(64):016x}",
                "type": event_type,
                "properties": properties,
            }
        )
    return Call(EVENTS_BATCH, "/v1/events", {"events": events})

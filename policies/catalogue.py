"""The action catalogue: placements, actions, contact policies, holdouts, exploration.

Marketers keep it as YAML files in a folder (``NBA_POLICIES``; the shipped retail catalogue is
``policies/catalogue/``). Every file holds any of the top-level sections below; placements and actions
add up across files, the other sections may be given once. :func:`load` validates everything, compiles
every rule, and either returns a :class:`Catalogue` or raises :class:`CatalogueInvalid` listing every
problem, each naming its file, the action or placement, and what to fix. docs/catalogue.md is the guide.
"""

from __future__ import annotations

import difflib
import math
import types
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from policies.durations import parse_duration
from policies.rules import ALWAYS, Rule, RuleError, compile_rule

_T = TypeVar("_T")
_NAME = r"^[a-z][a-z0-9_.\-]{0,63}$"
# parse_duration takes a bare number as seconds, a negative one too: a window or cooldown of none is
# no window at all.
Duration = Annotated[int, BeforeValidator(parse_duration), Field(gt=0)]
Name = Annotated[str, Field(pattern=_NAME)]
# As feature_store/events.py accepts them: no '-', which could not be read as profile.<type>_total.
EventType = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


def _version_text(value: object) -> object:
    # YAML reads an unquoted 2026-11-22 as a date and 3 as a number; either is meant as text.
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        raise ValueError(f'write the version in quotes, e.g. "2026-11-22.1": unquoted, it reads as {value!r}')
    return value


def _weight_keys(value: object) -> object:
    # The funnel matches context values as text (true/false in lower case, numbers as written), so the
    # YAML keys true, 14 or 1.5 are accepted and read the same way.
    if not isinstance(value, dict):
        return value
    return {
        key: {_text_key(k): w for k, w in weights.items()} if isinstance(weights, dict) else weights
        for key, weights in value.items()
    }


def _text_key(key: object) -> object:
    if isinstance(key, bool):
        return str(key).lower()
    return str(key) if isinstance(key, int | float) else key


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limit(_Model):
    """At most ``max`` contacts ``per`` window (e.g. ``{max: 1, per: 24h}``)."""

    max: int = Field(ge=0)
    per: Duration


class Suppression(_Model):
    """Stop offering after ``dismissals`` dismissals within ``per``."""

    dismissals: int = Field(ge=1)
    per: Duration


class ContactPolicy(_Model):
    overall: tuple[Limit, ...] = ()
    channels: dict[Name, tuple[Limit, ...]] = Field(default_factory=dict)


class Holdout(_Model):
    share: Share = 0.05
    seed: str = Field("nba-holdout", min_length=1, max_length=128)


class Exploration(_Model):
    """How the draw among eligible actions spreads its bets.

    ``epsilon_greedy``: the best priority gets ``1 - epsilon`` (split among ties), and ``epsilon`` is
    spread evenly over all eligible actions. ``softmax``: probabilities proportional to
    ``exp(priority / temperature)`` over priorities scaled to the best one, then at least ``floor``
    each.
    """

    policy: Literal["epsilon_greedy", "softmax"] = "epsilon_greedy"
    epsilon: Share = 0.1
    temperature: float = Field(0.1, gt=0.0)
    floor: Share = 0.01


class Placement(_Model):
    channel: Name
    limit: int = Field(1, ge=1, le=10)
    fallback: tuple[Name, ...] = ()
    description: str = ""
    reward: Literal["click", "conversion", "value"] = Field(
        "click",
        description="What the models learn as success: a click, a conversion, or the conversion's value.",
    )
    attribution: Duration = Field(
        30 * 60_000, description="How long after a decision its outcomes and purchases count (e.g. 30m, 3d)."
    )
    exploration: Exploration | None = Field(None, description="Overrides the catalogue's exploration here.")

    @field_validator("attribution")
    @classmethod
    def _attribution_in_range(cls, value: int) -> int:
        if not 1_000 <= value <= 30 * 86_400_000:
            raise ValueError("attribution is between 1s and 30d")
        return value


Secret = Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")]


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


class Destination(_Model):
    """Where the actions that name it are delivered: a marketing-automation platform's webhook
    endpoint. Signed per Standard Webhooks with the secret in the environment variable ``secret``
    (never in the catalogue, never logged or returned)."""

    url: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=2048)
    secret: Secret = Field(description="The environment variable that holds the signing secret.")
    timeout: Duration = Field(10_000, description="Per attempt (e.g. 5s).")
    concurrency: int = Field(4, ge=1, le=64, description="Deliveries in flight at once, per worker.")
    attempts: int = Field(8, ge=1, le=30, description="Attempts before a delivery is a dead letter.")
    description: str = ""

    @field_validator("timeout")
    @classmethod
    def _timeout_in_range(cls, value: int) -> int:
        if value > 60_000:
            raise ValueError("timeout is at most 60s")
        return value


class Source(_Model):
    """A platform that sends events in: ``POST /v1/webhooks/<name>``, signed per Standard Webhooks
    with the secret in the environment variable ``secret``. ``format``: the shape of its payloads
    (docs/webhooks.md)."""

    secret: Secret = Field(description="The environment variable that holds the signing secret.")
    format: Literal["generic", "resend"] = "generic"
    customer_tag: Name = Field(
        "customer_id", description="resend: the email tag that carries the customer id."
    )
    description: str = ""


class Trigger(_Model):
    """A decision made when time passes: ``delay`` after a ``start`` event, unless a ``cancel`` event
    came first, for ``placement``, if ``condition`` holds then."""

    id: Name
    start: Annotated[tuple[EventType, ...], BeforeValidator(_one_or_many)] = Field(min_length=1)
    delay: Duration
    cancel: Annotated[tuple[EventType, ...], BeforeValidator(_one_or_many)] = ()
    condition: str = ALWAYS
    placement: Name
    late: Duration = Field(
        24 * 3_600_000, description="A trigger found due more than this late is dropped, not fired."
    )
    description: str = ""

    @field_validator("delay")
    @classmethod
    def _delay_in_range(cls, value: int) -> int:
        if value > 366 * 86_400_000:
            raise ValueError("delay is at most 366d")
        return value


class Action(_Model):
    id: Name
    channel: Name
    placements: tuple[Name, ...] = Field(min_length=1)
    payload: dict[str, Any] = Field(default_factory=dict)
    value: float = Field(1.0, ge=0.0)
    levers: float = Field(1.0, ge=0.0, description="A business multiplier: push (>1) or hold back (<1).")
    rule: str = ALWAYS
    consent: Name | None = Field(None, description="The channel whose consent must be granted.")
    limits: tuple[Limit, ...] = ()
    cooldown_after_dismiss: Duration | None = None
    suppress: Suppression | None = None
    reoffer_after_conversion: bool = False
    holdout: Share = 0.0
    exempt: bool = Field(False, description="Served to the global control group too (service messages).")
    context_weights: Annotated[dict[str, dict[str, float]], BeforeValidator(_weight_keys)] = Field(
        default_factory=dict
    )
    prior: float = Field(0.05, gt=0.0, lt=1.0, description="The propensity assumed until a model learns one.")
    destination: Name | None = Field(
        None, description="The destination that delivers it, when a trigger fires."
    )
    needs: tuple[str, ...] = Field((), description="Profile features sent with a delivery.")
    description: str = ""

    @field_validator("context_weights")
    @classmethod
    def _weights_positive(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for key, weights in value.items():
            for match, weight in weights.items():
                if not (math.isfinite(weight) and weight >= 0):
                    raise ValueError(f"context_weights.{key}.{match} must be a number of at least 0")
        return value


class CatalogueFile(_Model):
    """What one YAML file may hold."""

    version: Annotated[str | None, BeforeValidator(_version_text)] = Field(None, min_length=1, max_length=64)
    holdout: Holdout | None = None
    exploration: Exploration | None = None
    contact_policy: ContactPolicy | None = None
    event_types: tuple[EventType, ...] = ()
    placements: dict[Name, Placement] = Field(default_factory=dict)
    actions: tuple[Action, ...] = ()
    destinations: dict[Name, Destination] = Field(default_factory=dict)
    sources: dict[Name, Source] = Field(default_factory=dict)
    triggers: tuple[Trigger, ...] = ()


@dataclass(frozen=True, slots=True)
class CatalogueProblem:
    file: str
    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.where}: {self.problem}"


class CatalogueInvalid(ValueError):
    """The catalogue cannot be loaded; ``problems`` lists every one found."""

    def __init__(self, problems: list[CatalogueProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class CompiledAction:
    """An action as the funnel uses it: the definition and its compiled rule."""

    spec: Action
    rule: Rule
    source: str

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True, slots=True)
class CompiledTrigger:
    spec: Trigger
    condition: Rule
    source: str

    @property
    def id(self) -> str:
        return self.spec.id


_EFFECTS_KEPT: Final = 1024


@dataclass(frozen=True, slots=True)
class Catalogue:
    version: str
    holdout: Holdout
    exploration: Exploration
    contact_policy: ContactPolicy
    placements: Mapping[str, Placement]
    actions: Mapping[str, CompiledAction]
    by_placement: Mapping[str, tuple[CompiledAction, ...]]
    source: str
    event_types: tuple[str, ...] = ()  # declared custom types, as feature names use them
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    sources: Mapping[str, Source] = field(default_factory=dict)
    triggers: Mapping[str, CompiledTrigger] = field(default_factory=dict)

    # What each event type seen so far does to the triggers (trigger_effects): most decisions come with a
    # page view, which starts one.
    _trigger_effects: dict[str, tuple[tuple[bool, str, int], ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def trigger_effects(self, event_type: str) -> tuple[tuple[bool, str, int], ...]:
        """What an event of this type does to the triggers: ``(starts, trigger id, delay in ms)`` for
        each trigger it starts, then for each it cancels."""
        effects = self._trigger_effects.get(event_type)
        if effects is None:
            triggers = self.triggers.values()
            effects = (
                *((True, t.id, t.spec.delay) for t in triggers if event_type in t.spec.start),
                *((False, t.id, t.spec.delay) for t in triggers if event_type in t.spec.cancel),
            )
            if len(self._trigger_effects) < _EFFECTS_KEPT:  # event types are the senders' to name
                self._trigger_effects[event_type] = effects
        return effects

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/actions`` shows."""
        return {
            "version": self.version,
            "placements": {name: p.model_dump() for name, p in self.placements.items()},
            "actions": [
                a.spec.model_dump(include={"id", "channel", "placements", "payload", "value", "description"})
                | {"consent": a.spec.consent, "exempt": a.spec.exempt}
                for a in self.actions.values()
            ],
        }


def default_path() -> Path:
    """The shipped retail catalogue: the ``catalogue`` folder beside this module."""
    return Path(__file__).with_name("catalogue")


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error.

    PyYAML keeps the last of two equal keys without a word: a second ``rule:`` in an action, or a second
    ``actions:`` in a file, would silently replace the first.
    """


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *defaults", then overriding one of the defaults, is what merge keys are for
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable) and not isinstance(key, tuple):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in the same mapping", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _yaml_problem(name: str, exc: yaml.YAMLError) -> CatalogueProblem:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return CatalogueProblem(name, "(file)", f"not valid YAML: {exc}".replace("\n", " "))
    context = getattr(exc, "context", None)
    what = f"{context}, {problem}" if context else problem
    return CatalogueProblem(
        name, f"line {mark.line + 1}", f"not valid YAML: {what} (column {mark.column + 1})"
    )


def _where(loc: tuple[Any, ...], data: Any) -> str:
    """A readable location, naming the action by its id and the placement by its name."""
    parts: list[str] = []
    node = data
    for i, part in enumerate(loc):
        if i == 1 and loc[0] == "actions" and isinstance(part, int):
            item = node[part] if isinstance(node, list) and part < len(node) else None
            name = item.get("id") if isinstance(item, dict) else None
            parts[-1] = f"action {name!r}" if isinstance(name, str) else f"actions[{part}]"
        elif i == 1 and loc[0] == "placements":
            parts[-1] = f"placement {part!r}"
        elif isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
        elif part == "[key]" and parts:
            parts[-1] += " (the name)"
        else:
            parts.append(str(part))
        node = node[part] if isinstance(node, dict | list) and _has(node, part) else None
    return ".".join(parts) or "(file)"


def _has(node: dict[Any, Any] | list[Any], part: Any) -> bool:
    return part in node if isinstance(node, dict) else isinstance(part, int) and part < len(node)


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, int]:
    """The model a field's annotation holds, and how many containers (tuple, dict) wrap it."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, 0
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (tuple, list, dict):
        model, depth = _model_in(args[-1] if origin is dict else args[0])
        return model, depth + 1
    if origin in (Union, types.UnionType):
        for arg in args:
            model, depth = _model_in(arg)
            if model is not None:
                return model, depth
    return None, 0


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at ``loc`` in a file (for "did you mean")."""
    model: type[BaseModel] | None = CatalogueFile
    containers = 0
    for part in loc:
        if containers:
            containers -= 1
            continue
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        model, containers = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None and not containers else []


def _message(error: ErrorDetails) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden" and loc:
        fields = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        if close:
            return f"unknown field; did you mean {close[0]}?"
        return f"unknown field; the fields here are {', '.join(fields)}" if fields else "unknown field"
    if error["type"] == "model_type" and not loc:
        return "a catalogue file is a mapping of sections: version, placements, actions, ..."
    if error["type"] == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == _NAME:
        return "a name is lower-case letters, digits, '_', '.' and '-', starting with a letter (at most 64)"
    return error["msg"].removeprefix("Value error, ")


@dataclass(frozen=True, slots=True)
class _Part:
    """One file as read: what in it is valid, and the names of what is not."""

    name: str
    content: CatalogueFile
    declared: frozenset[Any]  # the sections the file gives, valid or not
    broken_actions: frozenset[str] = field(default_factory=frozenset)
    broken_placements: frozenset[str] = field(default_factory=frozenset)
    broken_channels: frozenset[str] = field(default_factory=frozenset)  # of the broken placements


def _read(file: Path, problems: list[CatalogueProblem]) -> _Part | None:
    name = file.name
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(name, exc))
        return None
    except UnicodeDecodeError:
        problems.append(CatalogueProblem(name, "(file)", "not UTF-8 text"))
        return None
    data = {} if data is None else data
    try:
        return _Part(name, CatalogueFile.model_validate(data), frozenset(data))
    except ValidationError as exc:
        problems.extend(
            CatalogueProblem(name, _where(tuple(e["loc"]), data), _message(e)) for e in exc.errors()
        )
    return _salvage(name, data) if isinstance(data, dict) else _Part(name, CatalogueFile(), frozenset())


def _valid(data: dict[str, Any]) -> bool:
    try:
        CatalogueFile.model_validate(data)
    except ValidationError:
        return False
    return True


def _salvage(name: str, data: dict[Any, Any]) -> _Part:
    """The valid sections, actions and placements of a file that has problems.

    The rest of the catalogue is still checked against them, so one mistake neither hides the others
    nor makes up new ones (a placement "missing" because its file has a typo elsewhere).
    """
    kept: dict[str, Any] = {
        key: value
        for key, value in data.items()
        if key not in ("actions", "placements") and _valid({key: value})
    }
    if isinstance(event_types := data.get("event_types"), list):
        kept["event_types"] = [t for t in event_types if _valid({"event_types": [t]})]
    broken_actions: set[str] = set()
    broken_placements: set[str] = set()
    broken_channels: set[str] = set()
    if isinstance(actions := data.get("actions"), list):
        kept["actions"] = [item for item in actions if _valid({"actions": [item]})]
        broken_actions.update(
            item["id"]
            for item in actions
            if isinstance(item, dict) and isinstance(item.get("id"), str) and item not in kept["actions"]
        )
    if isinstance(placements := data.get("placements"), dict):
        kept["placements"] = {k: v for k, v in placements.items() if _valid({"placements": {k: v}})}
        broken_placements.update(str(k) for k in placements if k not in kept["placements"])
        broken_channels.update(
            v["channel"]
            for k, v in placements.items()
            if k not in kept["placements"] and isinstance(v, dict) and isinstance(v.get("channel"), str)
        )
    return _Part(
        name,
        CatalogueFile.model_validate(kept),
        frozenset(data),
        frozenset(broken_actions),
        frozenset(broken_placements),
        frozenset(broken_channels),
    )


def _add_named(
    kind: str,
    found: dict[str, tuple[str, _T]],
    section: Mapping[str, _T],
    file: str,
    problems: list[CatalogueProblem],
) -> None:
    for key, value in section.items():
        if key in found:
            problems.append(CatalogueProblem(file, f"{kind} {key!r}", f"also defined in {found[key][0]}"))
        found[key] = (file, value)


def load(path: Path, features: Collection[str]) -> Catalogue:
    """Load and check every YAML file under ``path``. Raises :class:`CatalogueInvalid` with every problem."""
    if not path.exists():
        raise CatalogueInvalid([CatalogueProblem(str(path), "(path)", "does not exist")])
    files = _files(path)
    if not files:
        raise CatalogueInvalid([CatalogueProblem(str(path), "(folder)", "holds no .yaml or .yml file")])
    problems: list[CatalogueProblem] = []
    parts = [part for file in files if (part := _read(file, problems)) is not None]
    # What a file that cannot be read at all holds is unknown: a reference that finds nothing may be
    # to something in it, and the problem says so.
    read = {p.name for p in parts}
    unread = [file.name for file in files if file.name not in read]
    names = " or ".join(filter(None, (", ".join(unread[:-1]), unread[-1]))) if unread else ""
    unless = f" (unless it is in {names}, which could not be read)" if unread else ""
    # What is defined but invalid exists: a reference to it is not a problem of its own.
    broken_actions = {a for p in parts for a in p.broken_actions}
    broken_placements = {n for p in parts for n in p.broken_placements}
    singles: dict[str, tuple[str, Any]] = {}
    placements: dict[str, tuple[str, Placement]] = {}
    actions: dict[str, tuple[str, Action]] = {}
    definitions: list[tuple[str, Action]] = []
    event_types: set[str] = set()
    destinations: dict[str, tuple[str, Destination]] = {}
    sources: dict[str, tuple[str, Source]] = {}
    triggers: dict[str, tuple[str, Trigger]] = {}
    for part in parts:
        name = part.name
        _add_named("destination", destinations, part.content.destinations, name, problems)
        _add_named("source", sources, part.content.sources, name, problems)
        for trigger in part.content.triggers:
            if trigger.id in triggers:
                other = triggers[trigger.id][0]
                problems.append(CatalogueProblem(name, f"trigger {trigger.id!r}", f"also defined in {other}"))
            else:
                triggers[trigger.id] = (name, trigger)
        for section in ("version", "holdout", "exploration", "contact_policy"):
            if section not in part.declared:
                continue
            if section in singles:
                problems.append(CatalogueProblem(name, section, f"already given in {singles[section][0]}"))
            else:
                singles[section] = (name, getattr(part.content, section))
        event_types.update(t.replace(".", "_") for t in part.content.event_types)
        for placement_name, placement in part.content.placements.items():
            if placement_name in placements:
                other = placements[placement_name][0]
                problems.append(
                    CatalogueProblem(name, f"placement {placement_name!r}", f"also defined in {other}")
                )
            placements[placement_name] = (name, placement)
        for action in part.content.actions:
            definitions.append((name, action))
            if action.id in actions:
                other = actions[action.id][0]
                problems.append(CatalogueProblem(name, f"action {action.id!r}", f"also defined in {other}"))
            else:
                actions[action.id] = (name, action)
    if "version" not in singles and parts:
        problems.append(
            CatalogueProblem(
                files[0].name if len(files) == 1 else f"{path.name}/",
                "version",
                'the catalogue needs a version, given once in any file (e.g. version: "2026-11-22.1")'
                + unless,
            )
        )

    known = set(features) | {f"{t}_{w}" for t in event_types for w in ("total", "30m", "24h", "7d", "30d")}
    known |= {f"days_since_{t}" for t in event_types}
    compiled: dict[str, CompiledAction] = {}
    for name, action in definitions:  # every definition, a duplicate too: its problems are problems
        action_id = action.id
        where = f"action {action_id!r}"
        rule: Rule | None = None
        try:
            rule = compile_rule(action.rule, known)
        except RuleError as exc:
            problems.append(CatalogueProblem(name, f"{where}.rule", str(exc)))
        for placement_name in action.placements:
            found = placements.get(placement_name)
            if found is None:
                if placement_name not in broken_placements:
                    close = difflib.get_close_matches(placement_name, placements, n=1)
                    hint = f"; did you mean {close[0]}?" if close else ""
                    problems.append(
                        CatalogueProblem(
                            name, f"{where}.placements", f"no placement {placement_name!r}{hint}{unless}"
                        )
                    )
            elif found[1].channel != action.channel:
                problems.append(
                    CatalogueProblem(
                        name,
                        f"{where}.placements",
                        f"placement {placement_name!r} is on channel {found[1].channel!r}, "
                        f"the action on {action.channel!r}",
                    )
                )
        if action.destination is not None and action.destination not in destinations:
            close = difflib.get_close_matches(action.destination, destinations, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(
                CatalogueProblem(
                    name, f"{where}.destination", f"no destination {action.destination!r}{hint}{unless}"
                )
            )
        for need in action.needs:
            if need not in known:
                close = difflib.get_close_matches(need, known, n=1)
                hint = f"; did you mean {close[0]}?" if close else " (docs/profile.md lists the features)"
                problems.append(
                    CatalogueProblem(name, f"{where}.needs", f"no profile feature {need!r}{hint}")
                )
        if rule is not None and action_id not in compiled:
            compiled[action_id] = CompiledAction(action, rule, name)
    compiled_triggers: dict[str, CompiledTrigger] = {}
    for trigger_id, (name, trigger) in triggers.items():
        where = f"trigger {trigger_id!r}"
        condition: Rule | None = None
        try:
            condition = compile_rule(trigger.condition, known)
        except RuleError as exc:
            problems.append(CatalogueProblem(name, f"{where}.condition", str(exc)))
        if trigger.placement not in placements and trigger.placement not in broken_placements:
            close = difflib.get_close_matches(trigger.placement, placements, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(
                CatalogueProblem(
                    name, f"{where}.placement", f"no placement {trigger.placement!r}{hint}{unless}"
                )
            )
        if both := sorted(set(trigger.start) & set(trigger.cancel)):
            problems.append(
                CatalogueProblem(name, f"{where}.cancel", f"{', '.join(both)} both starts and cancels it")
            )
        if condition is not None:
            compiled_triggers[trigger_id] = CompiledTrigger(trigger, condition, name)
    for placement_name, (name, placement) in placements.items():
        for fallback in placement.fallback:
            target = actions.get(fallback)
            where = f"placement {placement_name!r}.fallback"
            if target is None:
                if fallback not in broken_actions:
                    problems.append(CatalogueProblem(name, where, f"no action {fallback!r}{unless}"))
            elif placement_name not in target[1].placements:
                problems.append(
                    CatalogueProblem(name, where, f"{fallback!r} is not an action of this placement")
                )
    policy_file, policy = singles.get("contact_policy", ("", None))
    if isinstance(policy, ContactPolicy):
        # A misspelt channel would cap nothing, silently.
        channels = sorted({p.channel for _, p in placements.values()})
        broken_channels = {c for p in parts for c in p.broken_channels}
        for channel in policy.channels:
            if channel not in channels and channel not in broken_channels:
                problems.append(
                    CatalogueProblem(
                        policy_file,
                        f"contact_policy.channels.{channel}",
                        f"no placement is on channel {channel!r}; the channels are {', '.join(channels)}"
                        + unless,
                    )
                )
    if problems:
        order = {file.name: i for i, file in enumerate(files)}
        raise CatalogueInvalid(sorted(problems, key=lambda p: order.get(p.file, len(order))))
    by_placement = {
        placement_name: tuple(a for a in compiled.values() if placement_name in a.spec.placements)
        for placement_name in placements
    }
    return Catalogue(
        version=str(singles["version"][1]),
        holdout=singles.get("holdout", ("", Holdout()))[1],
        exploration=singles.get("exploration", ("", Exploration()))[1],
        contact_policy=singles.get("contact_policy", ("", ContactPolicy()))[1],
        placements={n: p for n, (_, p) in placements.items()},
        actions=compiled,
        by_placement=by_placement,
        source=str(path),
        event_types=tuple(sorted(event_types)),
        destinations={n: d for n, (_, d) in destinations.items()},
        sources={n: d for n, (_, d) in sources.items()},
        triggers=compiled_triggers,
    )

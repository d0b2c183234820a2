"""Eligibility rules: small expressions over the profile and the request context, compiled once.

A rule reads like Python and is evaluated by simpleeval (https://github.com/danthedeckie/simpleeval),
which walks a parsed syntax tree with a fixed set of operators and no access to builtins, modules,
dunder attributes or lambdas; Python's ``eval`` is never called. Of the candidates, it was the
fastest by an order of magnitude: one run of ``python -m load_tests.bench_rules`` measured a
pre-compiled three-clause rule at 11 µs with simpleeval (one evaluator per decision, shared by its
rules), 332 µs with rule-engine and 377 µs with cel-python (median per evaluation).

A rule made of names, literals, arithmetic, comparisons, and/or/not, ``x if c else y`` and calls of a
value's methods (every shipped rule) is also compiled into closures that evaluate it as simpleeval
does, with simpleeval's own operators: 0.98 against 6.05 µs for that rule in one run of the same
benchmark (see ``_closures``).

What a rule may name:

- ``profile.<feature>``: a profile feature (the names are given to :func:`compile_rule`; unknown ones
  are refused at load time, with the closest known names suggested);
- ``context.<key>``: a value the caller sent in ``context`` (``None`` when absent);
- literals, ``and``/``or``/``not``, comparisons, ``in``, arithmetic, ``x if c else y``, lists, tuples
  and sets, and the methods of the values themselves that only read (e.g.
  ``profile.attributes.get("tier")``, ``context.page.startswith("/help")``).

A rule is one expression. Statements (``=`` where ``==`` was meant, ``import``), functions other than
methods, lambdas, comprehensions and methods that change a value (``clear``, ``update``, ...) are
refused when the rule is compiled, so a catalogue that loads holds no rule that can never be evaluated.

Examples
--------
>>> rule = compile_rule("profile.faq_view_30m >= 2 and context.device == 'mobile'", {"faq_view_30m"})
>>> rule.evaluate({"faq_view_30m": 3}, {"device": "mobile"})
True
"""

from __future__ import annotations

import ast
import difflib
import threading
import types
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from simpleeval import (
    DEFAULT_OPERATORS,
    DISALLOW_FUNCTIONS,
    DISALLOW_METHODS,
    DISALLOW_PREFIXES,
    MAX_STRING_LENGTH,
    AttributeDoesNotExist,
    EvalWithCompoundTypes,
    FeatureNotAvailable,
    InvalidExpression,
    NameNotDefined,
)


class RuleError(ValueError):
    """A rule that cannot be compiled: bad syntax, an unknown name, or a forbidden construct."""


class _Context(dict[str, Any]):
    """The request context: a key the caller did not send reads as ``None``."""

    def __missing__(self, key: str) -> None:
        return None


# A rule's ``profile.<feature>`` and ``context.<key>`` are rewritten, once when it is compiled, into a
# name of their own (``profile.cart_value``), looked up directly in the profile or the context. Left as
# attributes, every read would first evaluate ``profile`` itself, and simpleeval checks every value it
# evaluates for forbidden contents, walking the whole profile each time: about 350 µs of a decision
# under cProfile (docs/performance.md).
_PROFILE_PREFIX: Final = "profile."
_CONTEXT_PREFIX: Final = "context."


class _Names:
    """What a rule's names read: one profile and one context. simpleeval indexes it by name."""

    __slots__ = ("_context", "_profile")

    def __init__(self, profile: Mapping[str, Any], context: Mapping[str, Any]) -> None:
        self._profile, self._context = profile, context

    def __getitem__(self, name: str) -> Any:
        if name.startswith(_PROFILE_PREFIX):
            return self._profile[name[len(_PROFILE_PREFIX) :]]
        if name.startswith(_CONTEXT_PREFIX):
            return self._context.get(name[len(_CONTEXT_PREFIX) :])
        if name == "context":  # context.get(...), context[<expression>]
            return _Context(self._context)
        raise KeyError(name)


Direct = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]  # (profile, context) -> the rule's value


@dataclass(frozen=True, slots=True)
class Rule:
    source: str
    tree: ast.AST
    direct: Direct | None = None  # the same rule as closures, when it has only what they take (_direct)

    def evaluate(self, profile: Mapping[str, Any], context: Mapping[str, Any]) -> bool:
        """Whether the rule holds. Raises :class:`RuleEvaluationError` when it cannot be evaluated."""
        return RuleScope(profile, context).holds(self)


class _Evaluators(threading.local):
    """One evaluator per thread, reused by every decision: building one costs more than a rule
    (about 50 µs). A rule is evaluated without awaiting, so a thread's decisions never interleave."""

    def __init__(self) -> None:
        self.evaluator = EvalWithCompoundTypes()


_evaluators = _Evaluators()


class RuleScope:
    """One profile and one context, against which many rules are evaluated (one per decision)."""

    __slots__ = ("_context", "_names", "_profile")

    def __init__(self, profile: Mapping[str, Any], context: Mapping[str, Any]) -> None:
        self._profile, self._context = profile, context
        self._names = _Names(profile, context)

    def holds(self, rule: Rule) -> bool:
        """Whether ``rule`` holds. Raises :class:`RuleEvaluationError` when it cannot be evaluated."""
        try:
            if rule.direct is not None:
                return bool(rule.direct(self._profile, self._context))
            evaluator = _evaluators.evaluator
            evaluator.names = self._names
            return bool(evaluator.eval(rule.source, previously_parsed=rule.tree))
        except (
            InvalidExpression,
            TypeError,
            ValueError,
            ArithmeticError,
            LookupError,
            AttributeError,
        ) as exc:
            raise RuleEvaluationError(f"{type(exc).__name__}: {exc}") from exc


class RuleEvaluationError(ValueError):
    """A rule failed on one profile (e.g. comparing a missing context value with a number)."""


ALWAYS = "True"

# Expression nodes a rule may use; simpleeval evaluates each of them. Anything else (a statement, an
# assignment, a lambda, a comprehension, a walrus) is refused when the rule is compiled, not on every
# evaluation, so a typo such as ``profile.stage = 'loyalty'`` cannot slip through as an always-true rule.
_NODES: Final = (
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Call, ast.Attribute, ast.Subscript,
    ast.Name, ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.Slice, ast.JoinedStr,
    ast.FormattedValue,
)  # fmt: skip
_OPERATORS: Final = frozenset(DEFAULT_OPERATORS)
# Methods that change the value they are called on: a rule only reads, and the profile it reads is
# shared by every rule of a decision.
_MUTATORS: Final = frozenset(
    {
        "append", "extend", "insert", "remove", "pop", "popitem", "clear", "update", "setdefault", "add",
        "discard", "sort", "reverse", "intersection_update", "difference_update",
        "symmetric_difference_update",
    }
)  # fmt: skip
# ``context.items`` would read the mapping's method, not the key "items" the caller sent.
_MAPPING_ATTRIBUTES: Final = frozenset(name for name in dir(dict) if not name.startswith("_"))


def compile_rule(source: str, features: Collection[str]) -> Rule:
    """Parse and check a rule once. Raises :class:`RuleError` saying what is wrong."""
    # A long rule may be written over several lines (a YAML block); it reads as one line.
    text = " ".join(line.strip() for line in source.strip().splitlines())
    if not text:
        raise RuleError(f"the rule is empty: write a condition, or {ALWAYS} to always hold")
    try:
        body = ast.parse(text).body
    except SyntaxError as exc:
        raise RuleError(f"syntax error at column {exc.offset}: {exc.msg}") from None
    if len(body) != 1:
        raise RuleError("a rule is one expression: join conditions with 'and' or 'or'")
    if isinstance(body[0], ast.Assign | ast.AugAssign | ast.AnnAssign):
        raise RuleError("'=' assigns, it does not compare: write '=='")
    if not isinstance(body[0], ast.Expr):
        raise RuleError(f"a rule is one expression, not a statement ({type(body[0]).__name__})")
    tree = body[0].value
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        _check_node(node, features, called)
    tree = _Direct(called).visit(tree)
    return Rule(source, tree, _closures(tree, source))


def _check_node(node: ast.AST, features: Collection[str], called: set[int]) -> None:
    if isinstance(node, ast.expr) and not isinstance(node, _NODES):
        raise RuleError(f"{type(node).__name__} is not allowed in rules")
    if isinstance(node, ast.BinOp | ast.UnaryOp) and type(node.op) not in _OPERATORS:
        raise RuleError(f"operator {type(node.op).__name__} is not allowed in rules")
    if isinstance(node, ast.Compare) and (bad := [op for op in node.ops if type(op) not in _OPERATORS]):
        raise RuleError(f"operator {type(bad[0]).__name__} is not allowed in rules")
    if isinstance(node, ast.Name) and node.id not in ("profile", "context"):
        raise RuleError(f"unknown name {node.id!r}: rules read profile.<feature> and context.<key>")
    if isinstance(node, ast.Call) and not isinstance(node.func, ast.Attribute):
        raise RuleError("only methods of values may be called, e.g. profile.attributes.get('tier')")
    if isinstance(node, ast.Attribute):
        if node.attr.startswith("_"):
            raise RuleError(f"attribute {node.attr!r} is not allowed in rules")
        if node.attr in _MUTATORS:
            raise RuleError(f"method {node.attr!r} changes a value; rules only read")
        if isinstance(node.value, ast.Name) and node.value.id == "profile":
            _check_feature(node.attr, features)
        if (
            isinstance(node.value, ast.Name)
            and node.value.id == "context"
            and node.attr in _MAPPING_ATTRIBUTES
            and id(node) not in called
        ):
            raise RuleError(f"context.{node.attr} reads a method, not the key: write context[{node.attr!r}]")
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "profile":
        if not (isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
            raise RuleError("profile is read by name: write profile.<feature>")
        _check_feature(node.slice.value, features)


class _Direct(ast.NodeTransformer):
    """Rewrites ``profile.x``, ``profile["x"]``, ``context.k`` and ``context["k"]`` (a checked tree)
    into names read directly (see :class:`_Names`), so that no rule reads ``profile`` whole.
    ``context.get(...)`` stays a method call."""

    def __init__(self, called: set[int]) -> None:
        self._called = called

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        # profile.<feature> always; context.<key> unless called, which is a method of the mapping.
        if isinstance(node.value, ast.Name) and (node.value.id == "profile" or id(node) not in self._called):
            return _direct(node, node.value.id, node.attr)
        return self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        if (
            isinstance(node.value, ast.Name)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            return _direct(node, node.value.id, node.slice.value)
        return self.generic_visit(node)


def _direct(node: ast.expr, base: str, key: str) -> ast.expr:
    return ast.copy_location(ast.Name(id=f"{base}.{key}", ctx=ast.Load()), node)


def _check_feature(name: str, features: Collection[str]) -> None:
    if name not in features:
        close = difflib.get_close_matches(name, features, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise RuleError(f"unknown feature profile.{name}{hint}")


# Most rules compare features and context values with literals and arithmetic, joined by and/or/not.
# Such a rule is also compiled into closures, one per node, which evaluate it as simpleeval does (the
# same operator functions, the same values, the same errors) in a fraction of the time: simpleeval
# dispatches and checks every node's value on every evaluation, and a decision evaluates a rule per
# action. They read names, compute and compare, choose (``x if c else y``), and call a value's methods
# (``profile.attributes.get('tier')``) with simpleeval's checks of the method. simpleeval also checks
# every value for a module or a forbidden function; a rule's values are features and the request's
# JSON, and what their methods return, which hold neither. Any other construct (an attribute that is
# not called, a subscript, a keyword argument) leaves the rule to simpleeval.
_LITERALS: Final = (str, int, float, bool, type(None))
_COLLECTIONS: Final[dict[type[ast.expr], Callable[[Any], Any]]] = {
    ast.Tuple: tuple,
    ast.List: list,
    ast.Set: set,
}


def _closures(node: ast.expr, source: str) -> Direct | None:
    """``node`` (a checked, rewritten tree) as closures over (profile, context), or None."""
    if isinstance(node, ast.Constant):
        value = node.value
        if not isinstance(value, _LITERALS) or (isinstance(value, str) and len(value) > MAX_STRING_LENGTH):
            return None
        return lambda profile, context: value
    if isinstance(node, ast.Name):
        return _name(node.id, source)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
        operand, unary = _closures(node.operand, source), DEFAULT_OPERATORS[type(node.op)]
        if operand is None:
            return None
        return lambda profile, context: unary(operand(profile, context))
    if type(node) in _COLLECTIONS:
        assert isinstance(node, ast.Tuple | ast.List | ast.Set)
        items = [None if isinstance(e, ast.Starred) else _closures(e, source) for e in node.elts]
        if None in items:
            return None
        build = _COLLECTIONS[type(node)]
        return lambda profile, context: build([item(profile, context) for item in items])  # type: ignore[misc]
    if isinstance(node, ast.BinOp):  # simpleeval's own operators: they bound powers and repetitions
        left, right, binary = (
            _closures(node.left, source),
            _closures(node.right, source),
            DEFAULT_OPERATORS[type(node.op)],
        )
        if left is None or right is None:
            return None
        return lambda profile, context: binary(left(profile, context), right(profile, context))
    if isinstance(node, ast.BoolOp):
        values = [_closures(value, source) for value in node.values]
        if None in values:
            return None
        return _boolop(isinstance(node.op, ast.And), values)  # type: ignore[arg-type]
    if isinstance(node, ast.Compare):
        operands = [_closures(operand, source) for operand in (node.left, *node.comparators)]
        if None in operands:
            return None
        return _compare([DEFAULT_OPERATORS[type(op)] for op in node.ops], operands)  # type: ignore[arg-type]
    if isinstance(node, ast.IfExp):
        test, body, orelse = (_closures(part, source) for part in (node.test, node.body, node.orelse))
        if test is None or body is None or orelse is None:
            return None
        return lambda profile, context: (
            body(profile, context) if test(profile, context) else orelse(profile, context)
        )
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and not node.keywords:
        return _method_call(node.func, node.args, source)
    return None


def _name(name: str, source: str) -> Direct | None:
    """A name ``_Direct`` made, read as :class:`_Names` reads it; a missing one fails as in simpleeval."""
    if name.startswith(_CONTEXT_PREFIX):
        key = name[len(_CONTEXT_PREFIX) :]
        return lambda profile, context: context.get(key)
    if not name.startswith(_PROFILE_PREFIX):
        return None  # ``context`` itself: only its methods and subscripts read it, which simpleeval does
    feature = name[len(_PROFILE_PREFIX) :]

    def read(profile: Mapping[str, Any], context: Mapping[str, Any]) -> Any:
        try:
            return profile[feature]
        except KeyError:
            raise NameNotDefined(name, source) from None

    return read


def _method_call(func: ast.Attribute, arguments: list[ast.expr], source: str) -> Direct | None:
    """``value.name(args)``, the method found and checked as simpleeval's ``_eval_attribute`` does."""
    name = func.attr
    if name.startswith(tuple(DISALLOW_PREFIXES)) or name in DISALLOW_METHODS:
        return None  # simpleeval refuses it on every evaluation, with its own error
    target = _closures(func.value, source)
    args = [None if isinstance(a, ast.Starred) else _closures(a, source) for a in arguments]
    if target is None or None in args:
        return None

    def call(profile: Mapping[str, Any], context: Mapping[str, Any]) -> Any:
        value = target(profile, context)
        try:
            method = getattr(value, name)
        except (AttributeError, TypeError):
            try:
                method = value[name]  # simpleeval then reads the name as a key (ATTR_INDEX_FALLBACK)
            except (KeyError, TypeError):
                raise AttributeDoesNotExist(name, source) from None
        if isinstance(method, types.ModuleType):
            raise FeatureNotAvailable("Sorry, modules are not allowed in attribute access")
        if callable(method) and method in DISALLOW_FUNCTIONS:
            raise FeatureNotAvailable("This function is forbidden")
        return method(*[arg(profile, context) for arg in args])  # type: ignore[misc]

    return call


def _boolop(conjunction: bool, values: list[Direct]) -> Direct:
    """``and`` / ``or`` as Python (and simpleeval) evaluate them: the value that decided, not a bool."""

    def evaluate(profile: Mapping[str, Any], context: Mapping[str, Any]) -> Any:
        result: Any = False
        for value in values:
            result = value(profile, context)
            if bool(result) is not conjunction:
                break
        return result

    return evaluate


def _compare(operators: list[Callable[[Any, Any], Any]], operands: list[Direct]) -> Direct:
    """A comparison, chained as in Python: ``a < b < c`` is ``a < b and b < c``, each operand read once."""
    if len(operators) == 1:
        operator, left, right = operators[0], operands[0], operands[1]
        return lambda profile, context: operator(left(profile, context), right(profile, context))

    def evaluate(profile: Mapping[str, Any], context: Mapping[str, Any]) -> Any:
        right = operands[0](profile, context)
        result: Any = True
        for operator, operand in zip(operators, operands[1:], strict=True):
            if not result:
                break
            left, right = right, operand(profile, context)
            result = operator(left, right)
        return result

    return evaluate

"""Which of the decision path's modules run compiled by mypyc, and never a compiled module older than its
source.

An install (``pip install .`` or ``pip install -e .``, setup.py) compiles :data:`MODULES` with mypyc
when it can, and writes :data:`MANIFEST`: the SHA-256 of each module's source as it was compiled. A
decision then costs the worker about a tenth less (docs/performance.md "Compiled by mypyc"). The
source stays the reference: the compiled modules are the same code, checked by the same tests.

An editable install compiles in place, beside the sources, and Python imports an extension module
before the ``.py`` of the same name: after an edit, the stale compiled module would run instead of the
edited code. So :func:`guard`, called by ``app/__init__.py``, compares each source with its digest in
the manifest, and when any differs (or there is no manifest, or ``NBA_INTERPRETED=1``), every one of
them is imported from its source from then on. All of them, not only the changed ones: compiled modules
call each other's functions directly, past an interpreted one. Every way in imports ``app`` first (the
``nba`` command, the server's workers, the tests' conftest.py, the benchmark); a script that imports
``feature_store``, ``policies`` or ``models`` before ``app`` gets the modules as installed, which the
guard then reports ("already imported compiled").

Only the standard library here: setup.py reads this file before the dependencies are installed.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final

# Plain synchronous logic on every decision, which mypyc compiles without a change and the whole test
# suite passes against: features, rules, the funnel, the draw, holdouts, the scoring vector and the
# decision's own service. Not the store, the route or the metrics: their async code and subclasses of
# other libraries' classes behave differently compiled (docs/performance.md).
MODULES: Final = (
    "feature_store.features",
    "feature_store.profile",
    "feature_store.keys",
    "policies.funnel",
    "policies.rules",
    "policies.exploration",
    "policies.holdout",
    "models.vectorize",
    "app.services",
)
ROOT: Final = Path(__file__).resolve().parent.parent  # where the packages are: the checkout, or site-packages
MANIFEST: Final = ROOT / "app" / "compiled.json"
GROUP: Final = "nba"  # mypyc's shared library of the compiled modules: nba__mypyc.<suffix>
INTERPRETED_ENV: Final = "NBA_INTERPRETED"


def source(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(modules: Sequence[str] = MODULES, root: Path = ROOT) -> dict[str, object]:
    """What setup.py writes to :data:`MANIFEST` when it compiles ``modules``."""
    return {"modules": {m: digest(source(m, root)) for m in modules}}


@dataclass(frozen=True, slots=True)
class Status:
    """What :func:`guard` found: ``compiled`` is empty when the sources are imported, and ``reason`` says
    why (nothing to say when every module runs compiled)."""

    compiled: tuple[str, ...]
    reason: str | None


def stale(modules: Sequence[str] = MODULES, root: Path = ROOT, path: Path = MANIFEST) -> str | None:
    """Why the compiled modules must not be imported, or None when they are as their sources are."""
    if os.environ.get(INTERPRETED_ENV, "") not in ("", "0"):
        return f"{INTERPRETED_ENV} is set"
    try:
        built = json.loads(path.read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return "this install did not compile them (no compiled.json: NBA_MYPYC=0, or no C compiler)"
    changed = [m for m in modules if built.get(m) != digest(source(m, root))]
    if changed:
        files = ", ".join(str(source(m, Path())) for m in changed)
        return f"changed since they were compiled: {files} (install again to compile them)"
    return None


class FromSource(importlib.abc.MetaPathFinder):
    """Finds ``modules`` as their ``.py`` files under ``root``, ahead of the compiled ones beside them."""

    def __init__(self, modules: Sequence[str], root: Path) -> None:
        self.modules = frozenset(modules)
        self.root = root

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname, self.root))


def _is_compiled(module: ModuleType) -> bool:
    return str(getattr(module, "__file__", "")).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def check(modules: Sequence[str] = MODULES, root: Path = ROOT, path: Path = MANIFEST) -> Status:
    """Which of ``modules`` may run compiled, and why not if none may."""
    reason = stale(modules, root, path)
    if reason is not None:
        loaded = [m for m in modules if m in sys.modules and _is_compiled(sys.modules[m])]
        if loaded:  # imported before app/__init__.py ran: too late to choose, so say so
            reason += f"; already imported compiled: {', '.join(loaded)}"
        return Status((), reason)
    if not all(_has_extension(m, root) for m in modules):
        return Status((), "the install did not compile them (its output says why)")
    return Status(tuple(modules), None)


_status: Status | None = None


def guard() -> Status:
    """Once per process, before any of :data:`MODULES` is imported: when they may not run compiled, they
    are imported from their sources from here on."""
    global _status
    if _status is None:
        _status = check()
        if not _status.compiled:
            sys.meta_path.insert(0, FromSource(MODULES, ROOT))
    return _status


def _has_extension(module: str, root: Path) -> bool:
    folder, name = source(module, root).parent, module.rpartition(".")[2]
    return any((folder / f"{name}{suffix}").is_file() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def status() -> Status:
    """Which modules run compiled in this process."""
    return guard()

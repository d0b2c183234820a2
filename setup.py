"""The build's one step beyond pyproject.toml: the decision path's plain-logic modules compiled by mypyc.

Every install compiles app/compiled.py's MODULES when it can (a C compiler and Python's headers: Debian's
``build-essential`` and ``python3-dev``), which takes about half a minute, and writes app/compiled.json,
the digests of the sources it compiled. ``NBA_MYPYC=0`` installs the sources alone. A build that cannot
compile says why in pip's output and installs the sources alone: the service is the same, a decision
costs about a tenth more of the worker (docs/performance.md "Compiled by mypyc").
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _compiled_module() -> Any:
    """app/compiled.py by its path: importing the ``app`` package would need the dependencies."""
    spec = importlib.util.spec_from_file_location("_nba_compiled", HERE / "app" / "compiled.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


compiled = _compiled_module()
MANIFEST: Path = compiled.MANIFEST


# The commands that build; pip runs setup.py for the metadata too, which needs no compiling.
BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


class OptionalBuildExt(build_ext):
    """Compiles what it can, then writes the manifest beside what it compiled (the checkout for an
    editable install, the wheel's tree otherwise); when it cannot, says why and leaves the sources."""

    digests: dict[str, object] | None = None  # of the sources mypyc read, set by ext_modules()

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers: the sources still work
            print(f"nba: the modules were not compiled ({exc}); the sources will run", file=sys.stderr)
            return
        if self.digests is not None:
            built = Path(self.get_ext_fullpath("app.services")).parent / MANIFEST.name
            built.write_text(json.dumps(self.digests, indent=1) + "\n")


def ext_modules() -> list[object]:
    if not BUILDS.intersection(sys.argv[1:]):
        return []
    # Whatever this build makes, the checkout's compiled modules are not known to match their sources
    # any more: until a build writes it again, they are not used (app/compiled.py).
    MANIFEST.unlink(missing_ok=True)
    if os.environ.get("NBA_MYPYC", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # built without isolation, in an environment without mypy
        print("nba: mypyc is not installed; the modules are not compiled", file=sys.stderr)
        return []

    modules = compiled.MODULES
    paths = [str(compiled.source(m, Path())) for m in modules]
    OptionalBuildExt.digests = compiled.manifest(modules, HERE)
    # The build has mypy but not the service's dependencies: what they give reads as Any, and the project's
    # own mypy settings (strict, pydantic's plugin) are the test suite's business (tests/test_codebase.py).
    options = ["--config-file=", "--ignore-missing-imports", "--follow-imports=silent"]
    return mypycify([*options, *paths], opt_level="3", group_name=compiled.GROUP)


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})

"""app/compiled.py: the compiled modules run only when every one is as its source is; CI runs them."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import compiled

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package ``tpkg`` with two modules, each with an "extension" beside it that is not one: Python
    fails to load it (it is no shared library), so importing it shows which of the two was found."""
    monkeypatch.delenv(compiled.INTERPRETED_ENV, raising=False)
    package = tmp_path / "tpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("one", "two"):
        (package / f"{name}.py").write_text(f"NAME = {name!r}\n")
        (package / f"{name}{SUFFIX}").write_bytes(b"not a shared library")
    yield tmp_path
    for name in [m for m in sys.modules if m == "tpkg" or m.startswith("tpkg.")]:
        del sys.modules[name]


MODULES = ("tpkg.one", "tpkg.two")


def write_manifest(root: Path) -> Path:
    path = root / "compiled.json"
    path.write_text(json.dumps(compiled.manifest(MODULES, root)))
    return path


def test_modules_as_compiled_run_compiled(tree: Path) -> None:
    status = compiled.check(MODULES, tree, write_manifest(tree))
    assert status == compiled.Status(MODULES, None)


def test_a_changed_source_keeps_every_module_from_running_compiled(tree: Path) -> None:
    manifest = write_manifest(tree)
    (tree / "tpkg" / "two.py").write_text("NAME = 'edited'\n")
    status = compiled.check(MODULES, tree, manifest)
    assert status.compiled == ()
    assert status.reason is not None
    assert "changed since they were compiled: tpkg/two.py" in status.reason
    assert "one.py" not in status.reason


def test_without_a_manifest_nothing_runs_compiled(tree: Path) -> None:
    status = compiled.check(MODULES, tree, tree / "compiled.json")
    assert status.compiled == ()
    assert status.reason is not None
    assert "did not compile" in status.reason


def test_a_manifest_without_the_extensions_is_not_compiled(tree: Path) -> None:
    manifest = write_manifest(tree)
    (tree / "tpkg" / f"one{SUFFIX}").unlink()
    status = compiled.check(MODULES, tree, manifest)
    assert status.compiled == ()
    assert status.reason is not None
    assert "did not compile" in status.reason


def test_the_environment_can_ask_for_the_sources(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = write_manifest(tree)
    monkeypatch.setenv(compiled.INTERPRETED_ENV, "1")
    assert compiled.check(MODULES, tree, manifest) == compiled.Status((), "NBA_INTERPRETED is set")
    monkeypatch.setenv(compiled.INTERPRETED_ENV, "0")
    assert compiled.check(MODULES, tree, manifest).compiled == MODULES


def test_from_source_imports_the_sources_before_the_extensions(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tree))
    with pytest.raises(ImportError):  # what Python does alone: the extension first
        importlib.import_module("tpkg.one")
    finder = compiled.FromSource(MODULES, tree)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    one, two = importlib.import_module("tpkg.one"), importlib.import_module("tpkg.two")
    assert (one.NAME, two.NAME) == ("one", "two")
    assert one.__file__ == str(tree / "tpkg" / "one.py")


def test_this_process_runs_what_the_guard_found() -> None:
    """Whatever this install is, each module was imported the way app/__init__.py's guard decided."""
    status = compiled.status()
    for name in compiled.MODULES:
        module = importlib.import_module(name)
        runs_compiled = str(module.__file__).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
        assert runs_compiled == (name in status.compiled), (name, status)


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="a checkout being edited runs its sources")
def test_ci_tests_the_compiled_modules() -> None:
    """CI installs as the README says, and so tests what a deployment runs: the compiled modules."""
    assert compiled.status() == compiled.Status(compiled.MODULES, None)


def test_the_sources_can_be_asked_for() -> None:
    """NBA_INTERPRETED=1 in a process of its own: every module from its source."""
    code = (
        "import app, app.compiled as c, importlib;"
        "assert c.status().compiled == (), c.status();"
        "files = [importlib.import_module(m).__file__ for m in c.MODULES];"
        "assert all(f.endswith('.py') for f in files), files;"
        "print('ok')"
    )
    env = {**os.environ, compiled.INTERPRETED_ENV: "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"

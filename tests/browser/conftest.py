"""Browser tests: Debian's Chromium, driven by Playwright (the ``playwright`` package of the ``test`` extra).

Playwright's own browser download cannot be used here (it fetches a browser build from outside the
package registries), so the tests use the distribution's ``/usr/bin/chromium`` and install it on a fresh
machine: ``apt-get install chromium`` as root. Where that is impossible (not root, no package
registry) the tests fail and say what to install: they do not skip, or a machine without a browser would
pass without testing the page.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # git-ignored
# The switches that keep a headless Chromium quiet and self-contained in a container: no sandbox (root,
# no user namespaces), no GPU, no calls home (component updates, safe browsing, first-run pages).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _install_chromium() -> None:
    """``apt-get install chromium`` (without its recommends: systemd, avahi, printing dialogs...)."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(
            f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get): install Debian's "
            "chromium package (apt-get install chromium) and run the browser tests again"
        )
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
    ):
        try:
            done = subprocess.run(
                command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{' '.join(command)} did not finish in 15 minutes; is the package registry reachable?"
            )
        if done.returncode != 0:
            pytest.fail(
                f"installing Chromium failed: {' '.join(command)} exited {done.returncode}:\n"
                f"{(done.stdout + done.stderr)[-3000:]}"
            )
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is not there")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The path of Debian's Chromium, installed first if it is missing."""
    if not CHROMIUM.exists():
        _install_chromium()
    return CHROMIUM


def _processes_using(profile: Path) -> list[int]:
    """Pids of the live processes whose command line names ``profile`` (the browser's own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(profile).encode() in command:
                found.append(int(entry.name))
    return found


@pytest.fixture
def browser(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A headless Chromium under Playwright, with a fresh profile; closed (and its process gone) after.

    Per test, not per session: Playwright's sync API runs an event loop of its own in this thread while
    it is open, and pytest-asyncio's tests cannot run theirs meanwhile."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright: pip install -e '.[test]'")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        # A persistent context is what takes --user-data-dir (a fresh folder: no state from other runs).
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()
    # Playwright stops the browser it started; whatever it left (a bug) is stopped here, by pid.
    left = _processes_using(profile) if Path("/proc").is_dir() else []
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"Chromium processes outlived the browser tests and were killed: {left}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS

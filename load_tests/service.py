"""What the benchmarks share: a running service (models/local_service.py), percentiles, and git
revisions checked out side by side."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from models.local_service import Service, ServiceNotReady, running_service, stop

__all__ = ["Service", "ServiceNotReady", "percentile", "running_service", "stop", "worktrees"]

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def worktrees(revisions: Sequence[str]) -> Iterator[list[tuple[str, Path]]]:
    """Each git revision of this repository checked out in a worktree of its own, removed on the way out."""
    with tempfile.TemporaryDirectory(prefix="nba-revisions-") as folder:
        trees: list[tuple[str, Path]] = []
        try:
            for i, rev in enumerate(revisions):
                tree = Path(folder) / f"{i}-{rev.replace('/', '_')}"
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), rev], check=True
                )
                trees.append((rev, tree))
            yield trees
        finally:
            for _, tree in trees:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
                )

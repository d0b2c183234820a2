"""``nba evaluate`` on a real Redis, fed by the real app and the real learner.

Customers decide on web.product_page of the fixture catalogue (with exploration and a control group, so
that the log holds both groups and more than one eligible action), some click, the learner joins the
clicks at once and the zeros when the 30-minute windows close, and the evaluation reads it all back.
The decisions are made an hour in the past on the tests' clock, so that the command, which reads the
real time, finds their windows closed too.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from feature_store import ProfileStore
from feature_store.evaluation import EvaluationStore
from feature_store.features import feature_names
from models import evaluate as ev
from models.learner import Learner
from policies.catalogue import Catalogue, load
from tests.conftest import AppFactory, Clock
from tests.integration.test_learner import decide

CATALOGUE = Path(__file__).parents[1] / "fixtures" / "catalogue"
SEED = "test-seed"
PAGE = "web.product_page"
ROOMY = 5000  # a decision budget (ms) that no test machine exceeds
CUSTOMERS = 160
PNG = b"\x89PNG\r\n\x1a\n"


def catalogue_copy(tmp_path: Path) -> Path:
    """The fixture catalogue with 30% exploration and a 15% control group."""
    folder = tmp_path / "catalogue"
    shutil.copytree(CATALOGUE, folder)
    file = folder / "catalogue.yaml"
    text = file.read_text()
    edits = {
        f'holdout: {{share: 0.0, seed: "{SEED}"}}': f'holdout: {{share: 0.15, seed: "{SEED}"}}',
        "epsilon: 0.0}": "epsilon: 0.3}",
    }
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    file.write_text(text)
    return folder


async def click(api: httpx.AsyncClient, answer: dict[str, Any]) -> None:
    [action] = answer["actions"]
    outcome = {"decision_id": answer["decision_id"], "action_id": action["action_id"], "type": "click"}
    assert (await api.post("/v1/outcomes", json=outcome)).status_code == 202


async def settle(learner: Learner) -> None:
    async with asyncio.timeout(30):
        while await learner.step():
            pass


@pytest.fixture
async def logged(
    make_client: AppFactory, store: ProfileStore, clock: Clock, tmp_path: Path
) -> tuple[Catalogue, Path, dict[str, Any]]:
    """A decision log with joined rewards: what was decided, served and clicked."""
    folder = catalogue_copy(tmp_path)
    catalogue = load(folder, feature_names())
    clock.now = time.time() - 3600
    learner = Learner(store.learning(), lambda: catalogue, clock=clock, publish_every_s=0)
    await learner.store.ensure_groups()
    facts: dict[str, Any] = {"treatment": 0, "control": 0, "clicks": 0, "served": 0, "open": 0}
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        for i in range(CUSTOMERS):
            customer = f"c-{i}"
            if i % 2:  # two FAQ views make proactive_chat eligible beside generic_banner
                events = [
                    {"customer_id": customer, "type": "faq_view", "properties": {"article_id": f"a{k}"}}
                    for k in (1, 2)
                ]
                assert (await api.post("/v1/events", json={"events": events})).status_code == 202
            answer = await decide(api, customer, context={"device": "mobile" if i % 3 else "desktop"})
            facts[answer["group"]] += 1
            if not answer["actions"]:
                continue
            facts["served"] += 1
            [action] = answer["actions"]
            # proactive_chat (eligible for odd i) is clicked by one in two, generic_banner by one in five.
            if i % 4 == 1 if action["action_id"] == "proactive_chat" else i % 5 == 0:
                await click(api, answer)
                facts["clicks"] += 1
        await settle(learner)
        assert await learner.publish_if_due(force=True) == "m-1"  # every served action, and the clicks
        clock.advance(31 * 60)
        await settle(learner)
        # The zeros are joined as the windows close; they were learned with their decisions (m-1).
        assert await learner.publish_if_due(force=True) is None
        # Decisions whose windows are still open: left out, clicked or not.
        for i in range(5):
            answer = await decide(api, f"late-{i}")
            if answer["group"] == "treatment":
                facts["open"] += 1
                await click(api, answer)
        await settle(learner)
        await learner.publish_if_due(force=True)
    return catalogue, folder, facts


async def test_the_report_from_the_log(
    logged: tuple[Catalogue, Path, dict[str, Any]], redis_url: str, clock: Clock, tmp_path: Path
) -> None:
    catalogue, _, facts = logged
    assert facts["control"] > 0
    store = EvaluationStore.connect(redis_url)
    try:
        plot = tmp_path / "calibration.png"
        report = await ev.evaluate(store, catalogue, plot=plot, now_ms=int(clock() * 1000))
    finally:
        await store.aclose()
    assert report.decisions_read == CUSTOMERS + 5
    assert report.model_version == ("m-2" if facts["open"] else "m-1")  # the current snapshot
    # Control customers see no action of web.product_page (none is exempt): nothing served, left out.
    assert report.skipped["control"] == facts["control"] + 5 - facts["open"]
    assert report.skipped["window_open"] == facts["open"]
    assert report.usable == facts["treatment"] == facts["served"]
    assert report.observed is not None
    assert report.observed.value == pytest.approx(facts["clicks"] / report.usable)
    logged_ips = report.estimate_of("logged").ips
    assert logged_ips.value == report.observed.value
    assert logged_ips.low < logged_ips.value < logged_ips.high
    assert [e.policy for e in report.estimates] == ["logged", "uniform", "model_greedy", "value_only"]
    for e in report.estimates:
        for got in (e.ips, e.snips, e.dr):
            assert math.isfinite(got.value)
            assert got.low < got.value < got.high
            assert got.n == report.usable
    assert report.model_versions == {"prior": report.usable}
    cal = report.calibration
    assert cal is not None
    assert (cal.n, cal.positives) == (facts["served"], facts["clicks"])
    assert sum(b.n for b in cal.buckets) == cal.n
    assert report.plot == str(plot)
    assert plot.read_bytes()[:8] == PNG
    json.dumps(report.to_dict(), allow_nan=False)


async def test_the_command(
    logged: tuple[Catalogue, Path, dict[str, Any]],
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, folder, facts = logged
    monkeypatch.setenv("NBA_REDIS_URL", redis_url)
    monkeypatch.setenv("NBA_POLICIES", str(folder))
    plot = tmp_path / "cli.png"
    assert await asyncio.to_thread(ev.main, ["--json", "--out", str(plot), "--since", "2h"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["usable"] == facts["served"]
    assert data["estimates"][0]["policy"] == "logged"
    assert data["estimates"][0]["ips"]["value"] == data["observed"]["value"]
    assert data["plot"] == str(plot)
    assert plot.read_bytes()[:8] == PNG

    assert await asyncio.to_thread(ev.main, ["--out", str(plot), "--placement", PAGE]) == 0
    text = capsys.readouterr().out
    for part in ("observed mean reward", "model_greedy", "calibration plot"):
        assert part in text

    # A window before every decision: an empty log, said plainly.
    assert await asyncio.to_thread(ev.main, ["--until", "2h", "--out", str(tmp_path / "none.png")]) == 0
    assert "the decision log is empty" in capsys.readouterr().out
    assert not (tmp_path / "none.png").exists()


async def test_an_unreachable_store_is_said_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("NBA_REDIS_URL", f"unix://{tmp_path}/nothing.sock")
    assert await asyncio.to_thread(ev.main, ["--out", str(tmp_path / "x.png")]) == 1
    assert "unreachable" in capsys.readouterr().err

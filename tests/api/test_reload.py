"""POST /v1/admin/reload: a valid edit goes live here and on every instance; an invalid one is refused
with every problem and the live catalogue stays."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Scope
from tests.conftest import AppFactory

CATALOGUE = Path(__file__).parents[1] / "fixtures" / "catalogue"
ROOMY = 5000  # a decision budget (ms) that no test machine exceeds


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A copy of the fixture catalogue that the test may edit under the running app."""
    copy = tmp_path / "catalogue"
    shutil.copytree(CATALOGUE, copy)
    return copy


def edit(folder: Path, *changes: tuple[str, str]) -> None:
    file = folder / "catalogue.yaml"
    text = file.read_text()
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new)
    file.write_text(text)


NEW_VERSION = ('version: "test-1"', 'version: "test-2"')
ONE_FAQ_VIEW = ("profile.faq_view_30m >= 2", "profile.faq_view_30m >= 1")


async def faq_view(api: httpx.AsyncClient, customer: str) -> None:
    event = {"customer_id": customer, "type": "faq_view", "properties": {"article_id": "a"}}
    assert (await api.post("/v1/events", json=event)).status_code == 202


async def decide(api: httpx.AsyncClient, customer: str) -> dict[str, Any]:
    r = await api.post("/v1/decide", json={"customer_id": customer, "placement": "web.product_page"})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def version(api: httpx.AsyncClient) -> str:
    r = await api.get("/v1/actions")
    assert r.status_code == 200, r.text
    return str(r.json()["version"])


async def test_a_valid_edit_goes_live_on_reload(make_client: AppFactory, folder: Path) -> None:
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        await faq_view(api, "c-1")
        before = await decide(api, "c-1")
        assert ([a["action_id"] for a in before["actions"]], before["policy_version"]) == (
            ["generic_banner"],
            "test-1",
        )
        edit(folder, NEW_VERSION, ONE_FAQ_VIEW)
        assert await version(api) == "test-1"  # nothing changes before the reload
        r = await api.post("/v1/admin/reload")
        assert r.status_code == 200, r.text
        assert r.json() == {"version": "test-2", "placements": 3, "actions": 4, "announced": True}
        assert await version(api) == "test-2"
        after = await decide(api, "c-1")
        assert [a["action_id"] for a in after["actions"]] == ["proactive_chat"]
        assert after["policy_version"] == "test-2"


async def test_an_invalid_edit_is_refused_with_every_problem_and_the_live_catalogue_stays(
    make_client: AppFactory, folder: Path
) -> None:
    async with make_client(policies=folder, decision_budget_ms=ROOMY) as api:
        edit(
            folder,
            NEW_VERSION,
            ("profile.faq_view_30m >= 2", "profile.faq_views_30m >= 1"),
            ("placements: [web.product_page]\n", "placements: [web.product_page, web.checkout]\n"),
        )
        r = await api.post("/v1/admin/reload")
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "invalid_catalogue"
        assert "test-1 stays" in body["detail"]
        problems = {f["field"]: f["problem"] for f in body["fields"]}
        assert set(problems) == {
            "catalogue.yaml: action 'proactive_chat'.rule",
            "catalogue.yaml: action 'generic_banner'.placements",
        }
        assert (
            "unknown feature profile.faq_views_30m"
            in problems["catalogue.yaml: action 'proactive_chat'.rule"]
        )
        assert "faq_view_30m" in problems["catalogue.yaml: action 'proactive_chat'.rule"]  # the suggestion
        assert "no placement 'web.checkout'" in problems["catalogue.yaml: action 'generic_banner'.placements"]
        assert await version(api) == "test-1"
        await faq_view(api, "c-1")
        answer = await decide(api, "c-1")  # the old rule still holds: one view is not enough
        assert [a["action_id"] for a in answer["actions"]] == ["generic_banner"]
        assert answer["policy_version"] == "test-1"


async def test_a_reload_reaches_another_instance_on_the_same_redis(
    make_client: AppFactory, folder: Path
) -> None:
    async with (
        make_client(policies=folder, decision_budget_ms=ROOMY, catalogue_watch_s=0.05) as one,
        make_client(policies=folder, decision_budget_ms=ROOMY, catalogue_watch_s=0.05) as other,
    ):
        # Announced right after both started: an instance must not miss a reload made before its
        # watcher's first look at the generation.
        edit(folder, NEW_VERSION, ONE_FAQ_VIEW)
        assert (await one.post("/v1/admin/reload")).status_code == 200
        # A bound on a background loop (every 0.05 s), not a performance assertion.
        for _ in range(40):
            if await version(other) == "test-2":
                break
            await asyncio.sleep(0.05)
        assert await version(other) == "test-2"
        await faq_view(other, "c-1")
        assert [a["action_id"] for a in (await decide(other, "c-1"))["actions"]] == ["proactive_chat"]


async def test_reload_needs_an_admin_key(make_client: AppFactory, folder: Path) -> None:
    keys = {"web-key": Scope.WEB, "server-key": Scope.SERVER, "admin-key": Scope.ADMIN}
    async with make_client(policies=folder, api_keys=keys) as api:
        assert (await api.post("/v1/admin/reload")).status_code == 401
        for key in ("web-key", "server-key"):
            r = await api.post("/v1/admin/reload", headers={"Authorization": f"Bearer {key}"})
            assert (r.status_code, r.json()["error"]) == (403, "forbidden"), key
        r = await api.post("/v1/admin/reload", headers={"Authorization": "Bearer admin-key"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "test-1"


async def test_a_reload_while_the_store_is_down_is_announced_once_it_is_back(
    make_client: AppFactory, tmp_path: Path
) -> None:
    from feature_store.embedded import EmbeddedRedis, free_port

    folder = tmp_path / "catalogue"
    shutil.copytree(CATALOGUE, folder)
    port = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=port).start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        async with (
            make_client(redis_url=url, policies=folder, catalogue_watch_s=0.05) as first,
            make_client(redis_url=url, policies=folder, catalogue_watch_s=0.05) as second,
        ):
            server.stop()
            edit = (folder / "catalogue.yaml").read_text().replace('version: "test-1"', 'version: "test-3"')
            (folder / "catalogue.yaml").write_text(edit)
            r = await first.post("/v1/admin/reload")
            assert r.status_code == 200
            assert r.json()["announced"] is False
            assert (await first.get("/v1/actions")).json()["version"] == "test-3"
            server = EmbeddedRedis(tmp_path / "redis", port=port).start()
            for _ in range(40):  # a bound on the background loop, not a timing assertion
                if (await second.get("/v1/actions")).json()["version"] == "test-3":
                    break
                await asyncio.sleep(0.05)
            assert (await second.get("/v1/actions")).json()["version"] == "test-3"
    finally:
        server.stop()

"""GET /dashboard: the page and its assets over HTTP, and the page itself in Chromium against a real
``nba serve`` with traffic, as an operator opens it (docs/dashboard.md)."""

from __future__ import annotations

import base64
import itertools
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from feature_store.embedded import free_port
from models.local_service import running_service
from tests.conftest import AppFactory

CATALOGUE = Path(__file__).with_name("catalogue") / "catalogue.yaml"
NO_VALUE = "\N{EN DASH}"  # what a tile shows before it has a value
SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes, ok!!!").decode()  # the receiver's
ADMIN_KEY = "dashboard-test-admin-key"
WEB_KEY = "dashboard-test-web-key"
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "compute.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
CHARTS = (
    "latency",
    "throughput",
    "mix-action",
    "mix-group",
    "dropouts",
    "uplift",
    "maturity",
    "learning",
    "triggers",
    "webhooks",
)


# --- the page over HTTP (fast: the app in process) ----------------------------------------------------


async def test_the_page_is_public_and_holds_no_data(make_client: AppFactory) -> None:
    async with make_client(api_keys={ADMIN_KEY: "admin"}) as client:
        page = await client.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-cache"
        assert '<script type="module" src="/dashboard/static/dashboard.js">' in page.text
        # What it shows needs the admin key.
        assert (await client.get("/v1/admin/dashboard/data")).status_code == 401
        assert (await client.get("/v1/models")).status_code == 401


async def test_assets_have_their_types_and_revalidate(make_client: AppFactory) -> None:
    async with make_client(api_keys={ADMIN_KEY: "admin"}) as client:
        for name, media_type in ASSETS.items():
            asset = await client.get(f"/dashboard/static/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["content-type"] == media_type
            assert asset.headers["x-content-type-options"] == "nosniff"
            assert asset.headers["cache-control"] == "no-cache"
            etag = asset.headers["etag"]
            again = await client.get(f"/dashboard/static/{name}", headers={"If-None-Match": etag})
            assert again.status_code == 304
            assert again.content == b""
        for name in ("index.html", "missing.js", "..%2Fmain.py"):
            missing = await client.get(f"/dashboard/static/{name}")
            assert missing.status_code == 404
            assert missing.json()["error"] == "not_found"


# --- the page in Chromium against a real service ------------------------------------------------------


class Traffic:
    """Decisions, clicks, purchases and page views against the service from a thread, about 40 a second,
    until stopped: what the dashboard's samples count. Every customer is new, so about a tenth of them
    are in the control group (the simulation catalogue's holdout)."""

    def __init__(self, base_url: str, seed: int = 7) -> None:
        self.base_url = base_url
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.decisions = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="dashboard-traffic", daemon=True)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {WEB_KEY}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=10) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    self._visit(client, i)
                except httpx.HTTPError as exc:  # told by the test, which waits for counts
                    self.errors.append(repr(exc))
                self.stop.wait(0.025)

    def _visit(self, client: httpx.Client, i: int) -> None:
        rng, customer = self.rng, f"dash-{i}"
        answer = client.post(
            "/v1/decide",
            json={
                "customer_id": customer,
                "placement": "web.sim",
                "event": {"type": "page_view", "properties": {"page": "/"}},
                "context": {"device": rng.choice(["mobile", "desktop"])},
            },
        )
        answer.raise_for_status()
        decision = answer.json()
        self.decisions += 1
        clicked = bool(decision["actions"]) and rng.random() < 0.35
        if clicked:
            outcome = {
                "decision_id": decision["decision_id"],
                "action_id": decision["actions"][0]["action_id"],
                "type": "click",
            }
            client.post("/v1/outcomes", json=outcome).raise_for_status()
        if rng.random() < (0.4 if clicked else 0.08):  # within the 2-s attribution window
            purchase = {"order_id": f"o-{i}", "revenue": round(rng.uniform(10, 90), 2)}
            event = {"customer_id": customer, "type": "purchase", "properties": purchase}
            client.post("/v1/events", json=event).raise_for_status()


class _Receiver(BaseHTTPRequestHandler):
    """A marketing platform that accepts two deliveries in three and answers 503 to the third."""

    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with self.lock:
            type(self).count += 1
            fail = type(self).count % 3 == 0
        self.send_response(503 if fail else 200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def receiver() -> Iterator[str]:
    """A webhook receiver on a free loopback port, serving from a thread until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-receiver", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def traffic(base_url: str) -> Iterator[Traffic]:
    sender = Traffic(base_url)
    sender.thread.start()
    try:
        yield sender
    finally:
        sender.stop.set()
        sender.thread.join(timeout=15)


def wait_for_data(base_url: str, sender: Traffic, within_s: float = 60) -> dict[str, Any]:
    """Until the samples show decisions between two of them (the sampler writes one every 10 s, so this
    takes 10 to 20 s), deliveries were made, the models have learned, and the uplift report compares
    the groups (it leaves out windows closed less than 10 s ago)."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    deadline = time.monotonic() + within_s
    while True:
        samples = httpx.get(f"{base_url}/v1/admin/dashboard/data", headers=admin).json()["samples"]
        totals = [s["decisions"]["total"] for s in samples]
        learned = httpx.get(f"{base_url}/v1/models", headers=admin).json()["actions"]
        grew = any(b > a for a, b in itertools.pairwise(totals))
        latest = samples[-1] if samples else {}
        delivered = latest.get("deliveries", {}).get("delivered", 0) > 0
        compared = httpx.get(f"{base_url}/v1/reports/uplift", headers=admin).json()["overall"] is not None
        if grew and delivered and compared and any(m["observations"] > 0 for m in learned.values()):
            return {"samples": samples, "models": learned}
        if time.monotonic() > deadline:
            pytest.fail(
                f"no data for every chart within {within_s} s: decision totals {totals}, delivered "
                f"{delivered}, uplift compared {compared}, {sender.decisions} decisions sent, errors "
                f"{sender.errors[:3]}"
            )
        time.sleep(0.5)


@pytest.mark.slow
def test_the_dashboard_draws_live_data(browser: Any, artifacts: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    env = {
        "NBA_API_KEYS": f"{ADMIN_KEY}:admin,{WEB_KEY}:web",
        "NBA_LEARNER_PUBLISH_S": "0.2",
        "NBA_DASHBOARD_TEST_SECRET": SECRET,
        "NBA_DELIVERY_BACKOFF_S": "0.5",  # a failed delivery is retried, then dead, within the test
    }
    with receiver() as url:
        (tmp_path / "catalogue.yaml").write_text(CATALOGUE.read_text().replace("RECEIVER_URL", url))
        with (
            running_service("--policies", str(tmp_path), env=env) as service,
            traffic(service.base_url) as sender,
        ):
            check_the_page(browser, service.base_url, sender, artifacts, started)


def check_the_page(browser: Any, base_url: str, sender: Traffic, artifacts: Path, started: float) -> None:
    wait_for_data(base_url, sender)
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            # The browser logs every failed request: the 401 and 403 below are the key being asked for.
            if message.type == "error" and "status of 40" not in message.text
            else None
        ),
    )
    try:
        page.goto(f"{base_url}/dashboard")

        # No key yet: the page asks for one and shows nothing.
        page.wait_for_selector("#key-dialog[open]", timeout=10_000)
        assert "admin" in page.inner_text("#key-reason")
        assert page.inner_text("#stat-p50") == NO_VALUE
        # A key of too low a scope is told apart.
        page.fill("#key", WEB_KEY)
        page.click("#key-submit")
        # (A locator, not wait_for_function: that evaluates a string, which the page's CSP forbids.)
        page.locator("#key-reason", has_text="cannot read the dashboard").wait_for(timeout=10_000)
        assert page.is_visible("#key-dialog")
        page.fill("#key", ADMIN_KEY)
        page.click("#key-submit")
        page.wait_for_selector("body[data-loaded='true']", timeout=15_000)
        assert page.evaluate("sessionStorage.getItem('nba.dashboard.key')") == ADMIN_KEY

        # Every chart drawn with data (the learning curves need a second poll of /v1/models, 5 s on).
        for name in CHARTS:
            page.wait_for_selector(f'figure[data-chart="{name}"][data-state="ready"]', timeout=20_000)
        drawn = page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('figure[data-chart]')].map(f => [
                f.dataset.chart,
                {
                  paths: [...f.querySelectorAll('path.series')].map(p => p.getAttribute('d')),
                  bars: [...f.querySelectorAll('rect.bar')].map(r => Number(r.getAttribute('width'))),
                  intervals: f.querySelectorAll('g.interval path.errorbar').length,
                },
              ]))"""
        )
        for name in ("latency", "throughput", "learning", "triggers", "webhooks"):
            assert drawn[name]["paths"], f"{name}: no line drawn"
            # One point per 10-s interval: with two samples a series is one point (a dot), then a line.
            assert all(d.startswith("M") and "," in d for d in drawn[name]["paths"]), (name, drawn[name])
        for name in ("mix-action", "mix-group", "dropouts", "maturity"):
            assert any(width > 0 for width in drawn[name]["bars"]), f"{name}: no bar drawn"
        assert drawn["uplift"]["intervals"] >= 1, "uplift: no interval drawn"

        # The headline numbers.
        for tile in ("#stat-p50", "#stat-p95", "#stat-p99"):
            text = page.inner_text(tile)
            assert text.endswith(" ms"), (tile, text)
            assert float(text.split()[0]) > 0, (tile, text)
        assert float(page.inner_text("#stat-throughput")) > 0
        assert page.inner_text("#stat-fallback").endswith("%")
        assert page.inner_text("#stat-model").startswith("m-")

        # The page's quantiles are Prometheus's histogram_quantile; its rates allow for restarts.
        checks = page.evaluate(
            """async () => {
              const c = await import('/dashboard/static/compute.js');
              const h = {le: [0.001, 0.002, 0.005], counts: [10, 30, 40], count: 40};
              return {
                p50: c.histogramQuantile(0.5, h),
                p99: c.histogramQuantile(0.99, h),
                inf: c.histogramQuantile(0.99, {...h, count: 50}),
                none: c.histogramQuantile(0.5, {...h, counts: [0, 0, 0], count: 0}),
                reset: c.increase(120, 7),
                // Differences only within one service run (instance): a restart starts a new series.
                runs: c.analyse([
                  {t: 10, instance: 'a', decisions: {total: 5}},
                  {t: 20, instance: 'a', decisions: {total: 25}},
                  {t: 30, instance: 'b', decisions: {total: 3}},
                  {t: 40, instance: 'b', decisions: {total: 13}},
                ]).points.map(p => [p.t, p.decisions, p.throughput]),
                // The uplift chart's rows: overall, the actions, then each action's own holdout; a
                // comparison with no lift yet (one side empty) is left out.
                uplift: c.upliftRows({
                  overall: {slice: 'overall', conversion: {absolute: {value: 0.02}}},
                  actions: [
                    {slice: 'a', conversion: {absolute: {value: 0.01}}},
                    {slice: 'b', conversion: {absolute: {value: null}}},
                  ],
                  holdouts: [{slice: 'a', conversion: {absolute: {value: -0.01}}}],
                }).map(r => [r.label, r.conversion.absolute.value]),
              };
            }"""
        )
        assert checks["p50"] == pytest.approx(0.0015)
        assert checks["p99"] == pytest.approx(0.002 + 0.003 * 9.6 / 10)
        assert checks["inf"] == pytest.approx(0.005)  # beyond the last bound: the last bound
        assert checks["none"] is None
        assert checks["reset"] == 7
        assert checks["runs"] == [[20, 20, 2], [40, 10, 1]]
        assert checks["uplift"] == [["overall", 0.02], ["a", 0.01], ["a · own holdout", -0.01]]

        # Row labels fit their room: a long one is shortened in the middle, its tooltip whole.
        labels = page.evaluate(
            """() => [...document.querySelectorAll('text.label[data-room]')].map(t => [
              t.getComputedTextLength(), Number(t.dataset.room), t.firstChild.data,
              t.querySelector('title').textContent])"""
        )
        assert labels
        for width, room, shown, whole in labels:
            assert width <= room + 0.5, (shown, width, room)
            assert shown == whole or (shown[0] == whole[0] and shown[-1] == whole[-1] and "…" in shown)
        long = "a_follow_up_offer_with_a_long_identifier · own holdout"
        shown, whole, width, room = page.evaluate(
            """async (long) => {
              const charts = await import('/dashboard/static/charts.js');
              const box = document.createElement('div');
              box.style.width = '420px';
              document.body.appendChild(box);
              charts.intervalChart(box, {rows: [{label: long, value: 0.01, lo: -0.01, hi: 0.03}]});
              const t = box.querySelector('text.label');
              const out = [t.firstChild.data, t.querySelector('title').textContent,
                           t.getComputedTextLength(), Number(t.dataset.room)];
              box.remove();
              return out;
            }""",
            long,
        )
        assert whole == long
        assert "…" in shown, shown
        assert shown.startswith("a_follow"), shown
        assert shown.endswith("holdout"), shown
        assert width <= room + 0.5, (width, room)

        shot = artifacts / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\ndashboard screenshot: {shot} ({time.monotonic() - started:.1f} s)")
        assert not problems, problems
    finally:
        page.close()


@pytest.mark.slow
def test_an_open_service_without_traffic_says_so_instead_of_drawing(browser: Any) -> None:
    """No keys configured (loopback only): no key is asked for. No traffic: each chart says why it is
    empty rather than drawing an empty frame."""
    with running_service() as service:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(f"{service.base_url}/dashboard")
            page.wait_for_selector("body[data-loaded='true']", timeout=15_000)
            assert not page.is_visible("#key-dialog")
            assert "open service" in page.inner_text("#status")
            assert not page.is_visible("#forget-key")
            for name in ("latency", "throughput", "mix-action", "dropouts", "uplift", "learning"):
                figure = page.locator(f'figure[data-chart="{name}"]')
                assert figure.get_attribute("data-state") == "empty", name
                assert figure.locator("p.empty").inner_text().strip(), name
            latency = page.inner_text('figure[data-chart="latency"] p.empty')
            assert latency.startswith(("No samples yet", "Collecting", "No decisions")), latency
            assert page.inner_text("#stat-p99") == NO_VALUE
            assert page.inner_text("#stat-model") == "prior"
            assert not errors, errors
        finally:
            page.close()

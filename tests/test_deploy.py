"""deploy/ holds together, checked by reading it (no Docker here): every file parses, the dashboard and
the rules name only metrics and labels the service exposes, the compose file runs what docs/deploy.md
says it runs, and, where ``promtool`` is installed, the alerts fire when and only when they should."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "nba.json"

# The metric contract (docs/metrics.md): family name as exposed, type, labels. The labels are checked
# against what deploy/ selects and groups by; the names are the fallback when app.metrics cannot be
# imported.
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "nba_http_request_duration_seconds": ("histogram", frozenset({"route", "method", "status"})),
    "nba_decisions_total": ("counter", frozenset({"placement", "action", "group", "fallback", "source"})),
    "nba_decision_duration_seconds": ("histogram", frozenset({"placement", "source"})),
    "nba_funnel_dropouts_total": ("counter", frozenset({"placement", "reason"})),
    "nba_store_operation_duration_seconds": ("histogram", frozenset({"operation"})),
    "nba_store_errors_total": ("counter", frozenset({"operation"})),
    "nba_events_total": ("counter", frozenset({"result"})),
    "nba_model_snapshot_age_seconds": ("gauge", frozenset()),
    "nba_model_snapshot_info": ("gauge", frozenset({"version"})),
    "nba_learner_lag": ("gauge", frozenset({"stream"})),
    "nba_learner_pending_rewards": ("gauge", frozenset()),
    "nba_triggers_pending": ("gauge", frozenset()),
    "nba_triggers_due": ("gauge", frozenset()),
    "nba_triggers_fired_total": ("counter", frozenset({"trigger", "outcome"})),
    "nba_webhook_deliveries_total": ("counter", frozenset({"destination", "result"})),
    "nba_webhook_delivery_duration_seconds": ("histogram", frozenset({"destination"})),
    "nba_dead_letters": ("gauge", frozenset()),
    "nba_outbox_due": ("gauge", frozenset()),
    # Beside the contract: an addition.
    "nba_redis_config_problems": ("gauge", frozenset({"effect"})),
}
# Labels Prometheus adds (target labels) or that its functions make.
PROMETHEUS_LABELS = frozenset({"job", "instance", "le", "quantile"})
SERVICES = ("redis", "api", "learner", "prometheus", "grafana")

IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# The gauges app/metrics.py builds at scrape time: GaugeMetricFamily("nba_...", ...) or its _gauge helper.
AT_SCRAPE_GAUGE = re.compile(r'(?:GaugeMetricFamily|_gauge)\(\s*"(nba_[a-z0-9_]+)"')


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(DEPLOY / "compose.yaml")
    return document


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def rules(name: str) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(PROMETHEUS / name)["groups"] for rule in group["rules"]]


def panels() -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard, those inside collapsed rows too."""
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions() -> Iterator[tuple[str, str]]:
    """Every PromQL expression in deploy/, with where it is."""
    for name in ("rules.yml", "alerts.yml"):
        for rule in rules(name):
            yield f"{name}: {rule.get('record') or rule.get('alert')}", rule["expr"]
    for panel in panels():
        for target in panel.get("targets", []):
            yield f"nba.json: {panel['title']}", target["expr"]
    for annotation in dashboard()["annotations"]["list"]:
        if "expr" in annotation:
            yield f"nba.json: annotation {annotation['name']}", annotation["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            yield f"nba.json: variable {variable['name']}", variable["definition"]


def exposed(family: str, kind: str) -> set[str]:
    """The sample names a metric family shows in the text exposition (no ``_created``: the service turns
    them off)."""
    base = family.removesuffix("_total")
    if kind == "counter":
        return {f"{base}_total"}
    if kind == "histogram":
        return {f"{family}_bucket", f"{family}_count", f"{family}_sum"}
    if kind == "info":
        return {f"{family}_info"}
    return {family}


def service_names() -> set[str] | None:
    """The sample names app.metrics exposes: its module-level metrics, and the gauges it builds at scrape
    time (named by literals in its source). ``None`` when there is no app.metrics."""
    try:
        module = importlib.import_module("app.metrics")
    except ModuleNotFoundError as exc:
        if exc.name not in {"app.metrics", "prometheus_client"}:
            raise
        return None
    from prometheus_client.metrics import MetricWrapperBase

    names: set[str] = set()
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= exposed(family.name, family.type)
    source = Path(module.__file__ or "").read_text(encoding="utf-8")
    names.update(AT_SCRAPE_GAUGE.findall(source))
    return names


def used_names() -> dict[str, set[str]]:
    """Identifiers of the expressions (string literals removed): metric names and recorded names, with
    where each is used."""
    used: dict[str, set[str]] = {}
    for where, expr in expressions():
        for name in IDENTIFIER.findall(QUOTED.sub('""', expr)):
            used.setdefault(name, set()).add(where)
    return used


# ---- files parse ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        DEPLOY / "compose.yaml",
        PROMETHEUS / "prometheus.yml",
        PROMETHEUS / "rules.yml",
        PROMETHEUS / "alerts.yml",
        GRAFANA / "provisioning" / "datasources" / "prometheus.yml",
        GRAFANA / "provisioning" / "dashboards" / "nba.yml",
    ],
    ids=lambda path: str(path.relative_to(DEPLOY)),
)
def test_yaml_files_parse(path: Path) -> None:
    assert isinstance(load_yaml(path), dict)


# ---- metric names and labels ---------------------------------------------------------------------------


def test_every_metric_used_is_one_the_service_exposes() -> None:
    known = service_names()
    if known is None:  # the service has no app.metrics: hold deploy/ to the contract
        known = {name for family, (kind, _) in CONTRACT.items() for name in exposed(family, kind)}
    used = {name: where for name, where in used_names().items() if name.startswith("nba_")}
    assert used, "no nba_ metric found in deploy/: the parsing of expressions is broken"
    unknown = {name: sorted(where) for name, where in used.items() if name not in known}
    assert not unknown, f"metrics the service does not expose: {unknown}"


def test_the_service_exposes_the_contract() -> None:
    """The contract this file (and so deploy/) relies on is the service's: a renamed metric is caught here
    rather than as an empty dashboard panel."""
    known = service_names()
    if known is None:
        pytest.skip("app.metrics does not exist yet")
    contract = {name for family, (kind, _) in CONTRACT.items() for name in exposed(family, kind)}
    assert contract <= known, f"in the contract but not exposed: {sorted(contract - known)}"


def test_every_recorded_series_used_is_recorded() -> None:
    recorded = {rule["record"] for rule in rules("rules.yml")}
    used = {name: where for name, where in used_names().items() if ":" in name}
    missing = {name: sorted(where) for name, where in used.items() if name not in recorded}
    assert not missing, f"recorded series used but not recorded by rules.yml: {missing}"


def test_labels_selected_and_grouped_by_exist() -> None:
    contract_labels = frozenset().union(*(labels for _, labels in CONTRACT.values()))
    problems = []
    for where, expr in expressions():
        for name, matchers in SELECTOR.findall(expr):
            family = re.sub(r"_(bucket|count|sum)$", "", name)
            if family in CONTRACT:
                allowed = CONTRACT[family][1] | PROMETHEUS_LABELS
                for label in MATCHER_LABEL.findall(matchers):
                    if label not in allowed:
                        problems.append(f"{where}: {name} has no label {label}")
        for grouping in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in grouping.split(","))):
                if label not in contract_labels | PROMETHEUS_LABELS:
                    problems.append(f"{where}: no metric has the label {label}")
    assert not problems, "\n".join(problems)


# ---- Prometheus ----------------------------------------------------------------------------------------


def test_prometheus_scrapes_every_api_container_and_loads_the_rules() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    for name in config["rule_files"]:
        assert (PROMETHEUS / name).is_file(), name
    assert set(config["rule_files"]) == {"rules.yml", "alerts.yml"}
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "nba-api"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["api"]
    assert "api" in compose()["services"]
    assert discovery["port"] == Settings.model_fields["port"].default
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # Rates over 1m need at least four scrapes in the window.
    assert int(config["global"]["scrape_interval"].removesuffix("s")) <= 15


def test_alerts_are_actionable() -> None:
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in deploy_doc.splitlines()
        if line.startswith("#")
    }
    alerts = rules("alerts.yml")
    assert {alert["alert"] for alert in alerts} >= {
        "NbaApiDown",
        "NbaDecisionLatencyHigh",
        "NbaFallbackRateHigh",
        "NbaLearnerLagHigh",
        "NbaDeadLettersGrowing",
        "NbaStoreErrors",
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        annotations = alert["annotations"]
        assert annotations["summary"], alert["alert"]
        assert len(annotations["description"]) > 80, alert["alert"]
        page, _, anchor = annotations["runbook"].partition("#")
        assert page == "docs/deploy.md", alert["alert"]
        assert anchor in anchors, alert["alert"]


def test_latency_alert_is_the_decision_budget() -> None:
    (alert,) = [alert for alert in rules("alerts.yml") if alert["alert"] == "NbaDecisionLatencyHigh"]
    budget_s = Settings.model_fields["decision_budget_ms"].default / 1000
    assert alert["expr"].rstrip().endswith(f"> {budget_s}")
    assert alert["for"] == "5m"


# ---- Grafana -------------------------------------------------------------------------------------------


def test_dashboard_panels_have_a_datasource_a_query_and_a_unit() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    provisioned = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert variables["datasource"]["current"]["value"] in {source["uid"] for source in provisioned}
    shown = [panel for panel in panels() if panel["type"] != "row"]
    assert len(shown) >= 20
    for panel in shown:
        title = panel["title"]
        assert panel["type"] in {"timeseries", "stat"}, title
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target["refId"], title
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], title
        assert panel["fieldConfig"]["defaults"].get("unit"), title


def test_dashboard_layout_does_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_dashboard_thresholds_match_the_alerts() -> None:
    budget_s = Settings.model_fields["decision_budget_ms"].default / 1000
    expected = {"Decision p99": budget_s, "Fallback rate": 0.01, "Learner lag": 10000}
    by_title = {panel["title"]: panel for panel in panels()}
    for title, value in expected.items():
        steps = by_title[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert {"color": "red", "value": value} in steps, title


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "nba.yml")["providers"]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{providers[0]['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


# ---- compose -------------------------------------------------------------------------------------------


def default_of(value: object) -> str:
    """``${NAME:-default}`` as compose interpolates it when NAME is unset; anything else as it is."""
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}", str(value))
    return match.group(1) if match else str(value)


def test_compose_runs_the_services() -> None:
    services = compose()["services"]
    assert set(services) >= set(SERVICES)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


def test_compose_redis_persists() -> None:
    redis = compose()["services"]["redis"]
    assert redis["image"].startswith("redis:")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_compose_redis_is_what_the_service_checks_for() -> None:
    """The API checks Redis's settings at start and at every scrape (feature_store/redis_config.py): the
    compose file's Redis passes, memory included, so that its dashboard shows no problem."""
    from feature_store.redis_config import judge

    command = compose()["services"]["redis"]["command"]
    pairs = zip(command[1::2], command[2::2], strict=True)
    options = {name.removeprefix("--"): value for name, value in pairs}
    compact = {"hash-max-listpack-value", "zset-max-listpack-value"}
    assert {"appendonly", "maxmemory-policy", *compact} <= set(options)
    assert judge(options) == []


def test_compose_api() -> None:
    api = compose()["services"]["api"]
    assert (DEPLOY / api["build"]["context"]).resolve() == ROOT
    assert (ROOT / api["build"]["dockerfile"]).is_file()
    assert api["command"] == ["nba", "serve"]
    environment = api["environment"]
    assert environment["NBA_REDIS_URL"].startswith("redis://redis:")
    assert int(default_of(environment["NBA_WORKERS"])) > 1
    multiproc = environment["PROMETHEUS_MULTIPROC_DIR"]
    assert any(mount.split(":")[0] == multiproc for mount in api["tmpfs"])
    assert "uid=10001" in api["tmpfs"][0]  # the image's user (Dockerfile)
    assert "/livez" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["env_file"] == [".env"]


def test_compose_env_example_starts_the_service() -> None:
    """The example's keys are accepted, and with them the service listens on 0.0.0.0 (the image's host)."""
    settings_file = {}
    for line in (DEPLOY / ".env.example").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            settings_file[name] = value
    assert "NBA_PLATFORM_SECRET" in settings_file
    settings = Settings(_env_file=None, host="0.0.0.0", api_keys=settings_file["NBA_API_KEYS"])
    assert settings.api_keys
    assert settings.refuse_reason() is None
    assert ".env" in (DEPLOY / ".gitignore").read_text(encoding="utf-8").split()


def test_compose_one_learner() -> None:
    services = compose()["services"]
    learner = services["learner"]
    assert learner["command"] == ["nba", "learn"]
    assert learner["deploy"]["replicas"] == 1
    assert learner["image"] == services["api"]["image"]
    redis_url = services["api"]["environment"]["NBA_REDIS_URL"]
    assert learner["environment"]["NBA_REDIS_URL"] == redis_url
    # The image's health check calls /livez, which the learner does not serve.
    assert learner["healthcheck"] == {"disable": True}


def test_compose_prometheus_and_grafana_mount_deploy() -> None:
    services = compose()["services"]
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    datasource = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"


# ---- the alerts fire as documented (promtool, where installed) ----------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
def test_alerts_fire_as_documented(tmp_path: Path) -> None:
    """promtool's rule unit tests, on the real rules. Annotations are left out of the copy: the test is
    about when alerts fire and with which labels, not their wording."""
    shutil.copy(PROMETHEUS / "rules.yml", tmp_path / "rules.yml")
    alerts = load_yaml(PROMETHEUS / "alerts.yml")
    for group in alerts["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(alerts), encoding="utf-8")
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path / "alerts_test.yml")
    promtool = shutil.which("promtool") or "promtool"
    checks = (["check", "config", str(PROMETHEUS / "prometheus.yml")], ["test", "rules", "alerts_test.yml"])
    for args in checks:
        result = subprocess.run(
            [promtool, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr

"""Prometheus rules, Grafana dashboard, Dockerfiles and docs/DEPLOY.md agree with the plan."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.infra.hcl_config import ROOT, load_config

ALERTS = ROOT / "infra" / "observability" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "infra" / "observability" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "infra" / "observability" / "grafana" / "pinksea.json"
DEPLOY = ROOT / "docs" / "DEPLOY.md"
DOCKER = ROOT / "infra" / "docker"

# CloudWatch alarm (modules/observability) -> runbook anchor in docs/DEPLOY.md
ALARMS = {
    "api_5xx_rate": "api-5xx-rate",
    "api_latency_p99": "api-latency-p99",
    "consumer_lag": "consumer-lag",
    "rds_cpu": "rds-cpu",
    "rds_connections": "rds-connections",
    "rds_free_storage": "rds-free-storage",
    "redis_memory": "redis-memory",
    "s3_error_rate": "s3-error-rate",
}


@pytest.fixture(scope="module")
def rules() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _promtool() -> str | None:
    found = shutil.which("promtool")
    home = Path.home() / "go" / "bin" / "promtool"
    return found or (str(home) if home.exists() else None)


def _deploy_anchors() -> set[str]:
    anchors = set()
    for line in DEPLOY.read_text().splitlines():
        m = re.match(r"#+\s+(.*)$", line)
        if m:
            title = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower().replace("`", ""))
            anchors.add(title.replace(" ", "-"))
    return anchors


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(pinksea_[a-z0-9_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_every_cloudwatch_alarm_has_a_prometheus_twin(rules: dict[str, dict[str, Any]]) -> None:
    tf = load_config()
    for name in ALARMS:
        tf.resource("aws_cloudwatch_metric_alarm", name, "observability")
    twins = {r["labels"]["cloudwatch_alarm"] for r in rules.values()}
    assert twins == set(ALARMS.values())


def test_prometheus_thresholds_match_the_alarm_table(rules: dict[str, dict[str, Any]]) -> None:
    def threshold(alert: str) -> float:
        m = re.search(r">\s*([0-9.]+)\s*(\)|$)", rules[alert]["expr"].strip().splitlines()[-1])
        if not m:
            m = re.search(r">\s*([0-9.]+)", rules[alert]["expr"])
        assert m, alert
        return float(m.group(1))

    assert threshold("PinkseaApi5xxRateHigh") == 0.05
    assert threshold("PinkseaApiLatencyP99High") == 5
    assert "histogram_quantile(0.99" in rules["PinkseaApiLatencyP99High"]["expr"]
    assert threshold("PinkseaConsumerLagHigh") == 100
    assert rules["PinkseaConsumerLagHigh"]["for"] == "5m"
    assert threshold("PinkseaDatabaseCpuHigh") == 80
    assert rules["PinkseaDatabaseCpuHigh"]["for"] == "10m"
    assert threshold("PinkseaDatabaseConnectionsHigh") == 0.8
    assert threshold("PinkseaRedisMemoryHigh") == 0.8
    free = rules["PinkseaDatabaseFreeStorageLow"]
    assert re.search(r"<\s*5368709120$", free["expr"].strip()) and free["for"] == "5m"
    assert threshold("PinkseaS3ErrorRateHigh") == 0.01
    for alert in ("PinkseaApi5xxRateHigh", "PinkseaS3ErrorRateHigh"):
        assert "[5m]" in rules[alert]["expr"], alert
    assert "absent(pinksea_consumer_lag)" in rules["PinkseaConsumerLagMissing"]["expr"]


def test_every_alert_has_a_runbook_entry(rules: dict[str, dict[str, Any]]) -> None:
    anchors = _deploy_anchors()
    for alert, rule in rules.items():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("docs/DEPLOY.md#"), alert
        assert url.split("#", 1)[1] in anchors, f"{alert}: no heading for {url}"
    tf = load_config()
    for name, anchor in ALARMS.items():
        body = tf.resource("aws_cloudwatch_metric_alarm", name, "observability").body
        assert f"docs/DEPLOY.md#{anchor}" in body["alarm_description"], name
        assert anchor in anchors, anchor


def test_dashboard_has_the_required_panels(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["API", "GPU", "Business", "Infrastructure"]
    titles = {p["title"] for p in panels if p["type"] != "row"}
    required = {
        "API requests",
        "API latency p50 / p90 / p99",
        "API error rate (5xx)",
        "GPU utilization",
        "GPU memory",
        "GPU job time (billed)",
        "Queue depth and consumer lag",
        "Active users (24 h)",
        "Images per hour",
        "Credits used per hour",
        "MRR (USD)",
    }
    assert required <= titles, required - titles
    latency = next(p for p in panels if p["title"] == "API latency p50 / p90 / p99")
    quantiles = set()
    for target in latency["targets"]:
        m = re.search(r"histogram_quantile\((0\.\d+)", target["expr"])
        assert m, target["expr"]
        quantiles.add(m.group(1))
    assert quantiles == {"0.50", "0.90", "0.99"}
    # panels grouped under their row: the business row holds the business panels
    by_row: dict[str, list[str]] = {}
    current = ""
    for p in sorted(panels, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if p["type"] == "row":
            current = p["title"]
        else:
            by_row.setdefault(current, []).append(p["title"])
    assert {"Active users (24 h)", "Images per hour", "Credits used per hour", "MRR (USD)"} <= set(
        by_row["Business"]
    )
    assert len(by_row["Infrastructure"]) >= 4
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24


def test_every_metric_is_documented(
    rules: dict[str, dict[str, Any]], dashboard: dict[str, Any]
) -> None:
    exprs = [r["expr"] for r in rules.values()]
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set().union(*(_metric_names(e) for e in exprs))
    assert {
        "pinksea_api_requests_total",
        "pinksea_api_request_seconds",
        "pinksea_consumer_lag",
        "pinksea_relay_lag_events",
        "pinksea_queue_depth",
        "pinksea_gpu_job_seconds",
        "pinksea_credits_consumed_mc_total",
    } <= used
    table = DEPLOY.read_text()
    missing = sorted(m for m in used if f"`{m}`" not in table)
    assert missing == [], f"metrics missing from the table in docs/DEPLOY.md: {missing}"


@pytest.mark.skipif(
    _promtool() is None, reason="promtool not installed (infra/terraform/check.sh installs it)"
)
def test_promtool_rule_unit_tests() -> None:
    promtool = _promtool()
    assert promtool
    check = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", ALERTS_TEST.name],
        cwd=ALERTS_TEST.parent,
        capture_output=True,
        text=True,
    )
    assert test.returncode == 0, test.stdout + test.stderr


@pytest.mark.skipif(
    _promtool() is None, reason="promtool not installed (infra/terraform/check.sh installs it)"
)
def test_dashboard_queries_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    promtool = _promtool()
    assert promtool
    exprs = [
        t["expr"].replace("$__rate_interval", "5m")
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    ]
    doc = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"pinksea:panel_{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(doc))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# ----------------------------------------------------------------------------------------------
# Dockerfiles
# ----------------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _final_stage(path: Path) -> list[tuple[str, str]]:
    ins = _instructions(path)
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


def test_api_dockerfile() -> None:
    stage = _final_stage(DOCKER / "Dockerfile.api")
    assert re.match(r"python:3\.1[1-9]-slim", stage[0][1])
    users = [rest for op, rest in stage if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = " ".join(rest for op, rest in stage if op == "HEALTHCHECK")
    assert "/healthz" in health and "8080" in health
    cmd = json.loads(next(rest for op, rest in stage if op == "CMD"))
    assert cmd[:2] == ["pinksea", "api"] and "8080" in cmd


def test_gpu_worker_dockerfile() -> None:
    stage = _final_stage(DOCKER / "Dockerfile.gpu-worker")
    assert re.match(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-", stage[0][1])
    users = [rest for op, rest in stage if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(rest for op, rest in stage if op == "ENV")
    assert "PINKSEA_MODELS_DIR=/models" in env and "HF_HUB_OFFLINE=1" in env
    assert any(op == "VOLUME" and "/models" in rest for op, rest in stage)
    assert any(op == "HEALTHCHECK" for op, _ in stage)
    cmd = json.loads(next(rest for op, rest in stage if op == "CMD"))
    assert cmd[:2] == ["pinksea", "gpu-worker"]


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    entries = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", "tests", "infra/terraform", ".venv", "*.pem", ".env"} <= entries
    assert "pyproject.toml" not in entries

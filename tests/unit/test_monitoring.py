"""Monitoring: metric names and labels, the Prometheus configuration and alerts (checked by a real
promtool), and the Grafana dashboard, whose every PromQL expression must name exported metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from kdmkb.services import metrics
from kdmkb.services.prometheus import COORDINATOR_JOB, RAY_JOB, WORKERS_JOB, prometheus_config, prometheus_tool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "kdmkb.json"
COMPONENTS = ("worker", "coordinator")
NAME = re.compile(rf"kdmkb_(?:{'|'.join(COMPONENTS)})_[a-z0-9]+(?:_[a-z0-9]+)*_(?:{'|'.join(metrics.UNITS)})")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# PromQL words that are not metric names (functions are recognised by their parenthesis).
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "Inf", "NaN"}
SYNTHETIC = {"up"}  # written by Prometheus itself for every target


def declared() -> list[MetricWrapperBase]:
    return [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]


def families() -> list:
    return [family for metric in declared() for family in metric.describe()]


def exported_series() -> set[str]:
    """Every series name a scrape of kdmkb shows (a counter as ``_total``, a histogram as its three series)."""
    return {family.name + suffix for family in families() for suffix in SUFFIXES[family.type]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label matchers,
    ranges, grouping label lists, functions and keywords are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    words = re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", expr)
    return {m.group(1) for m in words if not m.group(2) and m.group(1) not in KEYWORDS}


def dashboard_expressions() -> list[str]:
    """Every panel's PromQL, and the template variables' (Grafana's ``label_values(EXPR, label)``)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
        assert match, f"template variable {variable['name']}: not a label_values() query"
        exprs.append(match.group(1))
    return exprs


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"] for rule in group["rules"]]


def promtool(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([str(prometheus_tool("promtool")), *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# -- metrics ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", families(), ids=lambda family: family.name)
def test_metric_names_follow_the_convention_and_have_a_description(family):
    assert NAME.fullmatch(family.name), f"{family.name} is not kdmkb_<component>_<what>_<unit> with a unit from metrics.UNITS"
    assert family.documentation.endswith(".") and len(family.documentation) > 15, f"{family.name}: describe it in a sentence"


def test_every_worker_metric_is_per_kb_and_per_job():
    for metric in declared():
        if metric._name.startswith("kdmkb_worker_"):
            assert {"kb", "job"} <= set(metric._labelnames), metric._name


def test_the_issue_s_metrics_are_exported():
    series = exported_series()
    for name in (
        "kdmkb_worker_training_loss",
        "kdmkb_worker_distillation_loss",
        "kdmkb_worker_training_steps_per_second",
        "kdmkb_worker_training_triples_per_second",
        "kdmkb_worker_mrr_ratio",
        "kdmkb_worker_hits_at_10_ratio",
        "kdmkb_worker_soft_label_sent_bytes_total",
        "kdmkb_worker_soft_label_received_messages_total",
        "kdmkb_coordinator_round_duration_seconds_bucket",
        "kdmkb_coordinator_rpc_requests_total",
        "kdmkb_coordinator_job_state",
    ):
        assert name in series
    assert set(metrics.RPC_SECONDS._labelnames) == set(metrics.RPC_REQUESTS._labelnames) == {"method", "code"}


def test_metrics_address_advertised_for_a_wildcard_bind_is_the_ray_node_s(monkeypatch):
    import ray.util

    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.0.0.7")
    monkeypatch.delenv(metrics.ADVERTISE_HOST_ENV, raising=False)
    monkeypatch.delenv(metrics.BIND_HOST_ENV, raising=False)
    assert metrics.advertised_host() == "127.0.0.1"
    monkeypatch.setenv(metrics.BIND_HOST_ENV, "192.168.1.5")
    assert metrics.advertised_host() == "192.168.1.5"
    monkeypatch.setenv(metrics.BIND_HOST_ENV, "0.0.0.0")
    assert metrics.advertised_host() == "10.0.0.7"
    monkeypatch.setenv(metrics.ADVERTISE_HOST_ENV, "worker-3.example")
    assert metrics.advertised_host() == "worker-3.example"


# -- Prometheus ---------------------------------------------------------------------------------
def test_compose_prometheus_config_is_the_generated_one_and_valid():
    path = DEPLOY / "prometheus" / "prometheus.yml"
    ray_nodes = ["ray-head:8080", "ray-kb1:8080", "ray-kb2:8080", "coordinator:8080"]  # docker-compose.yml's Ray nodes (tests/unit/test_compose_file.py)
    assert yaml.safe_load(path.read_text()) == prometheus_config("coordinator:9400", "/var/lib/kdmkb/prometheus_targets.json", ["alerts.yml"], ray_nodes=ray_nodes)
    assert "SUCCESS" in promtool("check", "config", path.name, cwd=path.parent)


def test_local_cluster_prometheus_config_is_valid(tmp_path):
    targets = tmp_path / "prometheus_targets.json"
    targets.write_text(json.dumps([{"targets": ["127.0.0.1:9501"], "labels": {"kb": "west"}}]))
    ray_targets = tmp_path / "prom_metrics_service_discovery.json"  # as Ray's dashboard writes it
    ray_targets.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": ["127.0.0.1:8080"]}]))
    config = prometheus_config("127.0.0.1:9400", str(targets), [str(DEPLOY / "prometheus" / "alerts.yml")], interval="1s", ray_targets_file=str(ray_targets))
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert [job["job_name"] for job in config["scrape_configs"]] == [COORDINATOR_JOB, WORKERS_JOB, RAY_JOB]
    assert config["scrape_configs"][-1]["file_sd_configs"][0]["files"] == [str(ray_targets)]


def test_alert_rules_pass_promtool_and_fire_when_they_should():
    folder = DEPLOY / "prometheus"
    assert "SUCCESS: 4 rules found" in promtool("check", "rules", "alerts.yml", cwd=folder)
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml", cwd=folder)
    assert {rule["alert"] for rule in alert_rules()} == {"KdmkbJobFailed", "KdmkbLossNotFinite", "KdmkbNoProgress", "KdmkbTargetDown"}


def test_alerts_name_only_exported_metrics():
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names and names <= exported_series() | SYNTHETIC, f"{rule['alert']}: {names - exported_series() - SYNTHETIC}"


# -- Grafana ------------------------------------------------------------------------------------
def test_metric_names_are_parsed_out_of_promql():
    expr = 'histogram_quantile(0.95, sum by (le, method) (rate(a_bucket{code!="OK", x=~"$job"}[$__rate_interval]))) / on(job) b offset 5m > bool 1e3 or c'
    assert metric_names(expr) == {"a_bucket", "b", "c"}


def test_dashboard_expressions_name_only_exported_metrics():
    exprs = dashboard_expressions()
    exported = exported_series() | SYNTHETIC
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{sorted(names - exported)} in {expr!r} are not exported by services/metrics.py"
        used |= names
    for topic in ("training_loss", "distillation_loss", "mrr", "soft_label", "round_duration", "rpc_requests"):
        assert any(topic in name for name in used), f"the dashboard shows no {topic} metric"


def test_dashboard_expressions_are_valid_promql(tmp_path):
    """promtool parses them, as recording rules, with Grafana's variables filled in."""
    grafana = {"$__rate_interval": "1m", "$job": ".*", "$kb": ".*"}
    rules = []
    for index, expr in enumerate(dashboard_expressions()):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:expr_{index}", "expr": expr})
    (tmp_path / "dashboard.rules.yml").write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(tmp_path / "dashboard.rules.yml"))


def test_grafana_provisioning_points_at_the_dashboard():
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    (source,) = [s for s in sources if s["type"] == "prometheus"]
    providers = yaml.safe_load((provisioning / "dashboards" / "kdmkb.yml").read_text())["providers"]
    (provider,) = providers
    assert provider["type"] == "file" and Path(provider["options"]["path"]).is_absolute()
    dashboard = json.loads(DASHBOARD.read_text())
    sources_used = {json.dumps(panel["datasource"], sort_keys=True) for panel in dashboard["panels"] if "datasource" in panel}
    assert sources_used == {json.dumps({"type": "prometheus", "uid": source["uid"]}, sort_keys=True)}
    compose = DEPLOY.parent / "docker-compose.yml"
    grafana = yaml.safe_load(compose.read_text()).get("services", {}).get("grafana") if compose.is_file() else None
    for volume in (grafana or {}).get("volumes", []):  # when compose runs Grafana, it mounts the dashboards where the provider reads
        source_dir, target = str(volume).split(":")[:2]
        if source_dir.rstrip("/").endswith("deploy/grafana/dashboards"):
            assert target == provider["options"]["path"]

"""docker-compose.yml and the image keep the promises tests/e2e relies on, checked without an engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from kdmkb.services.ray_runtime import WORKER_ENV

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KB_NODES = {name: service for name, service in SERVICES.items() if re.fullmatch(r"ray-kb\d+", name)}


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """Mount target -> (source, mode) of a service's short-syntax volumes; a source may hold ``${VAR:-default}``."""
    found = {}
    for volume in service.get("volumes", []):
        parts = volume.rsplit(":", 2)
        if parts[-1] not in ("ro", "rw"):
            parts = [*volume.rsplit(":", 1), "rw"]
        source, target, mode = parts
        found[target] = (source, mode)
    return found


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_health_check_restarts_and_waits_for_healthy_dependencies(name):
    service = SERVICES[name]
    assert service["healthcheck"]["test"] and service["restart"] == "unless-stopped"
    assert all(dependency["condition"] == "service_healthy" for dependency in service.get("depends_on", {}).values())
    assert all(port.startswith("127.0.0.1:") for port in service.get("ports", []))


def test_no_default_service_can_be_pulled():
    # `up --no-build` refuses a missing image of a service that has a build section (compose 1.29);
    # newer compose reads pull_policy. Only the opt-in grafana profile names a registry image.
    for name, service in SERVICES.items():
        if "profiles" not in service:
            assert service["pull_policy"] == "never" and service["build"]["dockerfile"], name
            assert (REPO / service["build"]["dockerfile"]).is_file(), name


def test_each_kb_node_offers_its_resource_and_is_the_only_one_with_its_data():
    assert len(KB_NODES) >= 2
    for name, service in KB_NODES.items():
        kb = name.removeprefix("ray-")
        resources = next(arg.split("=", 1)[1] for arg in service["command"] if arg.startswith("--resources="))
        assert json.loads(resources) == {f"kb:{kb}": 1}
        assert mounts(service)[f"/data/{kb}"][1] == "ro"
        assert service["environment"]["KDMKB_METRICS_ADVERTISE_HOST"] == name
        assert [other for other, s in SERVICES.items() if f"/data/{kb}" in mounts(s)] == [name]


def test_prometheus_reads_the_scrape_targets_the_coordinator_writes():
    data_dir = "/var/lib/kdmkb"
    assert f"--data-dir {data_dir}" in SERVICES["coordinator"]["command"][-1]
    state, _ = mounts(SERVICES["coordinator"])[data_dir]
    assert mounts(SERVICES["prometheus"])[data_dir] == (state, "ro")
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    files = [path for job in config["scrape_configs"] for sd in job.get("file_sd_configs", []) for path in sd["files"]]
    assert files and all(path.startswith(f"{data_dir}/") for path in files)


def test_grafana_mounts_the_dashboards_where_its_provisioning_looks():
    providers = yaml.safe_load((REPO / "deploy" / "grafana" / "provisioning" / "dashboards" / "kdmkb.yml").read_text())["providers"]
    grafana = mounts(SERVICES["grafana"])
    assert {provider["options"]["path"] for provider in providers} <= set(grafana)
    assert grafana["/etc/grafana/provisioning"] == ("./deploy/grafana/provisioning", "ro")


def test_the_image_sets_the_environment_ray_workers_need():
    # Ray workers inherit their node's environment, not the coordinator's.
    dockerfile = (REPO / "deploy" / "images" / "kdmkb.Dockerfile").read_text()
    env = dict(re.findall(r"^\s*(?:ENV\s+)?([A-Z_]+)=(\S+?)\s*\\?$", dockerfile, flags=re.MULTILINE))
    assert {key: env.get(key) for key in WORKER_ENV} == WORKER_ENV


def test_the_coordinator_reads_kb_data_only_under_its_data_root_and_is_insecure_only_by_default():
    command = SERVICES["coordinator"]["command"][-1]
    root = re.search(r"--data-root (\S+)", command).group(1)
    data = [target for service in SERVICES.values() for target in mounts(service) if target.startswith("/data")]
    assert len(data) >= 3 and all(target.startswith(f"{root}/") for target in data), data
    assert command.endswith("${KDMKB_SECURITY:---insecure}")  # a secured deployment sets KDMKB_SECURITY (deploy/README.md)


def test_prometheus_scrapes_every_ray_node_s_own_metrics_and_the_head_publishes_its_dashboard_on_loopback():
    commands = {name: " ".join(service["command"]) for name, service in SERVICES.items() if "command" in service}
    ray_nodes = {name: re.search(r"--metrics-export-port=(\d+)", command) for name, command in commands.items() if "ray start" in command}
    assert set(ray_nodes) == {"ray-head", "coordinator", *KB_NODES} and all(ray_nodes.values()), ray_nodes
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [ray_job] = [job for job in config["scrape_configs"] if job["job_name"] == "ray"]
    assert sorted(target for static in ray_job["static_configs"] for target in static["targets"]) == sorted(f"{name}:{port.group(1)}" for name, port in ray_nodes.items())
    head = commands["ray-head"]
    assert "--include-dashboard=true" in head and "--dashboard-host=0.0.0.0" in head  # reachable only through the published port
    dashboard_port = re.search(r"--dashboard-port=(\d+)", head).group(1)
    assert SERVICES["ray-head"]["ports"] == [f"127.0.0.1:${{KDMKB_RAY_DASHBOARD_PORT:-{dashboard_port}}}:{dashboard_port}"]

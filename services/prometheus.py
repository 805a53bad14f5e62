"""The Prometheus server kdmkb is monitored with: its scrape configuration and where its binaries are.

One function builds the configuration for both deployments: deploy/prometheus/prometheus.yml
(compose; a test holds the file equal to it) and the one ``kdmkb cluster up`` writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from kdmkb.services.errors import ConfigError, PreconditionError

REPO = Path(__file__).resolve().parents[1]
# `make tools` unpacks Debian's prometheus package here.
PROJECT_TOOLS = REPO / ".tools" / "prometheus" / "usr" / "bin"
TOOLS_ENV = "KDMKB_PROMETHEUS_BIN"
# deploy/ is the package data of kdmkb.deploy, a sibling of kdmkb.services both in the repository
# (deploy/, services/) and installed (kdmkb/deploy/, kdmkb/services/): one copy for compose and wheels.
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
COORDINATOR_JOB = "kdmkb-coordinator"
WORKERS_JOB = "kdmkb-workers"
RAY_JOB = "ray"


def prometheus_config(coordinator: str, targets_file: str, rule_files: list[str], interval: str = "15s", ray_targets_file: str | None = None, ray_nodes: list[str] | None = None) -> dict:
    """Scrapes the coordinator at ``coordinator`` and every KB worker listed in ``targets_file``,
    and, as scrape job ``ray``, every Ray node's own metrics: those listed in ``ray_targets_file``
    and the ``host:port`` addresses in ``ray_nodes``.

    The coordinator rewrites ``targets_file`` (file_sd form) whenever a KB's worker is started,
    so a worker that moves to another node or port is still scraped. ``honor_labels`` keeps
    the metrics' own ``job`` label (the kdmkb job id) instead of the scrape job's name. Ray's
    dashboard keeps ``ray_targets_file`` (``prom_metrics_service_discovery.json`` in its temp dir)
    listing each live node's metrics agent; ``ray_nodes`` suits nodes with fixed names and
    ``--metrics-export-port`` (compose), where a node that is gone stays listed and shows ``up == 0``.
    """
    scrape = [
        {"job_name": COORDINATOR_JOB, "honor_labels": True, "static_configs": [{"targets": [coordinator]}]},
        {"job_name": WORKERS_JOB, "honor_labels": True, "file_sd_configs": [{"files": [targets_file], "refresh_interval": "30s"}]},
    ]
    ray = {}
    if ray_nodes:
        ray["static_configs"] = [{"targets": list(ray_nodes)}]
    if ray_targets_file:
        ray["file_sd_configs"] = [{"files": [ray_targets_file], "refresh_interval": "30s"}]
    if ray:
        scrape.append({"job_name": RAY_JOB, **ray})
    return {"global": {"scrape_interval": interval, "evaluation_interval": interval}, "rule_files": list(rule_files), "scrape_configs": scrape}


def user_tools_dir() -> Path:
    """Where ``kdmkb tools prometheus`` unpacks Prometheus by default: ``$XDG_DATA_HOME/kdmkb/prometheus``."""
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "kdmkb" / "prometheus"


def prometheus_tool(name: str) -> Path:
    """``prometheus`` or ``promtool``: from ``$KDMKB_PROMETHEUS_BIN``, else the project's ``make tools``
    or ``kdmkb tools prometheus``'s folder; then the PATH."""
    folders = [Path(os.environ[TOOLS_ENV])] if os.environ.get(TOOLS_ENV) else [PROJECT_TOOLS, user_tools_dir() / "usr" / "bin"]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ConfigError(f"{name} not found in {', '.join(map(str, folders))} or on the PATH; run `kdmkb tools prometheus` (or `make tools` in a clone), or set {TOOLS_ENV} to the folder holding it")


def install_prometheus(folder: Path | None = None) -> Path:
    """Unpacks Debian's prometheus package (``apt-get download``, ``dpkg -x``; nothing is installed
    system-wide) into ``folder`` (default :func:`user_tools_dir`), replacing what was there; returns
    the folder of the binaries. As root, ``apt-get update`` runs first when the package is not found."""
    folder = Path(folder or user_tools_dir()).resolve()
    missing = [command for command in ("apt-get", "dpkg") if not shutil.which(command)]
    if missing:
        raise PreconditionError(f"{' and '.join(missing)} not found: this needs Debian or Ubuntu; elsewhere get Prometheus from https://prometheus.io/download/ and set {TOOLS_ENV} to the folder holding prometheus and promtool")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kdmkb-prometheus-", dir=folder.parent) as work:
        download = _run_tool(["apt-get", "download", "prometheus"], work)
        if download.returncode != 0 and os.geteuid() == 0:
            _run_tool(["apt-get", "update"], work)
            download = _run_tool(["apt-get", "download", "prometheus"], work)
        if download.returncode != 0:
            raise PreconditionError(f"`apt-get download prometheus` failed: {download.stderr.strip()[-500:]}; run `apt-get update` as root first if the package is not known yet")
        [package] = Path(work).glob("prometheus_*.deb")
        unpacked = Path(work) / "unpacked"
        done = _run_tool(["dpkg", "-x", str(package), str(unpacked)], work)
        if done.returncode != 0 or not (unpacked / "usr" / "bin" / "prometheus").is_file():
            raise PreconditionError(f"`dpkg -x {package.name}` did not unpack usr/bin/prometheus: {done.stderr.strip()[-500:]}")
        shutil.rmtree(folder, ignore_errors=True)
        unpacked.rename(folder)
    return folder / "usr" / "bin"


def _run_tool(command: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)

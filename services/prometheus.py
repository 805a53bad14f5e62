"""The Prometheus server kdmkb is monitored with: its scrape configuration and where its binaries are.

One function builds the configuration for both deployments: deploy/prometheus/prometheus.yml
(compose; a test holds the file equal to it) and the one ``kdmkb cluster up`` writes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kdmkb.services.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
# `make tools` unpacks Debian's prometheus package here.
PROJECT_TOOLS = REPO / ".tools" / "prometheus" / "usr" / "bin"
TOOLS_ENV = "KDMKB_PROMETHEUS_BIN"
# deploy/ is the package data of kdmkb.deploy, a sibling of kdmkb.services both in the repository
# (deploy/, services/) and installed (kdmkb/deploy/, kdmkb/services/): one copy for compose and wheels.
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
COORDINATOR_JOB = "kdmkb-coordinator"
WORKERS_JOB = "kdmkb-workers"


def prometheus_config(coordinator: str, targets_file: str, rule_files: list[str], interval: str = "15s") -> dict:
    """Scrapes the coordinator at ``coordinator`` and every KB worker listed in ``targets_file``.

    The coordinator rewrites ``targets_file`` (file_sd form) whenever a KB's worker is started,
    so a worker that moves to another node or port is still scraped. ``honor_labels`` keeps
    the metrics' own ``job`` label (the kdmkb job id) instead of the scrape job's name.
    """
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": list(rule_files),
        "scrape_configs": [
            {"job_name": COORDINATOR_JOB, "honor_labels": True, "static_configs": [{"targets": [coordinator]}]},
            {"job_name": WORKERS_JOB, "honor_labels": True, "file_sd_configs": [{"files": [targets_file], "refresh_interval": "30s"}]},
        ],
    }


def prometheus_tool(name: str) -> Path:
    """``prometheus`` or ``promtool``: from ``$KDMKB_PROMETHEUS_BIN``, the project's ``make tools``, or the PATH."""
    folders = [Path(os.environ[TOOLS_ENV])] if os.environ.get(TOOLS_ENV) else [PROJECT_TOOLS]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ConfigError(f"{name} not found in {', '.join(map(str, folders))} or on the PATH; run `make tools` (unpacks Debian's prometheus package into .tools/)")

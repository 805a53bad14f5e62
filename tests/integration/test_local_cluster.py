"""`kdmkb cluster up/down`: a Ray head and one Ray node per KB as separate `ray start` processes, the
coordinator and a real Prometheus; a cooperative job runs across the nodes and its per-KB series
are read back from Prometheus with PromQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from kdmkb.services.client import CoordinatorClient
from kdmkb.services.cluster import STATE_FILE, _session_members
from kdmkb.services.config import JobFile
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.split import job_file_dict, split_dataset

PLACEMENTS = Path(__file__).parent / "scripts" / "cluster_placements.py"
KBS = ("west", "east")
WORKER = {"dim": 16, "batch_size": 64, "negatives": 8, "learning_rate": 0.01}
JOB = {"rounds": 3, "steps_per_round": 5, "eval_every": 1, "checkpoint_every": 0, "seed": 0, "top_k": 4}


def kdmkb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdmkb", *args], capture_output=True, text=True, timeout=300)


def promql(prometheus: str, query: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for_series(prometheus: str, query: str, expected: int, timeout: float = 30.0) -> list[dict]:
    """The query's result once it has ``expected`` series (Prometheus scrapes every second here)."""
    deadline = time.monotonic() + timeout
    while len(result := promql(prometheus, query)) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return result


def live_processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = entry.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(f"{entry.parent.name}: {command[:200]}")
    return found


@pytest.mark.slow
def test_local_cluster_runs_a_job_across_ray_nodes_and_prometheus_sees_every_kb(tmp_path):
    summary = split_dataset(dataset_dir("nations"), tmp_path / "kbs", kbs=2, seed=0, names=list(KBS))
    spec = job_file_dict(summary, worker_settings=WORKER, job=JOB, relative=False)
    for kb in spec["kb"]:
        kb["resource"] = f"kb:{kb['name']}"
    state_dir = tmp_path / "cluster"
    ports = ["--ray-port", "0", "--coordinator-port", "0", "--metrics-port", "0", "--prometheus-port", "0", "--dashboard-port", "0"]
    up = kdmkb("cluster", "up", "--kbs", ",".join(KBS), "--state-dir", str(state_dir), *ports, "--scrape-interval", "1s", "--data-root", str(tmp_path / "kbs"))
    state = json.loads((state_dir / STATE_FILE).read_text()) if (state_dir / STATE_FILE).is_file() else None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert [p["name"] for p in state["processes"]] == ["ray-head", "ray-node-west", "ray-node-east", "coordinator", "prometheus"]

        client = CoordinatorClient(state["coordinator"], timeout=120)
        job = client.run(client.submit(JobFile.model_validate(spec)).job_id)
        client.close()
        assert job.error == "" and job.round == JOB["rounds"]

        placements = subprocess.run([sys.executable, str(PLACEMENTS), state["ray_address"]], capture_output=True, text=True, timeout=120)
        assert placements.returncode == 0, placements.stderr[-3000:]
        assert json.loads(placements.stdout.strip().splitlines()[-1]) == {kb: [f"kb:{kb}"] for kb in KBS}

        query = f'kdmkb_worker_training_steps_total{{job="{job.job_id}"}}'
        series = wait_for_series(state["prometheus"], query, len(KBS))
        assert {s["metric"]["kb"] for s in series} == set(KBS), series
        assert all(float(s["value"][1]) == JOB["rounds"] * JOB["steps_per_round"] for s in series), series
        print(f"PromQL {query} -> {json.dumps([{'metric': s['metric'], 'value': s['value'][1]} for s in series])}")
        assert len(wait_for_series(state["prometheus"], 'up{job="kdmkb-workers"} == 1', len(KBS))) == len(KBS)
        assert wait_for_series(state["prometheus"], f'kdmkb_coordinator_job_state{{job="{job.job_id}", state="SUCCEEDED"}} == 1', 1)
        # Ray's own metrics beside kdmkb's: every node's metrics agent, from the dashboard's targets file.
        assert len(wait_for_series(state["prometheus"], 'up{job="ray"} == 1', 1 + len(KBS), timeout=60)) >= 1 + len(KBS)
        with urllib.request.urlopen(f"{state['ray_dashboard']}/api/version", timeout=10) as response:
            assert response.status == 200 and "ray_version" in json.load(response)
    finally:
        down = kdmkb("cluster", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (state_dir / STATE_FILE).exists()
    assert [pid for p in state["processes"] for pid in _session_members(p["pid"])] == []
    assert live_processes_mentioning(state["ray_temp_dir"]) == live_processes_mentioning(str(state_dir)) == []

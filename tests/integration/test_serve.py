"""The CLI against a real `kdmkb serve` process: run, status, predict, export, metrics, and a restart."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from kdmkb.services.datasets import dataset_dir
from kdmkb.services.split import split_dataset, write_job_file

WORKER = {"dim": 16, "batch_size": 64, "negatives": 8, "learning_rate": 0.01}
JOB = {"rounds": 3, "steps_per_round": 5, "checkpoint_every": 1, "seed": 0, "top_k": 4}
LISTENING = re.compile(r"coordinator listening on (\S+); metrics on :(\d+)/metrics")


def kdmkb(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdmkb", *args], capture_output=True, text=True, timeout=timeout)


class Server:
    """A `kdmkb serve` subprocess on 127.0.0.1, port 0; its address is read from what it prints."""

    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            # the test's folder holds the KBs too: it is the data root
            [sys.executable, "-m", "kdmkb", "serve", "--address", "127.0.0.1:0", "--metrics-port", "0", "--data-dir", str(data_dir), "--data-root", str(data_dir.parent)],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "KDMKB_LOG_LEVEL": "WARNING"},
        )
        deadline = time.monotonic() + 120
        for line in self.process.stderr:
            match = LISTENING.search(line)
            if match:
                self.address, self.metrics_port = match.group(1), int(match.group(2))
                break
            if time.monotonic() > deadline:
                break
        else:
            raise AssertionError("kdmkb serve ended before listening")
        assert hasattr(self, "address"), "kdmkb serve did not report its address in time"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        return response.read().decode()


@pytest.mark.slow
def test_cli_against_a_served_coordinator(tmp_path):
    summary = split_dataset(dataset_dir("nations"), tmp_path / "kbs", kbs=2, seed=0, names=["west", "east"])
    job_file = write_job_file(summary, worker_settings=WORKER, job=JOB)
    data_dir = tmp_path / "state"
    server = Server(data_dir)
    try:
        ran = kdmkb("run", str(job_file), "--coordinator", server.address, "--report", str(tmp_path / "report.json"))
        assert ran.returncode == 0, ran.stderr
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["strategy"] == "cooperative" and set(report["kbs"]) == {"west", "east"}

        status = kdmkb("status", "--coordinator", server.address)
        assert status.returncode == 0 and "SUCCEEDED" in status.stdout and report["job_id"] in status.stdout

        predicted = kdmkb("predict", "west", "usa", "treaties", "-k", "5", "--coordinator", server.address)
        assert predicted.returncode == 0, predicted.stderr
        assert len(predicted.stdout.strip().splitlines()) == 5
        unknown = kdmkb("predict", "west", "atlantis", "treaties", "--coordinator", server.address)
        assert unknown.returncode == 3 and "NOT_FOUND" in unknown.stderr and "atlantis" in unknown.stderr

        exported = kdmkb("export", "east", "--out", str(tmp_path / "east.npz"), "--coordinator", server.address)
        assert exported.returncode == 0, exported.stderr
        arrays = np.load(tmp_path / "east.npz")
        assert arrays["entity_vectors"].shape == (14, 16) and len(arrays["entity_names"]) == 14

        coordinator_metrics = scrape(f"127.0.0.1:{server.metrics_port}")
        assert 'kdmkb_coordinator_rpc_requests_total{code="OK",method="CreateJob"}' in coordinator_metrics
        assert "kdmkb_coordinator_round_duration_seconds_count" in coordinator_metrics
        targets = json.loads((data_dir / "prometheus_targets.json").read_text())
        assert {t["labels"]["kb"] for t in targets} == {"west", "east"}
        for target in targets:
            worker_metrics = scrape(target["targets"][0])
            kb = target["labels"]["kb"]
            steps = re.search(rf'kdmkb_worker_training_steps_total{{job="{report["job_id"]}",kb="{kb}"}} (\S+)', worker_metrics)
            assert steps and float(steps.group(1)) == JOB["rounds"] * JOB["steps_per_round"], worker_metrics[:2000]
            assert f'kdmkb_worker_soft_label_sent_bytes_total{{job="{report["job_id"]}",kb="{kb}"' in worker_metrics
    finally:
        server.stop()

    restarted = Server(data_dir)  # same data dir: registrations and jobs come back
    try:
        status = kdmkb("status", report["job_id"], "--coordinator", restarted.address)
        assert status.returncode == 0 and "SUCCEEDED" in status.stdout
        assert f"{report['kbs']['west']['mrr']:.4f}" in status.stdout
    finally:
        restarted.stop()

"""A KB that names a Ray resource runs on the node that offers it (the node holding its data)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kdmkb.services.datasets import dataset_dir
from kdmkb.services.split import split_dataset

SCRIPT = Path(__file__).parent / "scripts" / "two_node_job.py"


@pytest.mark.slow
def test_each_kb_runs_on_the_node_with_its_resource(tmp_path):
    split_dataset(dataset_dir("nations"), tmp_path / "kbs", kbs=2, seed=0, names=["west", "east"])
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "kbs")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["state"] == "SUCCEEDED", result["error"]
    assert result["placed_on"] == result["data_node"] and len(set(result["placed_on"].values())) == 2
    assert all(size > 0 for size in result["received"].values())  # soft labels crossed between the nodes
    assert "resource" in result["missing_resource"] and "kb:nowhere" in result["missing_resource"]

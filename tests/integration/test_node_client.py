"""examples/node: a Node.js client (@grpc/grpc-js, @grpc/proto-loader) drives a job end to end on a real coordinator.

The example is copied beside a copy of ``protos/`` (where it looks for them), with the pinned
packages that ``make test`` installs into examples/node/node_modules before the suite enters its
loopback-only namespace (where no registry can be reached).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kdmkb.services.datasets import dataset_dir
from kdmkb.services.split import split_dataset

REPO = Path(__file__).resolve().parents[2]
NAMES = ("js-left", "js-right")
NODE_SECONDS = 120


@pytest.fixture(scope="module")
def node_example(tmp_path_factory) -> Path:
    """examples/node with its packages installed, in a temporary copy of the repository's layout."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are needed to run the Node.js example")
    root = tmp_path_factory.mktemp("node-client")
    shutil.copytree(REPO / "protos", root / "protos", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    example = root / "examples" / "node"
    installed = REPO / "examples" / "node" / "node_modules"
    assert (installed / "@grpc" / "grpc-js").is_dir(), "examples/node has no packages: `make node` (part of `make test`) runs npm ci there"
    shutil.copytree(REPO / "examples" / "node", example)
    return example


@pytest.fixture(scope="module")
def js_kbs(tmp_path_factory) -> list[str]:
    """Two nations KBs of their own (not the session's "left" and "right") and their alignment files, as run_job.js's arguments."""
    out = split_dataset(dataset_dir("nations"), tmp_path_factory.mktemp("js-nations") / "kbs", kbs=2, seed=0, names=list(NAMES)).out_dir
    stem = out / "alignments" / f"{NAMES[0]}__{NAMES[1]}"
    return [str(out / NAMES[0]), str(out / NAMES[1]), f"{stem}.entities.tsv", f"{stem}.relations.tsv"]


def run_job(example: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["node", "run_job.js", *arguments], check=False, cwd=example, capture_output=True, text=True, timeout=NODE_SECONDS)


def test_node_client_runs_a_job(node_example, grpc_address, js_kbs):
    result = run_job(node_example, grpc_address, *js_kbs)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["state"] == "SUCCEEDED" and report["strategy"] == "cooperative" and report["rounds"] == 3
    assert list(report["kbs"]) == list(NAMES)
    for metrics in report["kbs"].values():
        assert 0 < metrics["mrr"] <= 1 and 0 <= metrics["hits@1"] <= metrics["hits@10"] <= 1
    assert [line.split(" (")[0] for line in result.stderr.splitlines() if line.startswith("round ")] == ["round 1/3", "round 2/3", "round 3/3"]


def test_node_client_reports_a_grpc_error(node_example, grpc_address, js_kbs):
    """A missing alignment file: exit 1, the status code, and the field the BadRequest details name."""
    missing = str(Path(js_kbs[2]).with_name("missing.tsv"))
    result = run_job(node_example, grpc_address, *js_kbs[:2], missing, js_kbs[3])
    assert result.returncode == 1 and result.stdout == ""
    assert "gRPC error INVALID_ARGUMENT (3): entities_path: file" in result.stderr
    assert f"  field entities_path: file {missing!r} not found" in result.stderr.splitlines()

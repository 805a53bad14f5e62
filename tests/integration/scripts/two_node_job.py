"""Runs a 2-KB cooperative job on a 3-node local Ray cluster (head + one node per KB) and prints placements.

A separate process because a test session's Ray cannot join a second cluster.
Usage: python two_node_job.py KB_ROOT (a split with KBs "west" and "east").
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kdmkb.services.ray_runtime import WORKER_ENV

os.environ.update(WORKER_ENV)

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from kdmkb.coordinator.service import Coordinator  # noqa: E402
from kdmkb.services.errors import PreconditionError  # noqa: E402

STORE = 80 * 2**20
root = Path(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": STORE})
nodes = {kb: cluster.add_node(num_cpus=1, resources={f"kb:{kb}": 1}, object_store_memory=STORE) for kb in ("west", "east")}
cluster.wait_for_nodes()
coordinator = Coordinator(ray_address=cluster.address)
try:
    try:
        coordinator.register_kb("lost", str(root / "west"), "transe", {"dim": 8}, resource="kb:nowhere")
        missing_resource = "accepted"
    except PreconditionError as error:
        missing_resource = str(error)
    for kb in nodes:
        coordinator.register_kb(kb, str(root / kb), "transe", {"dim": 16, "batch_size": 64, "negatives": 8}, resource=f"kb:{kb}")
    stem = root / "alignments" / "west__east"
    coordinator.register_alignment("west", "east", f"{stem}.entities.tsv", f"{stem}.relations.tsv")
    job = coordinator.create_job("cooperative", ["west", "east"], {"rounds": 2, "steps_per_round": 5, "checkpoint_every": 0})
    coordinator.start_job(job.job_id)
    job = coordinator.wait(job.job_id, timeout=300)
    print(
        json.dumps(
            {
                "state": job.state,
                "error": job.error,
                "received": {kb: p["soft_label_bytes_received"] for kb, p in job.progress.items()},
                "placed_on": {kb: coordinator.placement(kb)["node_id"] for kb in nodes},
                "data_node": {kb: node.node_id for kb, node in nodes.items()},
                "missing_resource": missing_resource,
            }
        )
    )
finally:
    coordinator.shutdown()
    ray.shutdown()
    cluster.shutdown()

"""Prints, as JSON, the ``kb:`` resources of the Ray node each live kdmkb KB actor runs on.

A separate process because a test session's Ray cannot join a second cluster.
Usage: python cluster_placements.py RAY_ADDRESS
"""

from __future__ import annotations

import json
import os
import re
import sys

from kdmkb.services.ray_runtime import WORKER_ENV

os.environ.update(WORKER_ENV)

import ray  # noqa: E402

ray.init(address=sys.argv[1], logging_level="WARNING", log_to_driver=False)
nodes = {node["NodeID"]: node["Resources"] for node in ray.nodes() if node["Alive"]}
placed = {}
for actor in ray.util.list_named_actors(all_namespaces=True):
    match = re.fullmatch(r"kdmkb-kb-(.+)-\d+-[0-9a-f]{8}", actor["name"])
    if match:
        handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
        node_id = ray.get(handle.placement.remote())["node_id"]
        placed[match.group(1)] = sorted(resource for resource in nodes[node_id] if resource.startswith("kb:"))
print(json.dumps(placed))

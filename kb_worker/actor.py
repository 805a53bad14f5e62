"""The KB worker as a Ray actor, placed on the node that holds its data when it names a resource."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import ray

from kdmkb.kb_worker.worker import KBWorker
from kdmkb.kb_worker.worker_types import WorkerSettings
from kdmkb.services.data_roots import DataRoots
from kdmkb.services.limits import Limits
from kdmkb.services.metrics import advertised_host, serve_metrics


class KBWorkerActor(KBWorker):
    """A :class:`KBWorker` that also serves its own Prometheus endpoint and reports where it runs.

    Loading waits for :meth:`open`, so that a data error reaches the caller as that call's
    error instead of killing the actor.
    """

    def __init__(self, *args) -> None:
        self._args = args

    def open(self, data_roots: list[str] | None = None) -> dict:
        """Loads the KB once its folder is found inside ``data_roots`` on this node (None: anywhere)."""
        DataRoots(data_roots).check_folder(Path(self._args[1]))
        KBWorker.__init__(self, *self._args)
        return self.describe()

    def start_metrics(self) -> dict:
        """Serves /metrics once per actor; the coordinator lists the address in the scrape targets."""
        if getattr(self, "_metrics_port", None) is None:
            self._metrics_port = serve_metrics()
        return {"host": advertised_host(), "port": self._metrics_port}

    @ray.method(concurrency_group="health")
    def alive(self) -> bool:
        """Answers from a thread of its own, also while the worker trains: the coordinator's health check."""
        return True

    def placement(self) -> dict:
        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "pid": os.getpid()}


def spawn_worker(
    name: str,
    data_dir: str,
    worker_type: str,
    settings: WorkerSettings,
    resource: str = "",
    type_options: dict | None = None,
    limits: Limits | None = None,
    namespace_prefix: str = "kdmkb",
) -> "ray.actor.ActorHandle":
    """Starts the KB's actor; it asks for no CPU so that several KBs can share a small node.

    ``type_options`` are the worker type's own actor options (``WorkerType.actor_options``: a GPU
    for ``device = "cuda"``). The actor name is unique per spawn: the KB's previous actor
    (re-registration, a failed registration, another coordinator of this process) may still
    hold a name until Ray reaps it.
    """
    options: dict = {"num_cpus": 0, "name": f"{namespace_prefix}-kb-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}", "max_concurrency": 1, **(type_options or {})}
    if resource:
        options["resources"] = {resource: 0.001}
    return ray.remote(concurrency_groups={"health": 1})(KBWorkerActor).options(**options).remote(name, data_dir, worker_type, settings, limits)

"""The KB worker as a Ray actor, placed on the node that holds its data when it names a resource."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from pathlib import Path

import ray
import torch

from kdmkb.kb_worker.worker import KBWorker
from kdmkb.kb_worker.worker_types import WorkerSettings
from kdmkb.services.data_roots import DataRoots
from kdmkb.services.limits import Limits
from kdmkb.services.metrics import advertised_host, serve_metrics


class KBWorkerActor(KBWorker):
    """A :class:`KBWorker` that also serves its own Prometheus endpoint and reports where it runs.

    Loading waits for :meth:`open`, so that a data error reaches the caller as that call's
    error instead of killing the actor.

    Predict runs in a concurrency group of its own and answers from a snapshot of the model, a
    second instance of the worker type whose weights are copied after each round (and rebuilt when
    a job configures or restores the model): it never waits for a round in training, and never
    reads weights halfway through an update.
    """

    def __init__(self, *args) -> None:
        self._args = args
        self._snapshot = None
        self._snapshot_lock = threading.Lock()

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

    def configure(self, *args, **kwargs) -> dict:
        result = KBWorker.configure(self, *args, **kwargs)
        self._take_snapshot(rebuild=True)
        return result

    def train(self, *args, **kwargs) -> dict:
        result = KBWorker.train(self, *args, **kwargs)
        self._take_snapshot()
        return result

    def load(self, *args, **kwargs) -> int:
        step = KBWorker.load(self, *args, **kwargs)
        self._take_snapshot(rebuild=True)
        return step

    def restore_model(self, *args, **kwargs) -> dict:
        restored = KBWorker.restore_model(self, *args, **kwargs)  # its configure and load take the snapshots
        if restored["round"] is None:
            with self._snapshot_lock:
                self._snapshot = None
        return restored

    def _post(self, message: bytes) -> ray.ObjectRef:
        """Each message its own object (owned by this actor), so that none exceeds ``max_label_bytes`` however large the round."""
        return ray.put(message)

    def _fetch(self, posted: ray.ObjectRef) -> bytes:
        return ray.get(posted)

    def _take_snapshot(self, rebuild: bool = False) -> None:
        """Copies the model's weights into the snapshot; ``rebuild`` starts a new instance (a new model, restored weights)."""
        snapshot = self._snapshot
        if rebuild or snapshot is None:
            with torch.random.fork_rng(devices=[]):  # building draws initial weights: the job's random stream stays as it was
                snapshot = self.type_class(self.kb, self.settings)
            snapshot.modules().eval().requires_grad_(False)
        with self._snapshot_lock, torch.no_grad():
            snapshot.modules().load_state_dict(self.model.modules().state_dict())
            snapshot.updates = self.model.updates  # cached search structures follow the copied weights
            self._snapshot = snapshot

    @contextlib.contextmanager
    def _serving(self):
        with self._snapshot_lock:
            if self._snapshot is None:
                self._require_model()  # raises: no job has configured a model yet
            yield self._snapshot

    @ray.method(concurrency_group="serve")
    def predict(self, *args, **kwargs) -> list[dict]:
        return KBWorker.predict(self, *args, **kwargs)

    @ray.method(concurrency_group="health")
    def alive(self) -> bool:
        """Answers from a thread of its own, also while the worker trains: the coordinator's health check."""
        return True

    @ray.method(concurrency_group="health")
    def work_progress(self) -> dict | None:
        """:meth:`KBWorker.work_progress`, from a thread of its own: read while a round's call or a ranking runs."""
        return KBWorker.work_progress(self)

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
    return ray.remote(concurrency_groups={"health": 1, "serve": 1})(KBWorkerActor).options(**options).remote(name, data_dir, worker_type, settings, limits)

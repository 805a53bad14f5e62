"""Starting or joining Ray for the coordinator, with the settings measured to work on small machines."""

from __future__ import annotations

import os

import ray

from kdmkb.services.errors import KdmkbError

# Busy-waiting OpenMP threads of torch and faiss slow each other down on two cores. glibc hands
# freed blocks above its mmap threshold back to the kernel, so every training step page-faults its
# temporaries in again: ~60% of a WN18RR step was kernel time (docs/benchmarks.md). glibc reads
# MALLOC_* at process start only, so the workers inherit them from here; a cluster joined by
# address sets them in its deployment.
WORKER_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "RAY_AUTH_MODE": "disabled",
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
}


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None, object_store_mb: int = 512) -> None:
    """Joins the Ray cluster at ``address`` or starts a local one (no dashboard, small object store)."""
    if ray.is_initialized():
        return
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    kwargs: dict = {"logging_level": "WARNING", "log_to_driver": False}
    if address:
        kwargs["address"] = address
    else:
        # "local": a new Ray of our own, even when `ray start` left a cluster that Ray would otherwise join.
        kwargs.update(address="local", include_dashboard=False, num_cpus=num_cpus, object_store_memory=object_store_mb * 2**20, _node_ip_address="127.0.0.1")
    ray.init(**kwargs)


def unwrap(error: BaseException) -> BaseException:
    """The kdmkb error a Ray task raised, or the error itself: callers map it to a status."""
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayError) and isinstance(cause, KdmkbError | ValueError | LookupError | FloatingPointError):
        return cause
    return error

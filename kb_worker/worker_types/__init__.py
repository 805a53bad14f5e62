"""Worker types by name: importing this package registers every built-in type."""

from kdmkb.kb_worker.worker_types import structural  # noqa: F401  (registers transe, distmult, complex, rotate)
from kdmkb.kb_worker.worker_types import kronecker  # noqa: F401  (registers kd-rel-distmult, kd-distmult, reciprocal-distmult)
from kdmkb.kb_worker.worker_types import feature_mlp  # noqa: F401  (registers feature-mlp)
from kdmkb.kb_worker.worker_types import feature_complex  # noqa: F401  (registers feature-complex)
from kdmkb.kb_worker.worker_types import lmke  # noqa: F401  (registers lmke)
from kdmkb.kb_worker.worker_types import mtl_kgc  # noqa: F401  (registers mtl-kgc)
from kdmkb.kb_worker.worker_types.base import WORKER_TYPES, QueryKind, WorkerSettings, WorkerType

__all__ = ["WORKER_TYPES", "QueryKind", "WorkerSettings", "WorkerType"]

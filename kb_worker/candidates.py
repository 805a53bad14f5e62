"""A faiss flat index over a pool of entity vectors, rebuilt only when the pool or the model changes."""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np
import torch

# faiss skips BLAS below 20 queries otherwise 128k; measured here: 7x faster at 512 queries.
faiss.cvar.distance_compute_blas_threshold = 20


class PoolIndex:
    """Caches one index; a teacher searches the same pool many times between two updates.

    The rule is explicit: the caller passes the model's ``version`` (its count of optimiser
    steps, :attr:`WorkerType.updates`), and the index is rebuilt when it or the pool differs
    from the build's. Tensor versions would not do: encoder outputs are fresh tensors every call.
    """

    def __init__(self, metric: int) -> None:
        self.metric = metric
        self._cache: tuple[int, torch.Tensor, faiss.Index] | None = None

    def search(self, weights: torch.Tensor, pool: torch.Tensor, keys: Callable[[torch.Tensor], torch.Tensor], queries: torch.Tensor, k: int, *, version: int) -> torch.Tensor:
        """Pool ids ``[q, k]`` of the best keys for each query vector; ``keys`` maps weight rows to index vectors."""
        # Compare the pool's contents, not its address: a new pool may reuse a freed buffer.
        if self._cache is None or self._cache[0] != version or not torch.equal(self._cache[1], pool):
            vectors = np.ascontiguousarray(keys(weights[pool]).detach().float().cpu().numpy(), dtype=np.float32)
            index = faiss.IndexFlat(vectors.shape[1], self.metric)
            index.add(vectors)
            self._cache = (version, pool.clone(), index)
        _, rows = self._cache[2].search(np.ascontiguousarray(queries.detach().float().cpu().numpy(), dtype=np.float32), k)
        return pool[torch.from_numpy(rows).to(pool.device)]

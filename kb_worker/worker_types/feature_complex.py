"""``feature-complex``: ComplEx whose entity embeddings are a trainable projection of one fixed feature matrix (DSoM's modality teachers).

DSoM (Zhao et al. 2025, §3) initialises a modality's entity embeddings as ``W^m E^m``: fixed
features ``E^m`` from a pretrained encoder (a KB folder's ``features/<modality>.npy``), a trainable
projection ``W^m``; relations are embeddings of their own. Trained as in MoSE/DSoM (the ``kbc``
regime): 1vsAll cross-entropy with reciprocal relations (a triple is also trained as
``(t, r^-1, h)``), an optional N3 regulariser (Lacroix et al. 2018), Adagrad by default. Without
``features`` it is the structural ComplEx teacher of that regime. Entities without a feature row
get what ``missing`` says: a learned embedding of their own, or zeros; never random features.

Scores are ``Re(<h, r, conj(t)>)``, the inner product of the real-ified ``h o r`` and ``t``, so
scoring every entity is one matrix product and ``top_candidates`` a faiss inner-product search.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdmkb.kb_worker.candidates import PoolIndex
from kdmkb.kb_worker.data import KnowledgeBase
from kdmkb.kb_worker.scoring import complex_product
from kdmkb.kb_worker.shared_lists import is_one_list
from kdmkb.kb_worker.worker_types.base import WORKER_TYPES, QueryKind, WorkerSettings, WorkerType, reciprocal_tail_query
from kdmkb.services.errors import ConfigError


class FeatureComplExSettings(WorkerSettings):
    features: str | None = Field(None, description="The modality (features/<modality>.npy in the KB folder) the entity embeddings project; none: learned entity embeddings.")
    rank: int = Field(200, gt=0, description="Complex dimensions of every embedding (2 x rank real numbers).")
    learning_rate: float = Field(0.1, gt=0, description="Learning rate (kbc's 0.1 with Adagrad).")
    optimizer: Literal["adagrad", "adam"] = Field("adagrad", description="Adagrad (the kbc/MoSE regime) or Adam.")
    batch_size: int = Field(1000, gt=0, description="Positive triples per step (each also trained reciprocally).")
    n3: float = Field(0.0, ge=0, description="Weight of the N3 regulariser on each batch's head, relation and tail factors (0: off).")
    init_scale: float = Field(1e-3, gt=0, description="Scale of the random initial embeddings (kbc's 1e-3).")
    missing: Literal["learned", "zeros"] = Field("learned", description="Entities without a feature row: a learned embedding of their own, or zeros.")


class FeatureComplExModel(nn.Module):
    """Entity vectors (a projection of fixed features, or a table), ``2 |R|`` relation vectors (with inverses)."""

    def __init__(self, num_entities: int, num_relations: int, settings: FeatureComplExSettings, features: np.ndarray | None, present: np.ndarray | None) -> None:
        super().__init__()
        width = 2 * settings.rank
        self.relation = nn.Embedding(2 * num_relations, width)
        nn.init.normal_(self.relation.weight, std=settings.init_scale)
        if features is None:
            self.entity = nn.Embedding(num_entities, width)
            nn.init.normal_(self.entity.weight, std=settings.init_scale)
            return
        self.register_buffer("features", torch.from_numpy(features), persistent=False)
        self.register_buffer("present", torch.from_numpy(present), persistent=False)
        self.projection = nn.Linear(features.shape[1], width)
        missing = np.flatnonzero(~present)
        # row of each missing entity in its own table (-1 for entities with features)
        self.register_buffer("missing_row", torch.from_numpy(np.where(present, -1, np.cumsum(~present) - 1)), persistent=False)
        self.missing = nn.Embedding(len(missing), width) if settings.missing == "learned" and len(missing) else None
        if self.missing is not None:
            nn.init.normal_(self.missing.weight, std=settings.init_scale)

    def entities(self) -> torch.Tensor:
        """Every entity's vector ``[n, 2 rank]``."""
        if not hasattr(self, "projection"):
            return self.entity.weight
        projected = self.projection(self.features)
        absent = torch.zeros_like(projected)
        if self.missing is not None:
            absent = self.missing.weight[self.missing_row.clamp(min=0)]
        return torch.where(self.present[:, None], projected, absent)


@WORKER_TYPES.register("feature-complex")
class FeatureComplExWorker(WorkerType):
    """ComplEx over a projection of one modality's features, trained 1vsAll with reciprocals (see the module docstring)."""

    settings_model = FeatureComplExSettings
    shared_slice_pairs = 1 << 22  # a shared list is one product: [q, c] floats, 16 MB a call
    embedding_layout = {
        "entity": "[real | imaginary], rank each (the projected features)",
        "relation": "[r | r^-1]: the relation's vector, then its inverse's, each [real | imaginary] of rank each",
    }

    @classmethod
    def check_kb(cls, kb: KnowledgeBase, settings: FeatureComplExSettings) -> None:
        if settings.features is not None and settings.features not in kb.features:
            have = ", ".join(sorted(kb.features)) or "none"
            raise ConfigError(f"settings.features: the KB has no features/{settings.features}.npy (its modalities: {have})")

    def __init__(self, kb: KnowledgeBase, settings: FeatureComplExSettings) -> None:
        super().__init__(kb, settings)
        self.check_kb(kb, settings)
        matrix = kb.features.get(settings.features) if settings.features else None
        values, present = (matrix.values, matrix.present) if matrix is not None else (None, None)
        self.model = FeatureComplExModel(self.num_entities, self.num_relations, settings, values, present).to(self.device)
        self._index = PoolIndex(faiss.METRIC_INNER_PRODUCT)
        self._frozen_entities: torch.Tensor | None = None

    def modules(self) -> nn.Module:
        return self.model

    def optimizer(self, extra_groups: list[dict] = ()) -> torch.optim.Optimizer:
        if self.settings.optimizer == "adam":
            return super().optimizer(extra_groups)
        groups = [group for group in (*self.parameter_groups(), *extra_groups) if group["params"]]
        return torch.optim.Adagrad(groups, lr=self.settings.learning_rate)

    def _query_vectors(self, entities: torch.Tensor, kind: QueryKind, queries: torch.Tensor) -> torch.Tensor:
        given, relation = reciprocal_tail_query(kind, queries, self.num_relations)
        return complex_product(entities[given], self.model.relation(relation))

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Every entity's vector projected once for all the slices (113 ms a projection for MiniLM features on FB15k-237)."""
        with torch.no_grad():
            self._frozen_entities = self.model.entities()
        try:
            yield
        finally:
            self._frozen_entities = None

    def _entities(self) -> torch.Tensor:
        return self.model.entities() if self._frozen_entities is None else self._frozen_entities

    def score(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        entities = self._entities()
        if kind == QueryKind.RELATION:
            if candidates is None:
                candidates = torch.arange(self.num_relations, device=queries.device).expand(queries.shape[0], -1)
            vectors = complex_product(entities[queries[:, 0]][:, None, :], self.model.relation(candidates))  # [q, c, 2k]
            return (vectors * entities[queries[:, 1]][:, None, :]).sum(-1)
        vectors = self._query_vectors(entities, kind, queries)
        if candidates is None:
            return vectors @ entities.T
        if is_one_list(candidates):  # one list for every query: one product
            return vectors @ entities[candidates[0]].T
        return torch.einsum("qd,qcd->qc", vectors, entities[candidates])

    def top_candidates(self, kind: QueryKind, queries: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
        """faiss inner-product top-k: the score is exactly ``<query vector, entity vector>``."""
        with torch.no_grad():
            entities = self._entities()
            return self._index.search(entities, pool, lambda rows: rows, self._query_vectors(entities, kind, queries), min(k, pool.numel()), version=self.updates)

    def train_loss(self, batch: torch.Tensor) -> torch.Tensor:
        return self._one_vs_all(batch)[0]

    def _one_vs_all(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss, the logits over every entity of each triple's tail query then of its reciprocal (head) query, and their ``(entity, relation)`` keys."""
        heads, relations, tails = batch.unbind(dim=1)
        entities = self.model.entities()
        given = torch.cat([heads, tails])
        relation = torch.cat([relations, relations + self.num_relations])
        targets = torch.cat([tails, heads])
        factors = entities[given], self.model.relation(relation), entities[targets]
        logits = complex_product(factors[0], factors[1]) @ entities.T
        loss = F.cross_entropy(logits, targets)
        if self.settings.n3:
            loss = loss + self.settings.n3 * n3_penalty(factors) / given.numel()
        return loss, logits, given * (2 * self.num_relations) + relation

    def train_scores(self, batch: torch.Tensor, requests: list[tuple[QueryKind, torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The 1vsAll logits also answer requests for every entity of the batch's own queries (a DSoM student's): one product, not two."""
        loss, logits, keys = self._one_vs_all(batch)
        order = torch.argsort(keys)
        scores = []
        for kind, queries, candidates in requests:
            if candidates is None and kind != QueryKind.RELATION:
                given, relation = reciprocal_tail_query(kind, queries, self.num_relations)
                wanted = given * (2 * self.num_relations) + relation
                found = order[torch.searchsorted(keys[order], wanted).clamp(max=len(keys) - 1)]
                if bool((keys[found] == wanted).all()):
                    scores.append(logits[found])
                    continue
            scores.append(self.score(kind, queries, candidates))
        return loss, scores

    def embeddings(self) -> dict[str, np.ndarray]:
        """Entity vectors ``[real | imaginary]``; each relation as ``[r | r^-1]``, one row per relation name."""
        relation = self.model.relation.weight.detach()
        return {
            "entity": self.model.entities().detach().cpu().numpy().astype(np.float32),
            "relation": torch.cat([relation[: self.num_relations], relation[self.num_relations :]], dim=1).cpu().numpy().astype(np.float32),
        }


def n3_penalty(factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """N3 (Lacroix et al. 2018): the sum over factors of the cubed moduli of their complex coordinates."""
    total = torch.zeros((), device=factors[0].device)
    for factor in factors:
        real, imaginary = factor.chunk(2, dim=-1)
        total = total + torch.sqrt(real**2 + imaginary**2).pow(3).sum()
    return total

"""Structural worker types: TransE (L1/L2), DistMult, ComplEx and RotatE with negative sampling.

Each model only defines its query and key vectors and its metric (see :mod:`kb_worker.scoring`);
training, candidate search and ranking are shared.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import faiss
import numpy as np
import torch
from pydantic import Field
from torch import nn

from kdmkb.kb_worker.candidates import PoolIndex
from kdmkb.kb_worker.data import KnowledgeBase, contains_sorted
from kdmkb.kb_worker.losses import logistic_loss, self_adversarial_loss
from kdmkb.kb_worker.scoring import all_pairs_scores, complex_product, matched_scores
from kdmkb.kb_worker.worker_types.base import WORKER_TYPES, QueryKind, WorkerSettings, WorkerType

# The faiss metric each score metric retrieves with. faiss has no BLAS path for L1 (measured:
# 2.6 s for 5,120 queries over 26k x 200 keys, against 0.2 s for L2), and no metric for RotatE's
# sum of complex moduli, so those retrieve a shortlist by L2 and rerank it with the exact score.
RETRIEVAL = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT, "l1": faiss.METRIC_L2, "complex_l1": faiss.METRIC_L2}
EXACT_METRICS = {"l2", "ip"}
RERANK_FACTOR = 4


class StructuralSettings(WorkerSettings):
    dim: int = Field(100, gt=0, description="Embedding size (complex dimensions for ComplEx and RotatE).")
    negatives: int = Field(32, gt=0, description="Negative samples per positive triple.")
    margin: float | None = Field(None, description="Margin gamma added to scores; default 9 for distance models, 0 for inner products.")
    loss: Literal["self-adversarial", "logistic"] = Field(
        "self-adversarial", description="RotatE's self-adversarial negative sampling loss, or the KD-MKB paper's logistic loss (eq. 4)."
    )
    adversarial_temperature: float = Field(1.0, ge=0, description="Self-adversarial sampling temperature (0: uniform weights).")
    regularization: float = Field(0.0, ge=0, description="Weight of an L2 penalty on the embeddings of each batch.")
    norm: Literal[1, 2] = Field(1, description="TransE only: L1 or L2 distance.")


class StructuralModel(nn.Module):
    """Entity and relation embeddings plus the model's query/key construction."""

    metric: ClassVar[str]
    default_margin: ClassVar[float]
    entity_width: ClassVar[int] = 1  # real numbers per dimension
    relation_width: ClassVar[int] = 1
    embedding_layout: ClassVar[dict[str, str]] = WorkerType.embedding_layout

    def __init__(self, num_entities: int, num_relations: int, settings: StructuralSettings) -> None:
        super().__init__()
        self.settings = settings
        self.margin = settings.margin if settings.margin is not None else self.default_margin
        self.entity = nn.Embedding(num_entities, settings.dim * self.entity_width)
        self.relation = nn.Embedding(num_relations, settings.dim * self.relation_width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # RotatE's initialisation: uniform in +-(gamma + 2) / dim for distance models.
        bound = (self.margin + 2.0) / self.settings.dim if self.metric != "ip" else 1.0 / math.sqrt(self.settings.dim)
        nn.init.uniform_(self.entity.weight, -bound, bound)
        nn.init.uniform_(self.relation.weight, -bound, bound)

    def key(self, entity: torch.Tensor) -> torch.Tensor:
        return entity

    def tail_query(self, head: torch.Tensor, relation: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head_query(self, relation: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TransEModel(StructuralModel):
    """Bordes et al. 2013: ``-||h + r - t||``."""

    default_margin = 9.0

    @property
    def metric(self) -> str:  # type: ignore[override]
        return "l1" if self.settings.norm == 1 else "l2"

    def tail_query(self, head, relation):
        return head + relation

    def head_query(self, relation, tail):
        return tail - relation


class DistMultModel(StructuralModel):
    """Yang et al. 2015: ``<h, r, t>``."""

    metric = "ip"
    default_margin = 0.0

    def tail_query(self, head, relation):
        return head * relation

    def head_query(self, relation, tail):
        return relation * tail


class ComplExModel(StructuralModel):
    """Trouillon et al. 2016: ``Re(<h, r, conj(t)>)`` as an inner product of real-ified vectors."""

    metric = "ip"
    default_margin = 0.0
    entity_width = 2
    relation_width = 2
    embedding_layout = {"entity": "[real | imaginary], dim each", "relation": "[real | imaginary], dim each"}

    def tail_query(self, head, relation):
        return complex_product(head, relation)

    def head_query(self, relation, tail):
        return complex_product(relation, tail, conjugate_a=True)


class RotatEModel(StructuralModel):
    """Sun et al. 2019: ``-sum_i |h_i r_i - t_i|`` with ``r_i = exp(i theta_i)``."""

    metric = "complex_l1"
    default_margin = 9.0
    entity_width = 2
    embedding_layout = {"entity": "[real | imaginary], dim each", "relation": "[dim] phases in radians (r = exp(i phase))"}

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.uniform_(self.relation.weight, -math.pi, math.pi)

    @staticmethod
    def _rotation(phase: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)

    def tail_query(self, head, relation):
        return complex_product(head, self._rotation(relation))

    def head_query(self, relation, tail):
        # |h r - t| = |h - conj(r) t| because |r| = 1.
        return complex_product(self._rotation(relation), tail, conjugate_a=True)


class StructuralWorker(WorkerType):
    """Negative-sampling training of a :class:`StructuralModel`; faiss top-k where the metric allows."""

    settings_model = StructuralSettings
    model_class: ClassVar[type[StructuralModel]]

    def __init__(self, kb: KnowledgeBase, settings: StructuralSettings) -> None:
        super().__init__(kb, settings)
        self.model = self.model_class(self.num_entities, self.num_relations, settings).to(self.device)
        train = torch.from_numpy(kb.train).to(self.device)
        self._train_keys = torch.sort(self._triple_keys(train[:, 0], train[:, 1], train[:, 2])).values
        self._index = PoolIndex(RETRIEVAL[self.model.metric])

    def modules(self) -> nn.Module:
        return self.model

    # -- scoring -----------------------------------------------------------------------
    def _queries(self, kind: QueryKind, queries: torch.Tensor) -> torch.Tensor:
        model = self.model
        if kind == QueryKind.TAIL:
            return model.tail_query(model.entity(queries[:, 0]), model.relation(queries[:, 1]))
        if kind == QueryKind.HEAD:
            return model.head_query(model.relation(queries[:, 0]), model.entity(queries[:, 1]))
        raise ValueError(f"entity query expected, got {kind!r}")

    def _entity_rows(self, *ids: torch.Tensor) -> list[torch.Tensor]:
        """Entity embeddings of several id tensors from a single lookup.

        Every lookup of an embedding costs a zero-filled full-size gradient in backward, added
        into the parameter's: on WN18RR that was ~40% of a step with one lookup per use. And
        ``index_select``'s backward (an ``index_add``) is twice as fast as ``nn.Embedding``'s on CPU
        (measured: 14 vs 30 ms for 67k rows of 200).
        """
        rows = self.model.entity.weight.index_select(0, torch.cat([part.reshape(-1) for part in ids]))
        return [chunk.reshape(*part.shape, -1) for part, chunk in zip(ids, rows.split([part.numel() for part in ids]))]

    @staticmethod
    def _scored_entities(kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two entity id tensors whose rows scoring ``candidates`` reads."""
        if kind == QueryKind.RELATION:
            return queries[:, 0], queries[:, 1]
        return queries[:, 0 if kind == QueryKind.TAIL else 1], candidates

    def _scores_of_rows(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor, rows: list[torch.Tensor]) -> torch.Tensor:
        model = self.model
        if kind == QueryKind.RELATION:
            heads, tails = rows
            return matched_scores(model.tail_query(heads[:, None, :], model.relation(candidates)), model.key(tails)[:, None, :], model.metric)
        given, keys = rows
        if kind == QueryKind.TAIL:
            vectors = model.tail_query(given, model.relation(queries[:, 1]))
        else:
            vectors = model.head_query(model.relation(queries[:, 0]), given)
        return matched_scores(vectors[:, None, :], model.key(keys), model.metric)

    def score(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        if candidates is None and kind != QueryKind.RELATION:
            return all_pairs_scores(self._queries(kind, queries), self.model.key(self.model.entity.weight), self.model.metric)
        if candidates is None:
            candidates = self._every_relation(queries)
        return self._scores_of_rows(kind, queries, candidates, self._entity_rows(*self._scored_entities(kind, queries, candidates)))

    def _every_relation(self, queries: torch.Tensor) -> torch.Tensor:
        return torch.arange(self.num_relations, device=queries.device).expand(queries.shape[0], -1)

    def top_candidates(self, kind: QueryKind, queries: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
        """faiss top-k; for L1 and RotatE, the exact top-k of an L2 shortlist of ``RERANK_FACTOR * k``."""
        exact = self.model.metric in EXACT_METRICS
        k = min(k, pool.numel())
        with torch.no_grad():
            size = k if exact else min(pool.numel(), RERANK_FACTOR * k)
            shortlist = self._index.search(self.model.entity.weight, pool, self.model.key, self._queries(kind, queries), size, version=self.updates)
            if exact:
                return shortlist
            best = self.score(kind, queries, shortlist).topk(k, dim=1).indices
            return shortlist.gather(1, best)

    # -- training ----------------------------------------------------------------------
    def _triple_keys(self, heads: torch.Tensor, relations: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        return (heads * self.num_relations + relations) * self.num_entities + tails

    def _is_train_triple(self, heads, relations, tails) -> torch.Tensor:
        return contains_sorted(self._train_keys, self._triple_keys(heads, relations, tails))

    def train_loss(self, batch: torch.Tensor) -> torch.Tensor:
        return self.train_scores(batch, [])[0]

    def train_scores(self, batch: torch.Tensor, requests: list[tuple[QueryKind, torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The own loss and the requested scores from one entity lookup (see :meth:`_entity_rows`)."""
        settings: StructuralSettings = self.settings  # type: ignore[assignment]
        model = self.model
        heads, relations, tails = batch.unbind(dim=1)
        size = batch.shape[0]
        negatives = torch.randint(self.num_entities, (size, settings.negatives), device=batch.device)
        # "every candidate" (None): relations listed (few); entities scored apart, as one matrix product
        requests = [(kind, queries, self._every_relation(queries) if candidates is None and kind == QueryKind.RELATION else candidates) for kind, queries, candidates in requests]
        listed = [request for request in requests if request[2] is not None]
        wanted = [ids for request in listed for ids in self._scored_entities(*request)]
        head_vectors, tail_vectors, negative_vectors, *scored_rows = self._entity_rows(heads, tails, negatives, *wanted)
        listed_scores = iter(self._scores_of_rows(*request, scored_rows[2 * i : 2 * i + 2]) for i, request in enumerate(listed))
        scores = [self.score(*request) if request[2] is None else next(listed_scores) for request in requests]
        relation_vectors = model.relation(relations)
        tail_queries = model.tail_query(head_vectors, relation_vectors)
        positive = matched_scores(tail_queries, model.key(tail_vectors), model.metric)

        corrupt_tail = torch.rand(size, device=batch.device) < 0.5
        queries = torch.where(corrupt_tail[:, None], tail_queries, model.head_query(relation_vectors, tail_vectors))
        negative = matched_scores(queries[:, None, :], model.key(negative_vectors), model.metric)
        with torch.no_grad():
            fake_heads = torch.where(corrupt_tail[:, None], heads[:, None], negatives)
            fake_tails = torch.where(corrupt_tail[:, None], negatives, tails[:, None])
            valid = ~self._is_train_triple(fake_heads, relations[:, None].expand_as(negatives), fake_tails)

        positive = positive + model.margin
        negative = negative + model.margin
        if settings.loss == "logistic":
            loss = logistic_loss(positive, negative, valid)
        else:
            loss = self_adversarial_loss(positive, negative, valid, temperature=settings.adversarial_temperature)
        if settings.regularization:
            penalty = head_vectors.pow(2).mean() + relation_vectors.pow(2).mean() + tail_vectors.pow(2).mean()
            loss = loss + settings.regularization * penalty
        return loss, scores

    def embeddings(self) -> dict[str, np.ndarray]:
        return {
            "entity": self.model.entity.weight.detach().cpu().numpy().astype(np.float32),
            "relation": self.model.relation.weight.detach().cpu().numpy().astype(np.float32),
        }


def _structural(name: str, model: type[StructuralModel]) -> type[StructuralWorker]:
    worker = type(f"{model.__name__.removesuffix('Model')}Worker", (StructuralWorker,), {"model_class": model, "__doc__": model.__doc__, "embedding_layout": model.embedding_layout})
    return WORKER_TYPES.register(name)(worker)


TransEWorker = _structural("transe", TransEModel)
DistMultWorker = _structural("distmult", DistMultModel)
ComplExWorker = _structural("complex", ComplExModel)
RotatEWorker = _structural("rotate", RotatEModel)

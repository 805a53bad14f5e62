"""Kronecker worker types (Demir, Lienen, Ngonga Ngomo 2022): compressed DistMult embeddings.

* ``kd-rel-distmult`` (paper eq. 8): ``<h o (r (x) r), t>``: entities of size ``d``, relations of
  size ``sqrt(d)`` whose Kronecker square is the ``d``-dimensional relation vector.
* ``kd-distmult`` (paper eq. 9): ``sum_i R((h (x) h) o (r (x) r))_i . t`` with entities and
  relations of size ``k = sqrt(d)``. ``(h (x) h) o (r (x) r)`` reshaped to ``k x k`` is the outer
  product ``u u^T`` of ``u = h o r``, so summing the rows of ``R(.) t`` (the sum commutes with the
  matrix-vector product) gives ``<sum(u) u, t>``: the reconstructed query ``sum(u) u`` costs ``O(k)``
  and the ``d``-vector is never built. Tests check both models against ``torch.kron``.
* ``reciprocal-distmult``: the paper's baseline, plain DistMult ``<h o r, t>`` with entities and
  relations of size ``d``, trained exactly like the two above (same regimes, reciprocal relations,
  batch-norm), so that tables compare decompositions and not training regimes. The structural
  ``distmult`` worker is the same score without reciprocals and batch-norm, trained by negative
  sampling only.

All three scores are inner products of a *query vector* (``h o r``, the reconstructed
``h o (r (x) r)`` or ``sum(u) u``, then batch-norm, then dropout) with the raw tail entity vector,
so scoring every entity is one matrix product and ``top_candidates`` a faiss inner-product search.

Reciprocal relations: the model holds ``2 |R|`` relation vectors; relation ``r + |R|`` is the
inverse of ``r``. A head query ``(?, r, t)`` is answered as the tail query ``(t, r^-1, ?)``, and
every training triple ``(h, r, t)`` is also trained as ``(t, r^-1, h)``. A relation query
``(h, ?, t)`` scores each candidate relation in the forward form ``(h, r, t)``.

Batch-norm: ``train_loss`` normalises with the batch's statistics and updates the running ones;
in eval mode (teaching, evaluation, prediction) every scoring method uses the running statistics,
so ``score`` (of given candidates or of every entity) and ``top_candidates`` agree. ``score`` in train
mode (the student side of distillation) normalises with the statistics of its own KD batch but
leaves the running statistics alone: relation queries score every candidate relation of a pair,
a distribution unlike the (entity, relation) queries that ranking sees. A one-row batch in train
mode is normalised with the running statistics (batch statistics of one row are undefined).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from kdmkb.kb_worker.candidates import PoolIndex
from kdmkb.kb_worker.data import KnowledgeBase, contains_sorted
from kdmkb.kb_worker.losses import logistic_loss, self_adversarial_loss
from kdmkb.kb_worker.worker_types.base import WORKER_TYPES, QueryKind, WorkerSettings, WorkerType, reciprocal_tail_query


class ReciprocalSettings(WorkerSettings):
    """Settings of the DistMult family trained with reciprocal relations (this module's worker types)."""

    learning_rate: float = Field(0.01, gt=0, description="Adam learning rate (the paper's 0.01).")
    dim: int = Field(100, gt=0, description="Size d of the entity and relation embeddings.")
    regime: Literal["1vsAll", "KvsAll", "negative-sampling"] = Field(
        "1vsAll",
        description="1vsAll or KvsAll: binary cross-entropy over all entities with reciprocal triples (the paper's training); "
        "negative-sampling: the structural workers' loss on sampled negatives.",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="1vsAll/KvsAll: alpha of label smoothing (paper 3.3.1): targets 1 - alpha/2 and alpha/2."
    )
    label_relaxation: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="1vsAll/KvsAll: alpha of label relaxation (paper 3.3.2), 0 for plain cross-entropy: no loss where the model "
        "already gives a true answer >= 1 - alpha (a false one <= alpha), else KL to that bound.",
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout rate on the (batch-normalised) query vectors while training.")
    negatives: int = Field(32, gt=0, description="negative-sampling: negative entities per query.")
    loss: Literal["self-adversarial", "logistic"] = Field(
        "self-adversarial", description="negative-sampling: RotatE's self-adversarial loss or the KD-MKB paper's logistic loss."
    )
    adversarial_temperature: float = Field(1.0, ge=0, description="negative-sampling: self-adversarial sampling temperature.")

    @model_validator(mode="after")
    def _one_calibration(self) -> "ReciprocalSettings":
        if self.label_smoothing and self.label_relaxation:
            raise ValueError("label_smoothing and label_relaxation are alternatives: set at most one")
        if self.regime == "negative-sampling" and (self.label_smoothing or self.label_relaxation):
            raise ValueError("label_smoothing and label_relaxation apply to the 1vsAll and KvsAll regimes only")
        return self


class KroneckerSettings(ReciprocalSettings):
    dim: int = Field(
        100,
        gt=0,
        description="Size d of the reconstructed embeddings, a perfect square; the stored vectors have sqrt(d) numbers "
        "(relations of kd-rel-distmult; entities and relations of kd-distmult).",
    )

    @field_validator("dim")
    @classmethod
    def _perfect_square(cls, value: int) -> int:
        root = math.isqrt(value)
        if root * root != value:
            raise ValueError(f"must be a perfect square (Kronecker factors have sqrt(dim) numbers), got {value}; e.g. {root * root} or {(root + 1) ** 2}")
        return value


class ReciprocalModel(nn.Module):
    """Entity vectors, ``2 |R|`` relation vectors (with inverses), batch-norm and dropout of the query."""

    def __init__(self, num_entities: int, num_relations: int, settings: ReciprocalSettings, entity_dim: int, relation_dim: int) -> None:
        super().__init__()
        self.entity = nn.Embedding(num_entities, entity_dim)
        self.relation = nn.Embedding(2 * num_relations, relation_dim)
        self.norm = nn.BatchNorm1d(entity_dim)  # the query has the size of the entity (key) vectors
        self.dropout = nn.Dropout(settings.dropout)
        nn.init.xavier_normal_(self.entity.weight)
        nn.init.xavier_normal_(self.relation.weight)

    def reconstruct(self, head: torch.Tensor, relation: torch.Tensor) -> torch.Tensor:
        """The query vector before normalisation; broadcasts over leading dimensions."""
        raise NotImplementedError

    def query(self, head: torch.Tensor, relation: torch.Tensor, *, track: bool = False) -> torch.Tensor:
        """Normalised query vectors; ``track`` lets a training batch update the running statistics."""
        vectors = self.reconstruct(head, relation)
        flat = vectors.reshape(-1, vectors.shape[-1])
        norm = self.norm
        batch_stats = self.training and flat.shape[0] > 1
        if batch_stats and track:
            flat = norm(flat)
        elif batch_stats:
            flat = F.batch_norm(flat, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
        else:
            flat = F.batch_norm(flat, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False, eps=norm.eps)
        return self.dropout(flat).reshape(vectors.shape)


class DistMultModel(ReciprocalModel):
    """Plain DistMult ``<h o r, t>``, entities and relations of size d."""

    def __init__(self, num_entities: int, num_relations: int, settings: ReciprocalSettings) -> None:
        super().__init__(num_entities, num_relations, settings, settings.dim, settings.dim)

    def reconstruct(self, head, relation):
        return head * relation


class KDRelDistMultModel(ReciprocalModel):
    """Paper eq. 8: ``<h o (r (x) r), t>``, entities of size d, relations of size sqrt(d)."""

    def __init__(self, num_entities: int, num_relations: int, settings: KroneckerSettings) -> None:
        super().__init__(num_entities, num_relations, settings, settings.dim, math.isqrt(settings.dim))
        self.root = math.isqrt(settings.dim)

    def reconstruct(self, head, relation):
        # (r (x) r)[i k + j] = r_i r_j: scale the k x k view of h by rows and columns instead.
        k = self.root
        grid = head.unflatten(-1, (k, k)) * relation[..., :, None] * relation[..., None, :]
        return grid.flatten(-2)


class KDDistMultModel(ReciprocalModel):
    """Paper eq. 9: ``sum_i R((h (x) h) o (r (x) r))_i . t`` = ``<sum(h o r) (h o r), t>``, everything of size sqrt(d)."""

    def __init__(self, num_entities: int, num_relations: int, settings: KroneckerSettings) -> None:
        root = math.isqrt(settings.dim)
        super().__init__(num_entities, num_relations, settings, root, root)

    def reconstruct(self, head, relation):
        u = head * relation
        return u * u.sum(dim=-1, keepdim=True)


def relaxation_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Label relaxation (Lienen and Huellermeier 2021; paper 3.3.2) on each binary event "entity answers the query".

    The credal set of a true answer is ``{p >= 1 - alpha}``, of a false one ``{p <= alpha}``: the loss
    is 0 inside it and otherwise ``KL(p' || p)`` to its closest member ``p' = 1 - alpha`` (``alpha``).
    Mean over every (query, entity).
    """
    target = torch.where(labels > 0.5, 1.0 - alpha, alpha)
    probability = torch.sigmoid(logits)
    inside = torch.where(labels > 0.5, probability >= 1.0 - alpha, probability <= alpha)
    entropy = -((1.0 - alpha) * math.log(1.0 - alpha) + alpha * math.log(alpha))  # H(p'), the same for both labels
    kl = F.binary_cross_entropy_with_logits(logits, target, reduction="none") - entropy
    return torch.where(inside, torch.zeros_like(kl), kl).mean()


class ReciprocalWorker(WorkerType):
    """A DistMult-family model trained by 1vsAll, KvsAll or negative sampling with reciprocal relations (see module docstring)."""

    settings_model: ClassVar[type[ReciprocalSettings]] = ReciprocalSettings
    model_class: ClassVar[type[ReciprocalModel]]
    embedding_layout = {"entity": "[entity size] real", "relation": "[r | r^-1]: the relation's vector, then its inverse's"}

    def __init__(self, kb: KnowledgeBase, settings: ReciprocalSettings) -> None:
        super().__init__(kb, settings)
        self.model = self.model_class(self.num_entities, self.num_relations, settings).to(self.device)
        train = torch.from_numpy(kb.train).to(self.device)
        heads, relations, tails = train.unbind(dim=1)
        # Every training answer as a sorted key (given * 2|R| + relation) * |E| + answer, inverse
        # triples included: a query's answers are one contiguous run (CSR without the offsets).
        given = torch.cat([heads, tails])
        relation = torch.cat([relations, relations + self.num_relations])
        answers = torch.cat([tails, heads])
        self._answer_keys = torch.unique(self._answer_key(given, relation, answers))  # sorted
        self._index = PoolIndex(faiss.METRIC_INNER_PRODUCT)

    def modules(self) -> nn.Module:
        return self.model

    # -- queries -------------------------------------------------------------------------
    def _answer_key(self, given: torch.Tensor, relation: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
        return (given * (2 * self.num_relations) + relation) * self.num_entities + answer

    def _entity_rows(self, *ids: torch.Tensor) -> list[torch.Tensor]:
        """Entity vectors of several id tensors from one ``index_select`` (see the structural workers)."""
        rows = self.model.entity.weight.index_select(0, torch.cat([part.reshape(-1) for part in ids]))
        return [chunk.reshape(*part.shape, -1) for part, chunk in zip(ids, rows.split([part.numel() for part in ids]))]

    def _queries(self, kind: QueryKind, queries: torch.Tensor) -> torch.Tensor:
        given, relation = reciprocal_tail_query(kind, queries, self.num_relations)
        return self.model.query(self.model.entity(given), self.model.relation(relation))

    # -- scoring -------------------------------------------------------------------------
    def score(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        model = self.model
        if candidates is None and kind != QueryKind.RELATION:
            return self._queries(kind, queries) @ model.entity.weight.T
        if candidates is None:
            candidates = torch.arange(self.num_relations, device=queries.device).expand(queries.shape[0], -1)
        if kind == QueryKind.RELATION:
            heads, tails = self._entity_rows(queries[:, 0], queries[:, 1])
            vectors = model.query(heads[:, None, :], model.relation(candidates))  # [q, c, D]
            return (vectors * tails[:, None, :]).sum(-1)
        given, relation = reciprocal_tail_query(kind, queries, self.num_relations)
        given_rows, keys = self._entity_rows(given, candidates)
        vectors = model.query(given_rows, model.relation(relation))  # [q, D]
        return torch.einsum("qd,qcd->qc", vectors, keys)

    def top_candidates(self, kind: QueryKind, queries: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
        """faiss inner-product top-k: the score is exactly ``<query vector, entity vector>``."""
        k = min(k, pool.numel())
        with torch.no_grad():
            return self._index.search(self.model.entity.weight, pool, lambda rows: rows, self._queries(kind, queries), k, version=self.updates)


    # -- training ------------------------------------------------------------------------
    def answers(self, given: torch.Tensor, relation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, entities)``: every training answer of each ``(given, relation)`` query (inverses included)."""
        keys = self._answer_keys
        first = (given * (2 * self.num_relations) + relation) * self.num_entities
        start = torch.searchsorted(keys, first)
        stop = torch.searchsorted(keys, first + self.num_entities)
        counts = stop - start
        rows = torch.repeat_interleave(torch.arange(given.numel(), device=given.device), counts)
        offsets = torch.arange(int(counts.sum()), device=given.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return rows, keys[torch.repeat_interleave(start, counts) + offsets] % self.num_entities

    def _is_answer(self, given: torch.Tensor, relation: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
        return contains_sorted(self._answer_keys, self._answer_key(given, relation, answer))

    def train_loss(self, batch: torch.Tensor) -> torch.Tensor:
        settings: ReciprocalSettings = self.settings  # type: ignore[assignment]
        model = self.model
        heads, relations, tails = batch.unbind(dim=1)
        # Each triple as its tail query (h, r, ?) and its reciprocal (t, r^-1, ?).
        given = torch.cat([heads, tails])
        relation = torch.cat([relations, relations + self.num_relations])
        targets = torch.cat([tails, heads])
        if settings.regime == "negative-sampling":
            negatives = torch.randint(self.num_entities, (given.numel(), settings.negatives), device=given.device)
            given_rows, target_rows, negative_rows = self._entity_rows(given, targets, negatives)
            vectors = model.query(given_rows, model.relation(relation), track=True)
            positive = (vectors * target_rows).sum(-1)
            negative = torch.einsum("qd,qkd->qk", vectors, negative_rows)
            with torch.no_grad():
                valid = ~self._is_answer(given[:, None], relation[:, None], negatives)
            if settings.loss == "logistic":
                return logistic_loss(positive, negative, valid)
            return self_adversarial_loss(positive, negative, valid, temperature=settings.adversarial_temperature)

        (given_rows,) = self._entity_rows(given)
        logits = model.query(given_rows, model.relation(relation), track=True) @ model.entity.weight.T
        labels = torch.zeros_like(logits)
        if settings.regime == "KvsAll":
            labels[self.answers(given, relation)] = 1.0
        else:  # 1vsAll
            labels[torch.arange(targets.numel(), device=targets.device), targets] = 1.0
        if settings.label_relaxation:
            return relaxation_loss(logits, labels, settings.label_relaxation)
        if settings.label_smoothing:
            labels = labels * (1.0 - settings.label_smoothing) + settings.label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, labels)

    def embeddings(self) -> dict[str, np.ndarray]:
        """Entity vectors; each relation as ``[r | r^-1]`` (its vector and its inverse's), one row per relation name."""
        relation = self.model.relation.weight.detach()
        forward, inverse = relation[: self.num_relations], relation[self.num_relations :]
        return {
            "entity": self.model.entity.weight.detach().cpu().numpy().astype(np.float32),
            "relation": torch.cat([forward, inverse], dim=1).cpu().numpy().astype(np.float32),
        }


@WORKER_TYPES.register("reciprocal-distmult")
class ReciprocalDistMultWorker(ReciprocalWorker):
    """DistMult in the Kronecker workers' training regime: the paper's baseline."""

    model_class = DistMultModel


@WORKER_TYPES.register("kd-rel-distmult")
class KDRelDistMultWorker(ReciprocalWorker):
    """KD-Rel-DistMult (paper eq. 8)."""

    settings_model = KroneckerSettings
    model_class = KDRelDistMultModel


@WORKER_TYPES.register("kd-distmult")
class KDDistMultWorker(ReciprocalWorker):
    """KD-DistMult (paper eq. 9)."""

    settings_model = KroneckerSettings
    model_class = KDDistMultModel

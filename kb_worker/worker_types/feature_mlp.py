"""``feature-mlp``: a small MLP that scores a triple from its two entities' feature rows and a relation vector.

Not an embedding model: it has no entity table to export or to search with faiss, so it scores
candidates exactly, and it learns only through its relation vectors and its MLP. It shows that
any model which scores candidates can teach and learn in a federation (docs/extending.md).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from kdmkb.kb_worker.data import KnowledgeBase
from kdmkb.kb_worker.losses import logistic_loss, self_adversarial_loss
from kdmkb.kb_worker.worker_types.base import WORKER_TYPES, QueryKind, WorkerSettings, WorkerType
from kdmkb.services.errors import ConfigError


class FeatureMLPSettings(WorkerSettings):
    features: str = Field(description="The modality whose matrix (features/<modality>.npy in the KB folder) describes each entity.")
    learning_rate: float = Field(5e-3, gt=0, description="Adam learning rate.")
    hidden: int = Field(64, gt=0, description="Width of the MLP's hidden layer.")
    dim: int = Field(16, gt=0, description="Size of the relation vectors.")
    negatives: int = Field(16, gt=0, description="Corrupted triples per positive one.")
    loss: Literal["self-adversarial", "logistic"] = Field("logistic", description="Loss over the positive and its corrupted triples.")


class FeatureMLP(nn.Module):
    """``MLP([f_h; present_h; r; f_t; present_t])``: a missing feature row enters as zeros with its presence flag 0."""

    def __init__(self, features: torch.Tensor, present: torch.Tensor, num_relations: int, settings: FeatureMLPSettings) -> None:
        super().__init__()
        self.register_buffer("features", torch.cat([features, present[:, None].float()], dim=1), persistent=False)
        self.relation = nn.Embedding(num_relations, settings.dim)
        width = 2 * self.features.shape[1] + settings.dim
        self.mlp = nn.Sequential(nn.Linear(width, settings.hidden), nn.ReLU(), nn.Linear(settings.hidden, 1))

    def forward(self, heads: torch.Tensor, relations: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """Scores of broadcastable id tensors of the same shape."""
        inputs = torch.cat([self.features[heads], self.relation(relations), self.features[tails]], dim=-1)
        return self.mlp(inputs).squeeze(-1)


@WORKER_TYPES.register("feature-mlp")
class FeatureMLPWorker(WorkerType):
    """An MLP over fixed per-entity features (see the module docstring); exact scoring, no embeddings."""

    settings_model = FeatureMLPSettings

    @classmethod
    def check_kb(cls, kb: KnowledgeBase, settings: FeatureMLPSettings) -> None:
        if settings.features not in kb.features:
            have = ", ".join(sorted(kb.features)) or "none"
            raise ConfigError(f"settings.features: the KB has no features/{settings.features}.npy (its modalities: {have})")

    def __init__(self, kb: KnowledgeBase, settings: FeatureMLPSettings) -> None:
        super().__init__(kb, settings)
        self.check_kb(kb, settings)
        matrix = kb.features[settings.features]
        self.model = FeatureMLP(torch.from_numpy(matrix.values), torch.from_numpy(matrix.present), self.num_relations, settings).to(self.device)

    def modules(self) -> nn.Module:
        return self.model

    def score(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        if candidates is None:
            width = self.num_relations if kind == QueryKind.RELATION else self.num_entities
            candidates = torch.arange(width, device=queries.device).expand(queries.shape[0], -1)
        first, second = (part[:, None].expand_as(candidates) for part in queries.unbind(dim=1))
        if kind == QueryKind.TAIL:
            return self.model(first, second, candidates)
        if kind == QueryKind.HEAD:
            return self.model(candidates, first, second)
        return self.model(first, candidates, second)

    def train_loss(self, batch: torch.Tensor) -> torch.Tensor:
        settings: FeatureMLPSettings = self.settings  # type: ignore[assignment]
        heads, relations, tails = batch.unbind(dim=1)
        negatives = torch.randint(self.num_entities, (batch.shape[0], settings.negatives), device=batch.device)
        corrupt_tail = (torch.rand(batch.shape[0], device=batch.device) < 0.5)[:, None]
        fake_heads = torch.where(corrupt_tail, heads[:, None], negatives)
        fake_tails = torch.where(corrupt_tail, negatives, tails[:, None])
        positive = self.model(heads, relations, tails)
        negative = self.model(fake_heads, relations[:, None].expand_as(negatives), fake_tails)
        if settings.loss == "logistic":
            return logistic_loss(positive, negative)
        return self_adversarial_loss(positive, negative)

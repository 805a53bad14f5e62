"""The worker-type contract: what differs between worker types, and nothing about the exchange.

A worker type owns a model for one KB: its own supervised objective (``train_loss``), how it
scores candidate entities and relations (``score_candidates``, differentiable, used both to
teach and to learn), how it finds the top candidates among a pool of entities
(``top_candidates``: faiss where the score allows, exact otherwise) and how it scores every
entity for ranking (``score_all``). Teaching, learning, evaluation and checkpoints are written
once in :mod:`kb_worker.worker` on top of these.
"""

from __future__ import annotations

import abc
from enum import IntEnum
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from kdmkb.kb_worker.data import KnowledgeBase
from kdmkb.services.registry import Registry


class QueryKind(IntEnum):
    """Matches ``kdmkb.exchange.v1.QueryKind``: which part of a triple a query asks for."""

    TAIL = 1  # query = (head, relation)
    HEAD = 2  # query = (relation, tail)
    RELATION = 3  # query = (head, tail)


class WorkerSettings(BaseModel):
    """Settings every worker type accepts."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate.")
    batch_size: int = Field(128, gt=0, description="Positive triples per training step.")
    eval_batch_size: int = Field(256, gt=0, description="Queries ranked at once during evaluation.")
    threads: int = Field(1, gt=0, description="torch intra-op threads of the worker process.")


class WorkerType(abc.ABC):
    """One KB's model; see the module docstring for the contract."""

    settings_model: ClassVar[type[WorkerSettings]] = WorkerSettings

    def __init__(self, kb: KnowledgeBase, settings: WorkerSettings) -> None:
        self.kb = kb
        self.settings = settings
        self.num_entities = len(kb.entities)
        self.num_relations = len(kb.relations)

    @classmethod
    def validate_settings(cls, raw: dict) -> WorkerSettings:
        """Returns typed settings; pydantic's error names the bad field."""
        return cls.settings_model.model_validate(raw or {})

    @abc.abstractmethod
    def modules(self) -> torch.nn.Module:
        """The trainable module (its ``state_dict`` is the checkpoint)."""

    @abc.abstractmethod
    def train_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """The own supervised loss on ``int64 [b, 3]`` positive training triples."""

    @abc.abstractmethod
    def score_candidates(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Differentiable scores ``[q, c]`` of ``candidates`` (local ids) for ``queries [q, 2]``."""

    def train_scores(self, batch: torch.Tensor, requests: list[tuple[QueryKind, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One training step's own loss and ``score_candidates(*request)`` for each request.

        A student's step needs both; a worker type may override this to share work between
        them (one embedding lookup, so one full-size gradient in backward instead of several).
        """
        return self.train_loss(batch), [self.score_candidates(*request) for request in requests]

    @abc.abstractmethod
    def score_all(self, kind: QueryKind, queries: torch.Tensor) -> torch.Tensor:
        """Scores ``[q, num_entities]`` of every entity for TAIL or HEAD queries (no grad needed)."""

    def top_candidates(self, kind: QueryKind, queries: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
        """Local ids ``[q, min(k, len(pool))]`` of the best-scoring entities of ``pool``.

        The default scores the pool exactly; worker types whose score is a distance or inner
        product override this with a faiss search.
        """
        with torch.no_grad():
            scores = self.score_candidates(kind, queries, pool.expand(queries.shape[0], -1))
            return pool[scores.topk(min(k, pool.numel()), dim=1).indices]

    @abc.abstractmethod
    def embeddings(self) -> dict[str, np.ndarray]:
        """``{"entity": [n, d], "relation": [m, d']}`` float32 arrays for export."""

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.modules().parameters() if p.requires_grad)


WORKER_TYPES: Registry[type[WorkerType]] = Registry("worker type")

"""The worker-type contract: what differs between worker types, and nothing about the exchange.

A worker type owns a model for one KB and everything that model needs:
- its inputs: it is built from the whole :class:`KnowledgeBase` (triples, texts, feature matrices);
- its own supervised objective (``train_loss``);
- one scoring method, ``score``: logits (higher is better; ``logit_scale`` turns the type's raw
  scores into them) of given candidates, or of every entity (relation for relation queries),
  differentiable, used to teach, to learn and to rank; ``score_sliced`` bounds its memory with
  the type's own ``slice_pairs``;
- how it finds the top candidates among a pool (``top_candidates``: exact by default, faiss where
  the score allows, a bi-encoder's index...), and how it ranks for evaluation (``ranking``: exact,
  or retrieve-then-rerank, named as such in the metrics);
- its optimiser and parameter groups (``optimizer``), its device and its process's threads;
- whether it has embeddings to export (``embeddings`` is optional).
Teaching, learning, evaluation and checkpoints are written once on top of these (:mod:`kdmkb.kb_worker.teacher`,
:mod:`kdmkb.kb_worker.student`, :mod:`kdmkb.kb_worker.worker`).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from kdmkb.kb_worker.data import KnowledgeBase
from kdmkb.kb_worker.shared_lists import is_one_list, shared
from kdmkb.services.errors import PreconditionError
from kdmkb.services.registry import Registry


class QueryKind(IntEnum):
    """Matches ``kdmkb.exchange.v1.QueryKind``: which part of a triple a query asks for."""

    TAIL = 1  # query = (head, relation)
    HEAD = 2  # query = (relation, tail)
    RELATION = 3  # query = (head, tail)


def reciprocal_tail_query(kind: QueryKind, queries: torch.Tensor, num_relations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(given entity, relation)`` of an entity query for a model with reciprocal relations (relation
    ``r + num_relations`` is ``r``'s inverse): a TAIL query as it is, a HEAD query ``(r, t)`` as ``(t, r^-1)``."""
    if kind == QueryKind.TAIL:
        return queries[:, 0], queries[:, 1]
    if kind == QueryKind.HEAD:
        return queries[:, 1], queries[:, 0] + num_relations
    raise ValueError(f"entity query expected, got {kind!r}")


class WorkerSettings(BaseModel):
    """Settings every worker type accepts."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate.")
    batch_size: int = Field(128, gt=0, description="Positive triples per training step.")
    eval_batch_size: int = Field(256, gt=0, description="Queries ranked at once during evaluation.")
    threads: int = Field(1, gt=0, description="torch intra-op threads of the worker process.")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="Where the model runs: cpu, cuda (the worker's actor then asks Ray for a GPU), or auto (a GPU when the cluster has one)."
    )


# Settings of how a worker runs, not of what it learns: a checkpoint fits whatever they are.
RUNTIME_SETTINGS = frozenset({"threads", "eval_batch_size", "device"})


@dataclass(frozen=True)
class Ranking:
    """How a worker type ranks every entity for evaluation.

    Exact (``retriever`` None): ``score`` over every entity. Retrieve-then-rerank: ``retriever``
    scores every entity cheaply, its filtered top ``k`` are re-scored by the type's ``score`` and
    every other entity ranks below them; the metrics are labelled ``rerank@k(<retriever_name>)``
    and carry the retriever's recall@k.
    """

    retriever: Callable[[QueryKind, torch.Tensor], torch.Tensor] | None = None
    retriever_name: str = ""
    k: int = 0

    @property
    def label(self) -> str:
        return "exact" if self.retriever is None else f"rerank@{self.k}({self.retriever_name})"


class WorkerType(abc.ABC):
    """One KB's model; see the module docstring for the contract."""

    settings_model: ClassVar[type[WorkerSettings]] = WorkerSettings
    # Multiplies the type's scores into logits: what a teacher sends and a student distils.
    logit_scale: ClassVar[float] = 1.0
    # Query x candidate pairs scored per call outside training (teaching, ranking): distance
    # scores build [queries, candidates, dim] intermediates, and FB15k-237's relation queries of
    # one round (25,600 x 237 x 200 floats) took 15 GB at once.
    slice_pairs: ClassVar[int] = 1 << 16
    # Pairs per call instead when every entity query shares its candidates (one list expanded with
    # stride 0, or every entity), for types that score that as one product ([q, c], no [q, c, d]
    # intermediate); None: ``slice_pairs``. At 4 queries a call, DSoM's full answers over
    # FB15k-237 were per-call overhead (docs/results-dsom.md).
    shared_slice_pairs: ClassVar[int | None] = None
    # What the columns of the exported vectors hold, per kind; saved beside them (types with embeddings).
    embedding_layout: ClassVar[dict[str, str]] = {"entity": "[dim] real", "relation": "[dim] real"}

    def __init__(self, kb: KnowledgeBase, settings: WorkerSettings) -> None:
        self.kb = kb
        self.settings = settings
        self.num_entities = len(kb.entities)
        self.num_relations = len(kb.relations)
        self.device = self.resolve_device(settings)
        # Optimiser steps taken; a cached search structure (a faiss index) is rebuilt when it changes.
        self.updates = 0
        # Sequences a text encoder has run through in training (progress in sequences/s); 0 for types without one.
        self.trained_sequences = 0

    # -- set-up ------------------------------------------------------------------------------
    @classmethod
    def validate_settings(cls, raw: dict) -> WorkerSettings:
        """Returns typed settings; pydantic's error names the bad field."""
        return cls.settings_model.model_validate(raw or {})

    @staticmethod
    def resolve_device(settings: WorkerSettings) -> torch.device:
        if settings.device == "cuda" and not torch.cuda.is_available():
            raise PreconditionError("settings.device: 'cuda', but this worker's process sees no GPU")
        if settings.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(settings.device)

    @classmethod
    def actor_options(cls, settings: WorkerSettings, cluster_gpus: float) -> dict:
        """Ray actor options that follow the settings: a GPU for ``cuda``, and for ``auto`` where the cluster has one."""
        if settings.device == "cuda" and cluster_gpus < 1:
            raise PreconditionError("settings.device: 'cuda', but no node of the Ray cluster offers a GPU")
        wants_gpu = settings.device == "cuda" or (settings.device == "auto" and cluster_gpus >= 1)
        return {"num_gpus": 1} if wants_gpu else {}

    @classmethod
    def check_kb(cls, kb: KnowledgeBase, settings: WorkerSettings) -> None:
        """Refuses a KB that lacks what the type reads (a feature matrix, texts): when the KB is registered, not when a job starts."""

    @classmethod
    def prepare_process(cls, settings: WorkerSettings) -> None:
        """Process-wide set-up before the model is built (one worker per process)."""
        torch.set_num_threads(settings.threads)

    @abc.abstractmethod
    def modules(self) -> torch.nn.Module:
        """The trainable module (its ``state_dict`` is the checkpoint)."""

    def training_state(self) -> dict:
        """What a resumed training needs besides the modules, the optimiser and the random generators (a memory bank, a task draw), for a checkpoint."""
        return {}

    def load_training_state(self, state: dict) -> None:
        """Takes back what :meth:`training_state` returned."""

    def parameter_groups(self) -> list[dict]:
        """The optimiser's parameter groups; a type with parts that learn at other rates returns several."""
        return [{"params": [p for p in self.modules().parameters() if p.requires_grad], "lr": self.settings.learning_rate}]

    def optimizer(self, extra_groups: list[dict] = ()) -> torch.optim.Optimizer:
        """Adam over :meth:`parameter_groups` (and a student's own extra groups), fused: the same
        update in one pass over each table (~3x faster on CPU; the update of the whole entity table
        was most of a WN18RR step, docs/results.md)."""
        groups = [group for group in (*self.parameter_groups(), *extra_groups) if group["params"]]
        return torch.optim.Adam(groups, lr=self.settings.learning_rate, fused=True)

    # -- training ----------------------------------------------------------------------------
    @abc.abstractmethod
    def train_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """The own supervised loss on ``int64 [b, 3]`` positive training triples."""

    def train_scores(self, batch: torch.Tensor, requests: list[tuple[QueryKind, torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One training step's own loss and ``score(*request)`` for each request (candidates ``None``: every entity, or relation).

        A student's step needs both; a worker type may override this to share work between
        them (one embedding lookup, so one full-size gradient in backward instead of several).
        """
        return self.train_loss(batch), [self.score(*request) for request in requests]

    # -- scoring -----------------------------------------------------------------------------
    @abc.abstractmethod
    def score(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Differentiable scores of ``queries [q, 2]`` (local ids).

        With ``candidates [q, c]`` (local entity ids, relation ids for RELATION queries): ``[q, c]``.
        Without: ``[q, n]`` over every entity (every relation for RELATION queries).
        """

    def score_sliced(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`score` without gradients, ``slice_pairs`` query-candidate pairs per call, into one result."""
        width = candidates.shape[1] if candidates is not None else (self.num_relations if kind == QueryKind.RELATION else self.num_entities)
        one_list = kind != QueryKind.RELATION and (candidates is None or is_one_list(candidates))
        per_call = max(1, ((one_list and self.shared_slice_pairs) or self.slice_pairs) // max(1, width))
        # a shared list travels as one row, expanded again on the device (a copy would lose stride 0)
        pool = candidates[:1].to(self.device) if one_list and candidates is not None else None
        result = torch.empty(queries.shape[0], width)  # one result, filled slice by slice (see all_pairs_scores)
        with torch.no_grad(), self.frozen():
            for start in range(0, queries.shape[0], per_call):
                part = queries[start : start + per_call].to(self.device)
                if pool is not None:
                    listed = shared(pool, part.shape[0])
                else:
                    listed = None if candidates is None else candidates[start : start + per_call].to(self.device)
                result[start : start + per_call] = self.score(kind, part, listed).float().cpu()
        return result

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """While scoring without gradients (weights fixed): a type may compute once what its scores derive from the weights (entity vectors projected from features), not once per slice."""
        yield

    def top_candidates(self, kind: QueryKind, queries: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
        """Local ids ``[q, min(k, len(pool))]`` of the best-scoring entities of ``pool``.

        The default scores the pool exactly; worker types whose score is a distance or inner
        product override this with a faiss search.
        """
        scores = self.score_sliced(kind, queries, pool.expand(queries.shape[0], -1))
        return pool[scores.topk(min(k, pool.numel()), dim=1).indices]

    def ranking(self) -> Ranking:
        """Exact ranking by :meth:`score`; a type too costly to score every entity returns a retriever."""
        return Ranking()

    # -- export ------------------------------------------------------------------------------
    def embeddings(self) -> dict[str, np.ndarray]:
        """``{"entity": [n, d], "relation": [m, d']}`` float32 arrays for export, for types that have them."""
        raise PreconditionError(f"worker type {type(self).__name__} has no embeddings to export")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.modules().parameters() if p.requires_grad)


WORKER_TYPES: Registry[type[WorkerType]] = Registry("worker type")

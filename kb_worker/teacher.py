"""The teacher side of a KB: soft labels over aligned ids, pushed from its own batches or answering a student's queries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kdmkb.kb_worker import exchange
from kdmkb.kb_worker.alignment_view import QUERY_COLUMNS, LocalAlignment, PeerPools
from kdmkb.kb_worker.losses import with_tail_bucket
from kdmkb.kb_worker.shared_lists import map_ids, take_rows
from kdmkb.kb_worker.worker_types import QueryKind, WorkerType
from kdmkb.services.config import DistillSettings
from kdmkb.services.errors import DataError


@dataclass
class Side:
    """What both sides of a KB work with: its name, the job, the model, the alignment and the job's distillation settings."""

    name: str
    job_id: str
    model: WorkerType
    alignment: LocalAlignment
    distill: DistillSettings


class Teacher(Side):
    """Labels queries with its model's logits; only candidates shared with the student are ever named."""

    def __init__(self, side: Side, train: torch.Tensor, batch_size: int, max_label_bytes: int) -> None:
        super().__init__(**vars(side))
        self.train = train
        self.max_label_bytes = max_label_bytes  # the server's limit on one message (exchange.encode_messages)
        self._refresh_steps = self.distill.candidate_refresh_epochs * len(train) / batch_size
        # Each training triple's tail query (head, relation) and head query (relation, tail), as ids.
        self._query_ids = {
            kind: torch.from_numpy(np.unique(train[:, list(QUERY_COLUMNS[kind])].numpy(), axis=0, return_inverse=True)[1].reshape(-1))
            for kind in (QueryKind.TAIL, QueryKind.HEAD)
        }
        self._candidate_cache: dict[tuple[int, QueryKind], tuple[torch.Tensor, torch.Tensor]] = {}

    def _logits(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor, tail_pool: torch.Tensor | None = None) -> np.ndarray:
        """Logits over ``candidates``; with ``tail_pool`` (sorted), one more column: the tail bucket of the pool's other entities."""
        if tail_pool is None:
            scores = self.model.score_sliced(kind, queries, candidates) * self.model.logit_scale
        else:
            everything = self.model.score_sliced(kind, queries, tail_pool.expand(queries.shape[0], -1)) * self.model.logit_scale
            scores = with_tail_bucket(everything, map_ids(candidates, lambda ids: torch.searchsorted(tail_pool, ids)))
        return scores.numpy().astype(np.dtype(self.distill.score_dtype))

    # -- push: the teacher's own batches (KD-MKB) ------------------------------------------------
    def push(self, round_: int, batches: list[torch.Tensor], students: list[str], step: int) -> list[list[bytes]]:
        """Per student, the ``SoftLabels`` messages over the queries of ``batches`` it shares with that student."""
        lessons: dict[int, list[exchange.SoftLabelBlock]] = {}
        messages = []
        for student in students:
            pools = self.alignment.peers.get(student)
            if pools is not None and pools.signature not in lessons:
                lessons[pools.signature] = self._own_batch_blocks(batches, pools, step)
            blocks = [] if pools is None else lessons[pools.signature]
            messages.append(exchange.encode_messages(exchange.SoftLabels(self.job_id, round_, self.name, student, tuple(blocks)), self.max_label_bytes))
        return messages

    def _own_batch_blocks(self, batches: list[torch.Tensor], pools: PeerPools, step: int) -> list[exchange.SoftLabelBlock]:
        steps = torch.cat([torch.full((len(b),), s) for s, b in enumerate(batches)])
        rows = torch.cat(batches)
        triples = self.train[rows]
        blocks = []
        for kind, selected, queries in pools.exchangeable(triples, relations=bool(self.distill.relation_weight)):
            if kind == QueryKind.RELATION:
                candidates = pools.pool(kind).expand(queries.shape[0], -1)
            else:
                candidates = pools.with_random(kind, self._cached_top(pools, kind, queries, rows[selected], step), self.distill.top_k)
            blocks.extend(self._blocks(kind, steps[selected].numpy(), queries, candidates))
        return blocks

    def _blocks(
        self, kind: QueryKind, steps: np.ndarray, queries: torch.Tensor, candidates: torch.Tensor, tail_pool: torch.Tensor | None = None, scores: np.ndarray | None = None
    ) -> list[exchange.SoftLabelBlock]:
        """One block per step of ``steps``; ``scores`` when the caller has them, else the model's logits."""
        scores = self._logits(kind, queries, candidates, tail_pool) if scores is None else scores
        query_ids = self.alignment.aligned_queries(kind, queries)
        candidate_ids = self.alignment.aligned_candidates(kind, candidates)
        return [
            exchange.SoftLabelBlock(kind, int(s), query_ids[steps == s], take_rows(candidate_ids, steps == s), scores[steps == s], tail_pool is not None)
            for s in np.unique(steps)
        ]

    def _cached_top(self, pools: PeerPools, kind: QueryKind, queries: torch.Tensor, rows: torch.Tensor, step: int) -> torch.Tensor:
        """The teacher's top-k among the pool, searched again only for queries whose last search is stale.

        The search is the costly part of teaching (every query against every aligned entity),
        while a query's best candidates move slowly; the scores sent over them are always fresh.
        The cache is keyed by query, (head, relation) or (relation, tail), so that the triples
        that share a query share its search (FB15k-237 has 3x fewer tail queries than triples).
        """
        k = self.distill.top_k
        query_ids = self._query_ids[kind][rows]
        key = (pools.signature, kind)
        if key not in self._candidate_cache:
            count, width = int(self._query_ids[kind].max()) + 1, min(k, pools.entity_pool.numel())
            self._candidate_cache[key] = (torch.full((count, width), -1), torch.full((count,), -(2**62)))
        top, searched_at = self._candidate_cache[key]
        unique, first = np.unique(query_ids.numpy(), return_index=True)
        unique, first = torch.from_numpy(unique), torch.from_numpy(first)
        stale = (step - searched_at[unique]) > self._refresh_steps
        if bool(stale.any()):
            top[unique[stale]] = self.model.top_candidates(kind, queries[first[stale]], pools.entity_pool, k)
            searched_at[unique[stale]] = step
        return top[query_ids]

    def state(self) -> dict:
        """The candidate cache, for a checkpoint: a resumed teacher searches again exactly when an uninterrupted one would."""
        return {f"{signature}/{int(kind)}": list(entry) for (signature, kind), entry in self._candidate_cache.items()}

    def restore(self, state: dict) -> None:
        self._candidate_cache = {(key.rsplit("/", 1)[0], QueryKind(int(key.rsplit("/", 1)[1]))): tuple(entry) for key, entry in state.items()}

    # -- pull: a student's queries ---------------------------------------------------------------
    def answer(self, payload: bytes) -> tuple[str, list[bytes]]:
        """The asking student and the ``SoftLabels`` messages over its ``Queries``; queries or candidates it does not share with that student are refused."""
        try:
            asked = exchange.decode_queries(payload)
        except ValueError as error:
            raise DataError(str(error)) from None
        if asked.teacher != self.name:
            raise DataError(f"queries for {asked.teacher!r} were routed to {self.name!r}")
        pools = self.alignment.peers.get(asked.student)
        if pools is None:
            raise DataError(f"KB {self.name!r} shares nothing with {asked.student!r}, which asked it for soft labels")
        blocks = []
        searched: dict[QueryKind, list[tuple[int, torch.Tensor]]] = {}  # the teacher picks the candidates: one pass per distinct query
        for block in asked.blocks:
            kind = block.kind
            queries = self.alignment.local_queries(kind, block.queries, asked.student)
            listed = asked.rule in (exchange.LISTED, exchange.LISTED_WITH_TAIL)
            candidates = self.alignment.local_candidates(kind, block.candidates, asked.student) if listed else None
            if not pools.shares(kind, queries, candidates):
                raise DataError(f"queries from {asked.student!r} name ids that KB {self.name!r} does not share with it")
            if not listed:
                searched.setdefault(kind, []).append((block.step, queries))
                continue
            tail_pool = pools.pool(kind) if asked.rule == exchange.LISTED_WITH_TAIL and kind != QueryKind.RELATION else None
            blocks.extend(self._blocks(kind, np.full(queries.shape[0], block.step), queries, candidates, tail_pool))
        for kind, parts in searched.items():
            blocks.extend(self._searched_blocks(kind, parts, pools, asked.rule, asked.top_k))
        return asked.student, exchange.encode_messages(exchange.SoftLabels(asked.job_id, asked.round, self.name, asked.student, tuple(blocks)), self.max_label_bytes)

    def _searched_blocks(self, kind: QueryKind, parts: list[tuple[int, torch.Tensor]], pools: PeerPools, rule: int, top_k: int) -> list[exchange.SoftLabelBlock]:
        """Labels over candidates the teacher picks (its top-k plus as many random, or the whole pool), for the ``(step, queries)``
        of a student's message: each distinct query searched and scored once, and its row repeated wherever it was asked
        (a text teacher encodes a query per pass; a round asks the same query in several steps)."""
        steps = np.concatenate([np.full(queries.shape[0], step) for step, queries in parts])
        queries = torch.cat([queries for _, queries in parts])
        distinct, inverse = torch.unique(queries, dim=0, return_inverse=True)
        pool = pools.pool(kind)
        if rule == exchange.ALL_ALIGNED or kind == QueryKind.RELATION:  # one shared list, kept as one row (stride 0)
            candidates, asked_rows = pool.expand(distinct.shape[0], -1), pool.expand(inverse.numel(), -1)
        else:
            k = min(top_k, pool.numel())
            candidates = pools.with_random(kind, self.model.top_candidates(kind, distinct, pool, k), k)
            asked_rows = candidates[inverse]
        return self._blocks(kind, steps, queries, asked_rows, scores=self._logits(kind, distinct, candidates)[inverse.numpy()])

"""What one KB knows of the alignment, on the wire (:class:`AlignmentView`) and in its local ids (:class:`LocalAlignment`).

The coordinator builds views (:mod:`kdmkb.coordinator.alignment`) and imports this module, not the worker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from kdmkb.kb_worker.data import KnowledgeBase
from kdmkb.kb_worker.shared_lists import map_ids
from kdmkb.kb_worker.worker_types.base import QueryKind
from kdmkb.services.errors import DataError


@dataclass(frozen=True)
class AlignmentView:
    """One worker's names' alignment ids, and what it shares with each peer."""

    entities: dict[str, int] = field(default_factory=dict)
    relations: dict[str, int] = field(default_factory=dict)
    # peer -> (entity alignment ids shared with it, relation alignment ids shared with it)
    peers: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)


# The columns of a triple that make each kind's query, and whether each is an entity.
QUERY_COLUMNS = {QueryKind.TAIL: (0, 1), QueryKind.HEAD: (1, 2), QueryKind.RELATION: (0, 2)}
_ENTITY_PARTS = {QueryKind.TAIL: (True, False), QueryKind.HEAD: (False, True), QueryKind.RELATION: (True, True)}

@dataclass
class PeerPools:
    """Local ids this KB shares with one peer, as masks (to select queries) and pools (candidates)."""

    entity_mask: torch.Tensor
    relation_mask: torch.Tensor
    entity_pool: torch.Tensor
    relation_pool: torch.Tensor
    signature: str  # equal for peers that share exactly the same ids, so their labels are computed once

    def pool(self, kind: QueryKind) -> torch.Tensor:
        """The candidates a query of ``kind`` may name: shared relations for relation queries, else shared entities."""
        return self.relation_pool if kind == QueryKind.RELATION else self.entity_pool

    def with_random(self, kind: QueryKind, top: torch.Tensor, count: int) -> torch.Tensor:
        """KD-MKB's candidates: each row of ``top`` followed by ``count`` random ids of the pool."""
        pool = self.pool(kind)
        return torch.cat([top, pool[torch.randint(pool.numel(), (top.shape[0], count))]], dim=1)

    def shares(self, kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor | None = None) -> bool:
        """Whether every given part of ``queries`` (local ids) and every candidate is shared with this peer."""
        first, second = (self.entity_mask if entity else self.relation_mask for entity in _ENTITY_PARTS[kind])
        shared = bool(first[queries[:, 0]].all()) and bool(second[queries[:, 1]].all())
        if candidates is not None:
            shared = shared and bool((self.relation_mask if kind == QueryKind.RELATION else self.entity_mask)[candidates].all())
        return shared

    def exchangeable(self, triples: torch.Tensor, relations: bool) -> Iterator[tuple[QueryKind, torch.Tensor, torch.Tensor]]:
        """``(kind, selected, queries)`` per kind of query worth exchanging with this peer about ``triples``.

        ``selected`` marks the triples whose query has both given parts shared; a kind is skipped when
        none has, or when the peer shares fewer than two candidates (a softmax over one carries nothing);
        relation queries only when ``relations``.
        """
        for kind in (QueryKind.TAIL, QueryKind.HEAD, QueryKind.RELATION):
            if kind == QueryKind.RELATION and not relations:
                continue
            selected = self.shared_queries(kind, triples)
            if self.pool(kind).numel() < 2 or not bool(selected.any()):
                continue
            yield kind, selected, triples[selected][:, list(QUERY_COLUMNS[kind])]

    def shared_queries(self, kind: QueryKind, triples: torch.Tensor) -> torch.Tensor:
        """Which triples' ``kind`` query has both given parts shared with this peer."""
        heads, relations, tails = triples.unbind(dim=1)
        e, r = self.entity_mask, self.relation_mask
        return {QueryKind.TAIL: e[heads] & r[relations], QueryKind.HEAD: r[relations] & e[tails], QueryKind.RELATION: e[heads] & e[tails]}[kind]



def _lookup_table(local_to_alignment: np.ndarray) -> np.ndarray:
    """Dense alignment id -> local id table (-1 where this KB has no member of the class)."""
    size = int(local_to_alignment.max()) + 1 if local_to_alignment.size and local_to_alignment.max() >= 0 else 0
    table = np.full(size, -1, dtype=np.int64)
    aligned = np.flatnonzero(local_to_alignment >= 0)
    table[local_to_alignment[aligned]] = aligned
    return table


class LocalAlignment:
    """One KB's :class:`AlignmentView` in local ids: translation both ways, and the pools shared with each peer."""

    def __init__(self, kb_name: str, kb: KnowledgeBase, view: AlignmentView) -> None:
        self.kb_name = kb_name
        self.view = view
        self.entity_ids = np.full(len(kb.entities), -1, dtype=np.int64)  # local -> alignment id
        self.relation_ids = np.full(len(kb.relations), -1, dtype=np.int64)
        for names, vocabulary, target, what in (
            (view.entities, kb.entities, self.entity_ids, "entity"),
            (view.relations, kb.relations, self.relation_ids, "relation"),
        ):
            for name, aid in names.items():
                local = vocabulary.index.get(name)
                if local is None:
                    raise DataError(f"alignment names {what} {name!r}, which is not in KB {kb_name!r}")
                target[local] = aid
        self._entity_table = _lookup_table(self.entity_ids)
        self._relation_table = _lookup_table(self.relation_ids)
        self.peers: dict[str, PeerPools] = {}
        for peer, (entity_ids, relation_ids) in view.peers.items():
            entity_mask = torch.from_numpy(np.isin(self.entity_ids, np.asarray(entity_ids, dtype=np.int64)))
            relation_mask = torch.from_numpy(np.isin(self.relation_ids, np.asarray(relation_ids, dtype=np.int64)))
            entity_pool, relation_pool = entity_mask.nonzero().flatten(), relation_mask.nonzero().flatten()
            signature = hashlib.sha256(entity_pool.numpy().tobytes() + b"/" + relation_pool.numpy().tobytes()).hexdigest()  # the same in every process: checkpoints key by it
            self.peers[peer] = PeerPools(entity_mask, relation_mask, entity_pool, relation_pool, signature)

    # -- local -> alignment ids ---------------------------------------------------------------
    def aligned_queries(self, kind: QueryKind, queries: torch.Tensor) -> np.ndarray:
        first, second = (self.entity_ids if entity else self.relation_ids for entity in _ENTITY_PARTS[kind])
        return np.stack([first[queries[:, 0].numpy()], second[queries[:, 1].numpy()]], axis=1)

    def aligned_candidates(self, kind: QueryKind, candidates: torch.Tensor) -> np.ndarray:
        table = self.relation_ids if kind == QueryKind.RELATION else self.entity_ids
        return map_ids(candidates, lambda ids: table[ids.numpy()])

    # -- alignment -> local ids ---------------------------------------------------------------
    def _local(self, table: np.ndarray, ids: np.ndarray, what: str, sender: str) -> torch.Tensor:
        inside = (ids >= 0) & (ids < len(table))
        local = np.where(inside, table[np.where(inside, ids, 0)], -1)
        if (local < 0).any():
            bad = int(ids[local < 0].flat[0])
            raise DataError(f"a message from {sender!r} names {what} alignment id {bad}, which KB {self.kb_name!r} does not share")
        return torch.from_numpy(local)

    def local_queries(self, kind: QueryKind, queries: np.ndarray, sender: str) -> torch.Tensor:
        first, second = (self._entity_table if entity else self._relation_table for entity in _ENTITY_PARTS[kind])
        return torch.stack([self._local(first, queries[:, 0], "query", sender), self._local(second, queries[:, 1], "query", sender)], dim=1)

    def local_candidates(self, kind: QueryKind, candidates: np.ndarray, sender: str) -> torch.Tensor:
        table = self._relation_table if kind == QueryKind.RELATION else self._entity_table
        return map_ids(candidates, lambda ids: self._local(table, ids, "candidate", sender))

"""Filtered link-prediction ranking (MR, MRR, Hits@k) over head and tail queries, batched.

Ties count as the mean of the optimistic and the pessimistic rank, so a model that scores
every entity alike gets the expected rank of a random guess, not rank 1.

Ranking is exact (every entity scored by the model) or retrieve-then-rerank (a worker type's
:class:`~kdmkb.kb_worker.worker_types.base.Ranking` names a retriever): the model re-scores the
retriever's filtered top k, every other entity ties below them, and the metrics say so
(``ranking`` = ``rerank@k(<retriever>)``, ``retriever_recall`` = the share of targets in the top k).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from kdmkb.kb_worker.worker_types.base import QueryKind, Ranking

HITS_AT = (1, 3, 10)


@dataclass(frozen=True)
class RankingMetrics:
    mrr: float
    mr: float
    hits_at_1: float
    hits_at_3: float
    hits_at_10: float
    num_queries: int
    seconds: float = 0.0
    ranking: str = "exact"
    retriever_recall: float | None = None  # rerank only: share of targets in the retriever's top k
    by_degree: dict[str, dict] | None = None  # with degrees given: the metrics per degree bucket of the target

    @classmethod
    def from_ranks(cls, ranks: torch.Tensor, seconds: float = 0.0, **how) -> "RankingMetrics":
        ranks = ranks.double()
        if ranks.numel() == 0:
            raise ValueError("no queries to rank")
        hits = {f"hits_at_{k}": float((ranks <= k).double().mean()) for k in HITS_AT}
        return cls(mrr=float((1.0 / ranks).mean()), mr=float(ranks.mean()), num_queries=ranks.numel(), seconds=seconds, **hits, **how)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class KnownAnswers:
    """Every known answer of (head, relation, ?) and (?, relation, tail) queries, as sorted keys."""

    def __init__(self, known: np.ndarray, num_entities: int, num_relations: int) -> None:
        self.num_entities = num_entities
        self.num_relations = num_relations
        known = torch.from_numpy(np.unique(known, axis=0))
        heads, relations, tails = known.unbind(dim=1)
        self._answers = {}
        for kind, given, answer in ((QueryKind.TAIL, heads * num_relations + relations, tails), (QueryKind.HEAD, tails * num_relations + relations, heads)):
            order = torch.argsort(given)
            self._answers[kind] = (given[order], answer[order])

    def pairs(self, kind: QueryKind, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, entities)``: for each query row, the ids of its known answers."""
        keys, answers = self._answers[kind]
        if kind == QueryKind.TAIL:
            query_keys = queries[:, 0] * self.num_relations + queries[:, 1]
        else:  # (relation, tail)
            query_keys = queries[:, 1] * self.num_relations + queries[:, 0]
        start = torch.searchsorted(keys, query_keys, side="left")
        stop = torch.searchsorted(keys, query_keys, side="right")
        counts = stop - start
        rows = torch.repeat_interleave(torch.arange(queries.shape[0]), counts)
        offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return rows, answers[torch.repeat_interleave(start, counts) + offsets]


def filtered_ranks(scores: torch.Tensor, targets: torch.Tensor, known_rows: torch.Tensor, known_entities: torch.Tensor) -> torch.Tensor:
    """Rank of ``targets`` in each row of ``scores`` after removing the other known answers.

    NaN scores count as the worst possible score.
    """
    # NaN (and -inf) become the lowest finite value, so that they stay above the filtered
    # answers' -inf below: a NaN target must not tie with the answers it filters out.
    scores = torch.nan_to_num(scores.float(), nan=torch.finfo(torch.float32).min)
    rows = torch.arange(scores.shape[0])
    target_scores = scores[rows, targets].clone()
    scores[known_rows, known_entities] = float("-inf")
    scores[rows, targets] = target_scores
    greater = (scores > target_scores[:, None]).sum(dim=1)
    equal = (scores == target_scores[:, None]).sum(dim=1) - 1
    return 1.0 + greater.double() + equal.double() / 2.0


def degree_bucket(degree: int) -> str:
    """The bucket of a train degree: "0", "1", "2-3", "4-7", ... (powers of two, as LMKE's long-tail figure groups entities)."""
    if degree < 2:
        return str(degree)
    low = 1 << (degree.bit_length() - 1)
    return f"{low}-{2 * low - 1}"


def metrics_by_degree(ranks: torch.Tensor, degrees: torch.Tensor) -> dict[str, dict]:
    """MRR, Hits@10 and the query count per degree bucket of each query's target, buckets in increasing order."""
    buckets: dict[str, list[int]] = {}
    for row, degree in enumerate(degrees.tolist()):
        buckets.setdefault(degree_bucket(int(degree)), []).append(row)
    ordered = sorted(buckets.items(), key=lambda item: int(item[0].split("-")[0]))
    return {name: {"num_queries": len(rows), "mrr": float((1.0 / ranks[rows].double()).mean()), "hits_at_10": float((ranks[rows] <= 10).double().mean())} for name, rows in ordered}


def reranked_scores(
    score: Callable[[QueryKind, torch.Tensor, torch.Tensor], torch.Tensor],
    ranking: Ranking,
    kind: QueryKind,
    queries: torch.Tensor,
    targets: torch.Tensor,
    known_rows: torch.Tensor,
    known_entities: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[q, n]`` of retrieve-then-rerank and whether each target was retrieved.

    The retriever's top k is taken after filtering (another known answer takes no place in it);
    ``score`` re-scores those k, and every other entity gets the lowest finite score, so that a
    target outside the top k ties with the rest of the unfiltered entities.
    """
    retrieved = torch.nan_to_num(ranking.retriever(kind, queries).float().cpu(), nan=torch.finfo(torch.float32).min)
    rows = torch.arange(queries.shape[0])
    target_scores = retrieved[rows, targets].clone()
    retrieved[known_rows, known_entities] = float("-inf")
    retrieved[rows, targets] = target_scores
    top = retrieved.topk(min(ranking.k, retrieved.shape[1]), dim=1).indices
    scores = torch.full_like(retrieved, torch.finfo(torch.float32).min)
    scores.scatter_(1, top, score(kind, queries, top).float().cpu())
    return scores, (top == targets[:, None]).any(dim=1)


@dataclass
class PartialRanking:
    """A ranking's first ``batches`` batches: their ranks, targets and (reranking) whether each target was retrieved.

    A cross-encoder scores every (query, entity) pair, an hour on UMLS here, so a ranking hands
    this out after each batch and an interrupted one goes on from it.
    """

    batches: int = 0
    seconds: float = 0.0  # of every sitting so far
    ranks: list[torch.Tensor] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)
    retrieved: list[torch.Tensor] = field(default_factory=list)

    @property
    def triples(self) -> int:
        """How many triples these batches ranked (a tail and a head query each)."""
        return sum(rank.shape[0] for rank in self.ranks[::2])


def evaluate_ranking(
    score: Callable[..., torch.Tensor],
    triples: np.ndarray,
    known: KnownAnswers,
    *,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    ranking: Ranking = Ranking(),
    degrees: np.ndarray | None = None,
    done: PartialRanking | None = None,
    on_batch: Callable[[PartialRanking], None] | None = None,
) -> RankingMetrics:
    """Filtered ranks of every triple's tail (given head, relation) and head (given relation, tail).

    ``score(kind, queries)`` scores every entity; with a retriever in ``ranking``,
    ``score(kind, queries, candidates)`` re-scores its top k. With ``degrees`` (each entity's
    train degree), the metrics are also given per degree bucket of the target entity. ``done``
    (the same triples and batch size) skips its batches; ``on_batch`` gets the ranking so far
    after each batch.
    """
    started = time.perf_counter()
    triples_t = torch.from_numpy(np.asarray(triples, dtype=np.int64))
    part = done or PartialRanking()
    earlier = part.seconds
    if progress is not None and part.batches:
        progress(part.triples)
    with torch.no_grad():
        for start in range(part.batches * batch_size, triples_t.shape[0], batch_size):
            batch = triples_t[start : start + batch_size]
            for kind, queries, targets in (
                (QueryKind.TAIL, batch[:, [0, 1]], batch[:, 2]),
                (QueryKind.HEAD, batch[:, [1, 2]], batch[:, 0]),
            ):
                rows, entities = known.pairs(kind, queries)
                if ranking.retriever is None:
                    scores = score(kind, queries).float().cpu()
                else:
                    scores, hit = reranked_scores(score, ranking, kind, queries, targets, rows, entities)
                    part.retrieved.append(hit)
                part.ranks.append(filtered_ranks(scores, targets, rows, entities))
                part.targets.append(targets)
            part.batches += 1
            part.seconds = earlier + time.perf_counter() - started
            if progress is not None:
                progress(batch.shape[0])
            if on_batch is not None:
                on_batch(part)
    recall = float(torch.cat(part.retrieved).double().mean()) if part.retrieved else None
    all_ranks = torch.cat(part.ranks)
    by_degree = metrics_by_degree(all_ranks, torch.from_numpy(np.asarray(degrees))[torch.cat(part.targets)]) if degrees is not None else None
    seconds = earlier + time.perf_counter() - started
    return RankingMetrics.from_ranks(all_ranks, seconds=seconds, ranking=ranking.label, retriever_recall=recall, by_degree=by_degree)

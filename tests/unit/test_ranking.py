"""Filtered ranking against a brute-force Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdmkb.kb_worker.ranking import KnownAnswers, RankingMetrics, evaluate_ranking, filtered_ranks
from kdmkb.kb_worker.worker_types import QueryKind

NUM_ENTITIES, NUM_RELATIONS = 30, 4


# -- brute-force reference -------------------------------------------------------------------------
def reference_rank(row: list[float], target: int, known: set[int]) -> float:
    """1 + (#strictly better) + (#ties)/2 over entities that are not other known answers; NaN is worst."""
    worst = lambda x: -math.inf if math.isnan(x) else x  # noqa: E731
    target_score = worst(row[target])
    greater = ties = 0
    for entity, score in enumerate(row):
        if entity == target or entity in known:
            continue
        score = worst(score)
        if score > target_score:
            greater += 1
        elif score == target_score:
            ties += 1
    return 1 + greater + ties / 2


def reference_answers(known: np.ndarray):
    tails, heads = {}, {}
    for h, r, t in known.tolist():
        tails.setdefault((h, r), set()).add(t)
        heads.setdefault((r, t), set()).add(h)
    return tails, heads


def reference_metrics(ranks: list[float]) -> dict[str, float]:
    n = len(ranks)
    return {
        "mrr": sum(1 / r for r in ranks) / n,
        "mr": sum(ranks) / n,
        **{f"hits_at_{k}": sum(1 for r in ranks if r <= k) / n for k in (1, 3, 10)},
    }


def random_splits(seed: int):
    """Distinct random triples split into train/valid/test (no triple in two splits)."""
    rng = np.random.default_rng(seed)
    triples = np.unique(rng.integers(0, [NUM_ENTITIES, NUM_RELATIONS, NUM_ENTITIES], size=(400, 3)), axis=0)
    # several answers per query: force a few popular (head, relation) and (relation, tail)
    rng.shuffle(triples)
    train, valid, test = triples[:250], triples[250:300], triples[300:360]
    # duplicates inside a split are allowed and must not change anything
    train = np.concatenate([train, train[:10]])
    return train, valid, test


def rounded_scores(rows: int, seed: int, nan_fraction: float = 0.0) -> torch.Tensor:
    """Scores on a coarse grid, so ties are common; optionally some NaNs."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(rows, NUM_ENTITIES)), 1).astype(np.float32)
    if nan_fraction:
        scores[rng.random(scores.shape) < nan_fraction] = np.nan
    return torch.from_numpy(scores)


# -- RankingMetrics ------------------------------------------------------------------------------
def test_metrics_from_ranks_hand_computed():
    metrics = RankingMetrics.from_ranks(torch.tensor([1.0, 2.0, 3.5, 10.0, 11.0]))
    assert metrics.mrr == pytest.approx((1 + 1 / 2 + 1 / 3.5 + 1 / 10 + 1 / 11) / 5)
    assert metrics.mr == pytest.approx(27.5 / 5)
    assert (metrics.hits_at_1, metrics.hits_at_3, metrics.hits_at_10) == pytest.approx((0.2, 0.4, 0.8))
    assert metrics.num_queries == 5
    with pytest.raises(ValueError):
        RankingMetrics.from_ranks(torch.tensor([]))


# -- KnownAnswers ----------------------------------------------------------------------------------
def test_known_answers_pairs_match_reference():
    train, valid, test = random_splits(0)
    known_triples = np.concatenate([train, valid, test])
    known = KnownAnswers(known_triples, NUM_ENTITIES, NUM_RELATIONS)
    tails, heads = reference_answers(known_triples)
    # every (head, relation) and (relation, tail) query, most with no answer at all
    grid = torch.tensor([(e, r) for e in range(NUM_ENTITIES) for r in range(NUM_RELATIONS)])
    for kind, queries, answers in (
        (QueryKind.TAIL, grid, {q: tails.get(q, set()) for q in map(tuple, grid.tolist())}),
        (QueryKind.HEAD, grid[:, [1, 0]], {(r, e): heads.get((r, e), set()) for e, r in grid.tolist()}),
    ):
        rows, entities = known.pairs(kind, queries)
        got: dict[tuple, list[int]] = {}
        for row, entity in zip(rows.tolist(), entities.tolist()):
            got.setdefault(tuple(queries[row].tolist()), []).append(entity)
        for query, expected in answers.items():
            found = got.get(query, [])
            assert sorted(found) == sorted(expected), (kind, query)  # each answer exactly once


# -- filtered_ranks --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("nan_fraction", [0.0, 0.15])
def test_filtered_ranks_match_brute_force(seed, nan_fraction):
    train, valid, test = random_splits(seed)
    known_triples = np.concatenate([train, valid, test])
    known = KnownAnswers(known_triples, NUM_ENTITIES, NUM_RELATIONS)
    tails, heads = reference_answers(known_triples)
    test_t = torch.from_numpy(test)
    for kind, queries, targets, answers in (
        (QueryKind.TAIL, test_t[:, [0, 1]], test_t[:, 2], [tails[(h, r)] for h, r, _ in test.tolist()]),
        (QueryKind.HEAD, test_t[:, [1, 2]], test_t[:, 0], [heads[(r, t)] for _, r, t in test.tolist()]),
    ):
        scores = rounded_scores(len(test), seed + 10 * int(kind), nan_fraction)
        before = scores.clone()
        rows, entities = known.pairs(kind, queries)
        got = filtered_ranks(scores, targets, rows, entities)
        expected = [reference_rank(row, target, answers[i] - {target}) for i, (row, target) in enumerate(zip(scores.tolist(), targets.tolist()))]
        assert got.tolist() == pytest.approx(expected)
        assert torch.equal(scores.nan_to_num(-99.0), before.nan_to_num(-99.0))  # the caller's scores are untouched
    assert sum(len(a) > 1 for a in tails.values()) > 5  # the filter is really exercised


def test_filtered_ranks_small_hand_example():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.7, 0.5]])
    # target 0 (0.5); entity 1 (0.9) is another known answer: filtered. Better: 4 (0.7). Ties: 2, 5.
    rank = filtered_ranks(scores, torch.tensor([0]), torch.tensor([0, 0]), torch.tensor([1, 0]))
    assert rank.tolist() == [1 + 1 + 2 / 2]
    unfiltered = filtered_ranks(scores, torch.tensor([0]), torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    assert unfiltered.tolist() == [1 + 2 + 2 / 2]


def test_constant_scores_give_the_expected_random_rank():
    scores = torch.zeros(2, 10)
    rank = filtered_ranks(scores, torch.tensor([3, 0]), torch.tensor([0, 0, 1]), torch.tensor([5, 6, 9]))
    assert rank.tolist() == [1 + (10 - 1 - 2) / 2, 1 + (10 - 1 - 1) / 2]


def test_nan_never_improves_a_rank():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(8, NUM_ENTITIES, generator=generator)
    targets = torch.randint(NUM_ENTITIES, (8,), generator=generator)
    known_rows = torch.arange(8).repeat_interleave(3)
    known_entities = torch.randint(NUM_ENTITIES, (24,), generator=generator)
    rows = torch.arange(8)

    # a NaN target ranks at least as badly as the worst finite target score, and filtered answers
    # stay filtered (they are not counted, not even as ties)
    nan_target = scores.clone()
    nan_target[rows, targets] = float("nan")
    worst_finite = scores.clone()
    worst_finite[rows, targets] = -1e30
    nan_ranks = filtered_ranks(nan_target, targets, known_rows, known_entities)
    assert (nan_ranks >= filtered_ranks(worst_finite, targets, known_rows, known_entities)).all()
    expected = [
        reference_rank(row, target, set(known_entities[known_rows == i].tolist()) - {target})
        for i, (row, target) in enumerate(zip(nan_target.tolist(), targets.tolist()))
    ]
    assert nan_ranks.tolist() == pytest.approx(expected)

    # NaN elsewhere never beats a finite target: same rank as if those entities were absent (-inf)
    base = filtered_ranks(scores, targets, known_rows, known_entities)
    nan_others = scores.clone()
    mask = torch.rand(scores.shape, generator=generator) < 0.3
    mask[rows, targets] = False
    nan_others[mask] = float("nan")
    lowered = scores.clone()
    lowered[mask] = -1e30
    assert (filtered_ranks(nan_others, targets, known_rows, known_entities) <= base).all()
    assert torch.equal(filtered_ranks(nan_others, targets, known_rows, known_entities), filtered_ranks(lowered, targets, known_rows, known_entities))

    # all NaN: every unfiltered entity ties with the target
    all_nan = torch.full((1, 10), float("nan"))
    assert filtered_ranks(all_nan, torch.tensor([2]), torch.tensor([0, 0]), torch.tensor([2, 7])).tolist() == [1 + 8 / 2]


# -- evaluate_ranking ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("batch_size", [7, 256])
def test_evaluate_ranking_matches_brute_force(seed, batch_size):
    train, valid, test = random_splits(seed)
    known_triples = np.concatenate([train, valid, test])
    known = KnownAnswers(known_triples, NUM_ENTITIES, NUM_RELATIONS)
    tails, heads = reference_answers(known_triples)
    rng = np.random.default_rng(100 + seed)
    # fixed score tables: tail_table[h, r] scores every tail, head_table[r, t] every head
    tail_table = torch.from_numpy(np.round(rng.normal(size=(NUM_ENTITIES, NUM_RELATIONS, NUM_ENTITIES)), 1).astype(np.float32))
    head_table = torch.from_numpy(np.round(rng.normal(size=(NUM_RELATIONS, NUM_ENTITIES, NUM_ENTITIES)), 1).astype(np.float32))
    calls = []

    def score_all(kind, queries):
        calls.append((kind, queries.shape[0]))
        if kind == QueryKind.TAIL:
            return tail_table[queries[:, 0], queries[:, 1]]
        assert kind == QueryKind.HEAD
        return head_table[queries[:, 0], queries[:, 1]]

    progress = []
    metrics = evaluate_ranking(score_all, test, known, batch_size=batch_size, progress=progress.append)

    ranks = []
    for h, r, t in test.tolist():
        ranks.append(reference_rank(tail_table[h, r].tolist(), t, tails[(h, r)] - {t}))
        ranks.append(reference_rank(head_table[r, t].tolist(), h, heads[(r, t)] - {h}))
    expected = reference_metrics(ranks)
    assert metrics.num_queries == 2 * len(test)
    for key, value in expected.items():
        assert metrics.as_dict()[key] == pytest.approx(value, rel=1e-12), key
    assert sum(progress) == len(test)
    assert max(size for _, size in calls) <= batch_size
    assert {kind for kind, _ in calls} == {QueryKind.TAIL, QueryKind.HEAD}


def test_evaluate_ranking_perfect_and_worst_models():
    train, valid, test = random_splits(5)
    known = KnownAnswers(np.concatenate([train, valid, test]), NUM_ENTITIES, NUM_RELATIONS)
    test_t = torch.from_numpy(test)

    def make(sign):
        def score_all(kind, queries):
            # find the batch's targets: the test triples with these query parts
            scores = torch.zeros(queries.shape[0], NUM_ENTITIES)
            for i, query in enumerate(queries.tolist()):
                if kind == QueryKind.TAIL:
                    match = (test_t[:, 0] == query[0]) & (test_t[:, 1] == query[1])
                    scores[i, test_t[match, 2]] = sign
                else:
                    match = (test_t[:, 1] == query[0]) & (test_t[:, 2] == query[1])
                    scores[i, test_t[match, 0]] = sign
            return scores

        return score_all

    perfect = evaluate_ranking(make(1.0), test, known)
    assert perfect.mrr == 1.0 and perfect.mr == 1.0 and perfect.hits_at_1 == 1.0
    worst = evaluate_ranking(make(-1.0), test, known)
    assert worst.hits_at_10 == 0.0 and worst.mr > NUM_ENTITIES - 10


# -- retrieve-then-rerank ---------------------------------------------------------------------------
def reference_rerank_rank(retrieved: list[float], reranked: list[float], target: int, known: set[int], k: int) -> tuple[float, bool]:
    """By hand: the retriever's top k among the unfiltered entities (target included) keep the
    reranker's scores; every other unfiltered entity ties below all of them."""
    candidates = [e for e in range(len(retrieved)) if e == target or e not in known]
    top = set(sorted(candidates, key=lambda e: -retrieved[e])[:k])
    if target in top:
        return 1 + sum(reranked[e] > reranked[target] for e in top if e != target) + sum(reranked[e] == reranked[target] for e in top if e != target) / 2, True
    rest = [e for e in candidates if e not in top and e != target]
    return 1 + len(top) + len(rest) / 2, False


@pytest.mark.parametrize("k", [1, 5, NUM_ENTITIES])
def test_rerank_matches_brute_force_and_reports_recall(k):
    from kdmkb.kb_worker.worker_types.base import Ranking

    train, valid, test = random_splits(7)
    known_triples = np.concatenate([train, valid, test])
    known = KnownAnswers(known_triples, NUM_ENTITIES, NUM_RELATIONS)
    tails, heads = reference_answers(known_triples)
    rng = np.random.default_rng(3)
    # distinct values: the retriever's top k is unambiguous
    retriever_table = torch.from_numpy(rng.permutation(NUM_ENTITIES * NUM_RELATIONS * NUM_ENTITIES * 2).reshape(2, NUM_ENTITIES, NUM_RELATIONS, NUM_ENTITIES).astype(np.float32))
    reranker_table = torch.from_numpy(np.round(rng.normal(size=(2, NUM_ENTITIES, NUM_RELATIONS, NUM_ENTITIES)), 1).astype(np.float32))

    def lookup(table, kind, queries):
        if kind == QueryKind.TAIL:
            return table[0, queries[:, 0], queries[:, 1]]
        return table[1, queries[:, 1], queries[:, 0]]  # (r, t) -> indexed by t, r

    def rescore(kind, queries, candidates=None):
        assert candidates is not None and candidates.shape == (queries.shape[0], min(k, NUM_ENTITIES)), "the reranker scores only the top k"
        return lookup(reranker_table, kind, queries).gather(1, candidates)

    ranking = Ranking(retriever=lambda kind, queries: lookup(retriever_table, kind, queries), retriever_name="table", k=k)
    metrics = evaluate_ranking(rescore, test, known, batch_size=5, ranking=ranking)

    ranks, hits = [], []
    for h, r, t in test.tolist():
        for table_index, row_of, target, others in ((0, (h, r), t, tails[(h, r)] - {t}), (1, (t, r), h, heads[(r, t)] - {h})):
            rank, hit = reference_rerank_rank(retriever_table[table_index][row_of].tolist(), reranker_table[table_index][row_of].tolist(), target, others, k)
            ranks.append(rank)
            hits.append(hit)
    expected = reference_metrics(ranks)
    for key, value in expected.items():
        assert metrics.as_dict()[key] == pytest.approx(value, rel=1e-12), key
    assert metrics.ranking == f"rerank@{k}(table)"
    assert metrics.retriever_recall == pytest.approx(sum(hits) / len(hits))
    if k == NUM_ENTITIES:  # everything retrieved: the reranker's exact ranking
        exact = evaluate_ranking(lambda kind, queries: lookup(reranker_table, kind, queries), test, known)
        assert metrics.mrr == pytest.approx(exact.mrr) and metrics.retriever_recall == 1.0 and exact.ranking == "exact"


# -- metrics per degree bucket of the target (LMKE's long-tail figure) ----------------------------
def test_degree_buckets_are_powers_of_two():
    from kdmkb.kb_worker.ranking import degree_bucket

    assert [degree_bucket(d) for d in (0, 1, 2, 3, 4, 7, 8, 100)] == ["0", "1", "2-3", "2-3", "4-7", "4-7", "8-15", "64-127"]


def test_metrics_by_degree_split_the_ranks_by_their_targets_degree():
    train, valid, test = random_splits(11)
    known = KnownAnswers(np.concatenate([train, valid, test]), NUM_ENTITIES, NUM_RELATIONS)
    rng = np.random.default_rng(5)
    table = torch.from_numpy(rng.normal(size=(NUM_ENTITIES, NUM_RELATIONS, NUM_ENTITIES)).astype(np.float32))

    def score(kind, queries):
        return table[queries[:, 0], queries[:, 1]] if kind == QueryKind.TAIL else table[queries[:, 1], queries[:, 0]]

    degrees = np.bincount(train[:, [0, 2]].ravel(), minlength=NUM_ENTITIES)
    metrics = evaluate_ranking(score, test, known, batch_size=4, degrees=degrees)
    plain = evaluate_ranking(score, test, known, batch_size=4)
    assert plain.by_degree is None and metrics.mrr == plain.mrr
    buckets = metrics.by_degree
    assert sum(b["num_queries"] for b in buckets.values()) == metrics.num_queries
    # the count-weighted mean of the buckets' MRR is the overall MRR, and each target lands in its own bucket
    assert sum(b["mrr"] * b["num_queries"] for b in buckets.values()) / metrics.num_queries == pytest.approx(metrics.mrr)
    from kdmkb.kb_worker.ranking import degree_bucket

    expected = {}
    for h, r, t in test.tolist():
        for target in (t, h):
            expected[degree_bucket(int(degrees[target]))] = expected.get(degree_bucket(int(degrees[target])), 0) + 1
    assert {name: b["num_queries"] for name, b in buckets.items()} == expected
    assert list(buckets) == sorted(buckets, key=lambda name: int(name.split("-")[0]))

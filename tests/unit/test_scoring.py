"""Structural models' scores against independent formulas, and the shared scoring helpers.

Every structural worker type must have a case in ``CASES`` (``test_registry`` checks this), so a
new worker type cannot ship without its score being checked against a written-out formula.
"""

from __future__ import annotations

import cmath
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

from kdmkb.kb_worker.scoring import METRICS, all_pairs_scores, matched_scores
from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind
from kdmkb.kb_worker.worker_types.structural import EXACT_METRICS, RERANK_FACTOR
from kdmkb.services.ray_runtime import WORKER_ENV

TAIL, HEAD, RELATION = QueryKind.TAIL, QueryKind.HEAD, QueryKind.RELATION


# -- independent reference scores: plain Python on lists of floats -----------------------------
# E, R: entity and relation weights as lists of rows; h, r, t: ids; dim: the settings' dim.
def _c(row, i, dim):
    """Complex dimension ``i`` of a ``[real | imaginary]`` row."""
    return complex(row[i], row[i + dim])


def transe_reference(p):
    def score(E, R, h, r, t, dim):
        return -sum(abs(E[h][i] + R[r][i] - E[t][i]) ** p for i in range(dim)) ** (1.0 / p)

    return score


def distmult_reference(E, R, h, r, t, dim):
    return sum(E[h][i] * R[r][i] * E[t][i] for i in range(dim))


def complex_reference(E, R, h, r, t, dim):
    return sum(_c(E[h], i, dim) * _c(R[r], i, dim) * _c(E[t], i, dim).conjugate() for i in range(dim)).real


def rotate_reference(E, R, h, r, t, dim):
    return -sum(abs(_c(E[h], i, dim) * cmath.exp(1j * R[r][i]) - _c(E[t], i, dim)) for i in range(dim))


@dataclass(frozen=True)
class Case:
    worker: str
    settings: dict
    reference: Callable
    # (entity rows, relation rows, (h, r, t), expected) worked out by hand, dim taken from the rows
    hand: tuple = field(default=())


CASES = {
    # h=(1,2), r=(.5,-1), t=(0,0): h+r-t=(1.5,1) -> L1 2.5, L2 sqrt(3.25)
    "transe-l1": Case("transe", {"norm": 1}, transe_reference(1), ([[1, 2], [0, 0]], [[0.5, -1]], (0, 0, 1), -2.5)),
    "transe-l2": Case("transe", {"norm": 2}, transe_reference(2), ([[1, 2], [0, 0]], [[0.5, -1]], (0, 0, 1), -math.sqrt(3.25))),
    # 1*.5*.5 + 2*(-1)*(-1) = 2.25
    "distmult": Case("distmult", {}, distmult_reference, ([[1, 2], [0.5, -1]], [[0.5, -1]], (0, 0, 1), 2.25)),
    # dim 1: h=1+2i, r=.5-i, t=3+i: h*r = 2.5, 2.5*conj(t) = 7.5-2.5i -> 7.5
    "complex": Case("complex", {}, complex_reference, ([[1, 2], [3, 1]], [[0.5, -1]], (0, 0, 1), 7.5)),
    # dim 1: h=1, theta=pi/2 so h*r=i, t=3+i: |i-(3+i)| = 3
    "rotate": Case("rotate", {}, rotate_reference, ([[1, 0], [3, 1]], [[math.pi / 2]], (0, 0, 1), -3.0)),
}
COVERED_WORKER_TYPES = frozenset(case.worker for case in CASES.values())
FAISS_CASES = list(CASES)  # every structural model retrieves with faiss (l1 and rotate through an L2 shortlist)
EXACT_CASES = [name for name, case in CASES.items() if case.worker in ("distmult", "complex") or name == "transe-l2"]


def build(case: Case, kb, dim: int):
    cls = WORKER_TYPES.get(case.worker)
    return cls(kb, cls.validate_settings({"dim": dim, **case.settings}))


def set_weights(worker, entity, relation) -> None:
    with torch.no_grad():
        worker.model.entity.weight.copy_(torch.as_tensor(entity, dtype=torch.float32))
        worker.model.relation.weight.copy_(torch.as_tensor(relation, dtype=torch.float32))


def random_worker(case: Case, kb, dim: int, seed: int = 0):
    """A worker with random weights (phases in [-pi, pi] for RotatE relations)."""
    worker = build(case, kb, dim)
    generator = torch.Generator().manual_seed(seed)
    entity = torch.rand(worker.model.entity.weight.shape, generator=generator) * 2 - 1
    relation = torch.rand(worker.model.relation.weight.shape, generator=generator) * 2 - 1
    if case.worker == "rotate":
        relation = relation * math.pi
    set_weights(worker, entity, relation)
    return worker


def weights_as_lists(worker):
    return worker.model.entity.weight.tolist(), worker.model.relation.weight.tolist()


DIM = 2
NUM_ENTITIES, NUM_RELATIONS = 5, 3


@pytest.fixture(params=sorted(CASES))
def case_name(request):
    return request.param


# -- score_candidates against the formulas ---------------------------------------------------------
def test_hand_computed_score(case_name, make_kb):
    case = CASES[case_name]
    entity, relation, (h, r, t), expected = case.hand
    dim = len(relation[0]) if case.worker != "complex" else len(relation[0]) // 2
    worker = build(case, make_kb(len(entity), len(relation)), dim)
    set_weights(worker, entity, relation)
    with torch.no_grad():
        tail = worker.score(TAIL, torch.tensor([[h, r]]), torch.tensor([[t]]))
        head = worker.score(HEAD, torch.tensor([[r, t]]), torch.tensor([[h]]))
        rel = worker.score(RELATION, torch.tensor([[h, t]]), torch.tensor([[r]]))
    for got in (tail, head, rel):
        assert got.shape == (1, 1)
        assert got.item() == pytest.approx(expected, abs=1e-5)


def test_tail_head_relation_scores_match_reference(case_name, make_kb):
    case = CASES[case_name]
    worker = random_worker(case, make_kb(NUM_ENTITIES, NUM_RELATIONS), DIM)
    E, R = weights_as_lists(worker)
    ref = lambda h, r, t: case.reference(E, R, h, r, t, DIM)  # noqa: E731
    generator = torch.Generator().manual_seed(1)
    pairs_er = torch.tensor([(h, r) for h in range(NUM_ENTITIES) for r in range(NUM_RELATIONS)])
    # every query gets its own shuffled candidate row, with a repeat, so rows must not be mixed up
    entity_candidates = torch.stack([torch.randperm(NUM_ENTITIES, generator=generator) for _ in pairs_er])
    entity_candidates = torch.cat([entity_candidates, entity_candidates[:, :1]], dim=1)
    with torch.no_grad():
        tail = worker.score(TAIL, pairs_er, entity_candidates)
        head = worker.score(HEAD, pairs_er[:, [1, 0]], entity_candidates)  # (r, t) queries
    expected_tail = [[ref(h, r, c) for c in row] for (h, r), row in zip(pairs_er.tolist(), entity_candidates.tolist())]
    expected_head = [[ref(c, r, t) for c in row] for (t, r), row in zip(pairs_er.tolist(), entity_candidates.tolist())]
    torch.testing.assert_close(tail, torch.tensor(expected_tail), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head, torch.tensor(expected_head), atol=1e-5, rtol=1e-5)

    pairs_ee = torch.tensor([(h, t) for h in range(NUM_ENTITIES) for t in range(NUM_ENTITIES)])
    relation_candidates = torch.stack([torch.randperm(NUM_RELATIONS, generator=generator) for _ in pairs_ee])
    with torch.no_grad():
        rel = worker.score(RELATION, pairs_ee, relation_candidates)
    expected_rel = [[ref(h, c, t) for c in row] for (h, t), row in zip(pairs_ee.tolist(), relation_candidates.tolist())]
    torch.testing.assert_close(rel, torch.tensor(expected_rel), atol=1e-5, rtol=1e-5)


def test_score_is_the_same_for_tail_head_and_relation_queries(case_name, make_kb):
    case = CASES[case_name]
    worker = random_worker(case, make_kb(NUM_ENTITIES, NUM_RELATIONS), DIM, seed=3)
    triples = torch.tensor([(h, r, t) for h in range(NUM_ENTITIES) for r in range(NUM_RELATIONS) for t in range(NUM_ENTITIES)])
    h, r, t = triples.unbind(dim=1)
    with torch.no_grad():
        as_tail = worker.score(TAIL, torch.stack([h, r], 1), t[:, None])[:, 0]
        as_head = worker.score(HEAD, torch.stack([r, t], 1), h[:, None])[:, 0]
        as_relation = worker.score(RELATION, torch.stack([h, t], 1), r[:, None])[:, 0]
    torch.testing.assert_close(as_head, as_tail, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(as_relation, as_tail, atol=1e-6, rtol=1e-6)


def test_score_candidates_is_differentiable(case_name, make_kb):
    case = CASES[case_name]
    worker = random_worker(case, make_kb(NUM_ENTITIES, NUM_RELATIONS), DIM, seed=5)
    scores = worker.score(TAIL, torch.tensor([[0, 1]]), torch.tensor([[2, 3]]))
    (scores * torch.tensor([[1.0, 2.5]])).sum().backward()  # unequal weights: no sign cancellation (L1)
    entity_grad = worker.model.entity.weight.grad
    assert entity_grad[[0, 2, 3]].abs().sum() > 0
    assert entity_grad[[1, 4]].abs().sum() == 0  # untouched entities get no gradient
    assert worker.model.relation.weight.grad[1].abs().sum() > 0


# -- top_candidates: faiss (l1, l2, ip) or exact (rotate) vs brute force ---------------------------
def brute_force_top(worker, kind, queries, pool, k):
    with torch.no_grad():
        scores = worker.score(kind, queries, pool.expand(queries.shape[0], -1))
    order = scores.argsort(dim=1, descending=True)
    k = min(k, pool.numel())
    if k < pool.numel():  # the expected set must be unambiguous: no tie at the cut
        cut = scores.gather(1, order[:, k - 1 : k + 1])
        assert (cut[:, 0] - cut[:, 1]).min() > 1e-5
    return [set(row) for row in pool[order[:, :k]].tolist()], scores


def l2_shortlist(worker, kind, queries, pool, k):
    """Reference of the L2 shortlist that L1 and RotatE rerank: plain torch, no faiss."""
    with torch.no_grad():
        vectors = worker._queries(kind, queries)
        keys = worker.model.key(worker.model.entity.weight[pool])
        distances = ((vectors[:, None, :] - keys[None, :, :]) ** 2).sum(-1)
    size = min(pool.numel(), RERANK_FACTOR * k)
    return pool[distances.argsort(dim=1)[:, :size]]


def check_top_candidates(worker, kind, queries, pool, k):
    got = worker.top_candidates(kind, queries, pool, k)
    if worker.model.metric in EXACT_METRICS:
        expected, scores = brute_force_top(worker, kind, queries, pool, k)
    else:  # the exact top-k of the L2 shortlist
        shortlist = l2_shortlist(worker, kind, queries, pool, k)
        with torch.no_grad():
            shortlist_scores = worker.score(kind, queries, shortlist)
        expected = [set(row) for row in shortlist.gather(1, shortlist_scores.topk(min(k, pool.numel()), dim=1).indices).tolist()]
        _, scores = brute_force_top(worker, kind, queries, pool, k)
    assert got.shape == (queries.shape[0], min(k, pool.numel()))
    assert [set(row) for row in got.tolist()] == expected
    # best first
    position = {e: i for i, e in enumerate(pool.tolist())}
    got_scores = scores.gather(1, torch.tensor([[position[e] for e in row] for row in got.tolist()]))
    assert (got_scores[:, :-1] >= got_scores[:, 1:] - 1e-5).all()


@pytest.mark.parametrize("k", [1, 4, 17, 25])
def test_top_candidates_matches_brute_force(case_name, k, make_kb):
    case = CASES[case_name]
    num_entities = 40
    worker = random_worker(case, make_kb(num_entities, NUM_RELATIONS), dim=4, seed=6)
    assert (worker.model.metric in EXACT_METRICS) == (case_name in EXACT_CASES)  # both paths covered
    generator = torch.Generator().manual_seed(7)
    pool = torch.randperm(num_entities, generator=generator)[:17]
    heads = torch.randint(num_entities, (6,), generator=generator)
    relations = torch.randint(NUM_RELATIONS, (6,), generator=generator)
    check_top_candidates(worker, TAIL, torch.stack([heads, relations], 1), pool, k)
    check_top_candidates(worker, HEAD, torch.stack([relations, heads], 1), pool, k)


@pytest.mark.parametrize("name", FAISS_CASES)
def test_top_candidates_follows_pool_and_weight_changes(name, make_kb):
    """The faiss index is cached; a changed pool or updated weights must not serve stale results."""
    case = CASES[name]
    num_entities = 40
    worker = random_worker(case, make_kb(num_entities, NUM_RELATIONS), dim=4, seed=8)
    generator = torch.Generator().manual_seed(9)
    queries = torch.stack([torch.randint(num_entities, (6,), generator=generator), torch.randint(NUM_RELATIONS, (6,), generator=generator)], 1)
    pool = torch.randperm(num_entities, generator=generator)[:12]
    check_top_candidates(worker, TAIL, queries, pool, 3)
    # same buffer (same address, same size), new contents: e.g. a reused request buffer
    pool.copy_(torch.randperm(num_entities, generator=generator)[:12])
    check_top_candidates(worker, TAIL, queries, pool, 3)
    # fresh pools one after another (the allocator may hand out the same address again)
    for _ in range(10):
        check_top_candidates(worker, TAIL, queries, torch.randperm(num_entities, generator=generator)[:12], 3)
    # an optimizer step updates the weights in place
    optimizer = torch.optim.SGD(worker.modules().parameters(), lr=5.0)
    worker.score(TAIL, queries, pool.expand(6, -1)).sum().neg().backward()
    optimizer.step()
    check_top_candidates(worker, TAIL, queries, pool, 3)


# -- the shared helpers of kb_worker.scoring -------------------------------------------------------
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunk_elements", [1, 13, 6 * 5 * 2, 2**24])
def test_all_pairs_scores_agree_with_matched_scores(metric, chunk_elements):
    queries = torch.randn(5, 6)
    keys = torch.randn(9, 6)
    got = all_pairs_scores(queries, keys, metric, chunk_elements=chunk_elements)
    expected = matched_scores(queries[:, None, :], keys[None, :, :], metric)
    assert got.shape == (5, 9)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_matched_scores_hand_computed():
    q = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    k = torch.tensor([[0.0, 1.0, -1.0, 0.5]])
    # difference (1, -3, 4, 0)
    assert matched_scores(q, k, "ip").item() == pytest.approx(0 - 2 - 3 + 0.25)
    assert matched_scores(q, k, "l1").item() == pytest.approx(-8.0)
    assert matched_scores(q, k, "l2").item() == pytest.approx(-math.sqrt(1 + 9 + 16))
    # complex: (1 + 4i, -3 + 0i) -> |.| = sqrt(17) + 3
    assert matched_scores(q, k, "complex_l1").item() == pytest.approx(-(math.sqrt(17) + 3), abs=1e-5)
    with pytest.raises(ValueError, match="unknown metric"):
        matched_scores(q, k, "cosine")


@pytest.mark.parametrize("name", [n for n in CASES if n not in EXACT_CASES])
def test_reranked_shortlist_recalls_the_exact_top_k(name, make_kb):
    """L1 and RotatE retrieve by L2 then rerank: most of the exact top-k must survive."""
    num_entities = 300
    worker = random_worker(CASES[name], make_kb(num_entities, NUM_RELATIONS), dim=32, seed=11)
    generator = torch.Generator().manual_seed(12)
    queries = torch.stack([torch.randint(num_entities, (50,), generator=generator), torch.randint(NUM_RELATIONS, (50,), generator=generator)], 1)
    pool = torch.arange(num_entities)
    got = worker.top_candidates(TAIL, queries, pool, 10)
    with torch.no_grad():
        exact = worker.score(TAIL, queries, pool.expand(50, -1)).topk(10, dim=1).indices
    recall = sum(len(set(a) & set(b)) for a, b in zip(got.tolist(), exact.tolist())) / exact.numel()
    assert recall >= 0.9, recall


def test_chunked_all_pairs_scores_peak_memory_stays_bounded():
    """RotatE's chunked scoring, under the workers' allocator settings, in a fresh process.

    Chunk results kept in a list between the chunks' large temporaries fragmented glibc's heap:
    2.7 GB peak here (8.6 GB for WN18RR's 40,943 entities, which got a worker OOM-killed).
    """
    script = (
        "import resource, torch\n"
        "torch.set_num_threads(1)\n"
        "from kb_worker.scoring import all_pairs_scores\n"
        "queries, keys = torch.randn(256, 400), torch.nn.Parameter(torch.randn(12_000, 400))\n"
        "with torch.no_grad():\n"
        "    scores = all_pairs_scores(queries, keys, 'complex_l1')\n"
        "assert scores.shape == (256, 12_000)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    env = {**os.environ, **WORKER_ENV}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=300)
    peak_gb = int(done.stdout.split()[-1]) / 1e6  # ru_maxrss is in KiB on Linux
    # torch's import plus one chunk's temporaries (~5 x 67 MB) and the 12 MB result; not one chunk per key slice
    assert peak_gb < 1.2, f"peak RSS {peak_gb:.2f} GB"

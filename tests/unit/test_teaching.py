"""A teacher's soft labels: candidates from its (cached) top-k search, scores always fresh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdmkb.kb_worker import exchange
from kdmkb.kb_worker.worker import AlignmentView, KBWorker
from kdmkb.kb_worker.worker_types import QueryKind, WorkerType
from kdmkb.services.tsv import write_rows

K = 3


@pytest.fixture
def kb_folder(tmp_path):
    rng = np.random.default_rng(0)
    heads = rng.integers(0, 6, 300)  # few heads: many triples share a (head, relation) query
    triples = {(f"e{h}", f"r{r}", f"e{t}") for h, r, t in zip(heads, rng.integers(0, 3, 300), rng.integers(0, 30, 300))}
    triples = sorted(triples)
    write_rows(tmp_path / "train.tsv", triples[:-20])
    write_rows(tmp_path / "valid.tsv", triples[-20:-10])
    write_rows(tmp_path / "test.tsv", triples[-10:])
    write_rows(tmp_path / "entities.tsv", [(f"e{i}",) for i in range(30)])
    write_rows(tmp_path / "relations.tsv", [(f"r{i}",) for i in range(3)])
    return tmp_path


def teacher(folder, refresh_epochs: float) -> KBWorker:
    worker = KBWorker("teacher", folder, "transe", {"dim": 8, "batch_size": 32, "learning_rate": 0.05})
    ids = {f"e{i}": i for i in range(30)}, {f"r{i}": i for i in range(3)}
    view = AlignmentView(*ids, peers={"student": (list(range(30)), list(range(3)))})
    worker.configure("job", 0, {"top_k": K, "candidate_refresh_epochs": refresh_epochs}, view)
    return worker


def tail_lessons(worker: KBWorker, round_: int):
    _, (payload,) = worker.teach(round_, 2, ["student"])
    blocks = [b for b in exchange.decode(payload).blocks if b.kind == QueryKind.TAIL]
    return np.concatenate([b.queries for b in blocks]), np.concatenate([b.candidates for b in blocks]), np.concatenate([b.scores for b in blocks])


def fresh_top(worker: KBWorker, queries: np.ndarray) -> list[set]:
    with torch.no_grad():
        top = worker.model.top_candidates(QueryKind.TAIL, torch.from_numpy(queries), torch.arange(30), K)
    return [set(row) for row in top.tolist()]


def test_without_cache_every_lesson_uses_the_current_top_k(kb_folder):
    worker = teacher(kb_folder, refresh_epochs=0)
    for round_ in range(4):
        queries, candidates, _ = tail_lessons(worker, round_)
        assert [set(row) for row in candidates[:, :K].tolist()] == fresh_top(worker, queries)
        worker.train(round_, 2)


def test_cached_candidates_persist_but_scores_are_fresh(kb_folder):
    worker = teacher(kb_folder, refresh_epochs=1000)
    first_queries, first_candidates, _ = tail_lessons(worker, 0)
    searched = {tuple(q): set(c) for q, c in zip(first_queries.tolist(), first_candidates[:, :K].tolist())}
    for round_ in range(1, 12):  # the weights move: fresh searches would now differ for some queries
        worker.train(round_, 2)
    queries, candidates, scores = tail_lessons(worker, 12)
    now = fresh_top(worker, queries)
    repeated = [i for i, q in enumerate(queries.tolist()) if tuple(q) in searched]
    assert repeated, "the test needs queries seen in round 0 again"
    assert all(set(candidates[i, :K].tolist()) == searched[tuple(queries[i].tolist())] for i in repeated)
    assert any(set(candidates[i, :K].tolist()) != now[i] for i in repeated), "weights did not move enough to tell cached from fresh"
    with torch.no_grad():
        expected = worker.model.score(QueryKind.TAIL, torch.from_numpy(queries), torch.from_numpy(candidates))
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_scores_in_chunks_equal_scores_in_one_call(kb_folder, monkeypatch):
    """The teacher scores a round in slices of the type's slice_pairs pairs; the lesson must not depend on the slicing."""
    (whole,) = teacher(kb_folder, refresh_epochs=0).teach(0, 2, ["student"])[1]
    monkeypatch.setattr(WorkerType, "slice_pairs", 7)  # several slices per block, one row per slice for relations
    (sliced,) = teacher(kb_folder, refresh_epochs=0).teach(0, 2, ["student"])[1]
    a, b = exchange.decode(whole).blocks, exchange.decode(sliced).blocks
    assert len(a) == len(b) > 0 and {x.kind for x in a} == {QueryKind.TAIL, QueryKind.HEAD, QueryKind.RELATION}
    for x, y in zip(a, b):
        assert x.kind == y.kind and np.array_equal(x.queries, y.queries) and np.array_equal(x.candidates, y.candidates)
        np.testing.assert_allclose(x.scores, y.scores, rtol=1e-6, atol=1e-6)

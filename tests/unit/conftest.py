"""Shared fixtures of the unit tests: deterministic seeds, tiny hand-made KBs, the scoring contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdmkb.kb_worker.data import KnowledgeBase, Vocabulary
from kdmkb.kb_worker.worker_types import QueryKind


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same torch and numpy random state."""
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def tiny_kb(num_entities: int, num_relations: int, train=None, valid=None, test=None) -> KnowledgeBase:
    """A KB of entities ``e0..`` and relations ``r0..`` with the given id triples."""

    def triples(rows):
        return np.asarray(rows if rows is not None else np.zeros((0, 3)), dtype=np.int64).reshape(-1, 3)

    return KnowledgeBase(
        Vocabulary.of(f"e{i}" for i in range(num_entities)),
        Vocabulary.of(f"r{i}" for i in range(num_relations)),
        triples(train if train is not None else [[0, 0, 1]]),
        triples(valid),
        triples(test),
    )


@pytest.fixture
def make_kb():
    """The :func:`tiny_kb` factory, as a fixture (test modules do not import conftest)."""
    return tiny_kb


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    """Unit tests are pure: starting Ray here is a mistake (integration tests live in tests/integration)."""
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture
def one_thread():
    """Training tests run on one torch thread, as the workers do, and restore the count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check_score_all(worker, num_entities: int, num_relations: int, *, batch_independent: bool) -> None:
    """``score_all`` equals ``score_candidates`` over every entity, for head and tail queries of every
    (entity, relation) pair, and refuses relation queries. ``batch_independent`` also scores the
    queries one by one (a model in eval mode must not depend on its batch)."""
    queries = torch.tensor([(a, r) for a in range(num_entities) for r in range(num_relations)])
    everyone = torch.arange(num_entities).expand(queries.shape[0], -1)
    for kind, q in ((QueryKind.TAIL, queries), (QueryKind.HEAD, queries[:, [1, 0]])):
        with torch.no_grad():
            got = worker.score_all(kind, q)
            expected = worker.score_candidates(kind, q, everyone)
            if batch_independent:
                one_by_one = torch.cat([worker.score_candidates(kind, q[i : i + 1], everyone[:1]) for i in range(q.shape[0])])
                torch.testing.assert_close(one_by_one, expected, atol=1e-5, rtol=1e-5)
        assert got.shape == (queries.shape[0], num_entities)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        worker.score_all(QueryKind.RELATION, queries)


@pytest.fixture
def score_all_contract():
    """The :func:`check_score_all` check, as a fixture."""
    return check_score_all

"""Shared fixtures of the unit tests: deterministic seeds, tiny hand-made KBs, the scoring contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdmkb.kb_worker.data import KnowledgeBase, Vocabulary


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

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


@pytest.fixture
def same_gradients_in_passes():
    """``check(step, whole, passes, runs)``: a text type's step keeps its gradients whatever its pass size.

    ``step(eval_batch_size)`` builds ``(worker, encoder, score)``; in eval mode (no dropout) the
    gradients of ``score().square().sum()`` are the same with ``whole`` and ``passes`` sequences a
    pass, and ``encoder`` starts ``runs[0]`` and ``runs[1]`` times (a recomputed pass starts twice).
    """

    def gradients(step, eval_batch_size):
        worker, encoder, score = step(eval_batch_size)
        worker.modules().eval()
        calls = []
        # a pre-hook: a recompute stops once it has what the backward pass needs, before forward returns
        encoder.register_forward_pre_hook(lambda *_: calls.append(1))
        score().square().sum().backward()
        return {name: p.grad.clone() for name, p in worker.modules().named_parameters() if p.grad is not None}, len(calls)

    def check(step, whole, passes, runs):
        (whole_grads, whole_calls), (passes_grads, passes_calls) = gradients(step, whole), gradients(step, passes)
        assert (whole_calls, passes_calls) == runs
        assert whole_grads.keys() == passes_grads.keys() and len(whole_grads) > 0
        for name in whole_grads:
            torch.testing.assert_close(passes_grads[name], whole_grads[name], rtol=1e-4, atol=1e-6, msg=name)

    return check

"""Training sanity: TransE on the packaged UMLS KB learns far beyond an untrained model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdmkb.kb_worker.data import load_kb
from kdmkb.kb_worker.ranking import KnownAnswers, evaluate_ranking
from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind

UMLS = Path(__file__).parents[2] / "services" / "datasets" / "umls"


def test_transe_learns_umls(one_thread):
    kb = load_kb(UMLS)
    cls = WORKER_TYPES.get("transe")
    settings = cls.validate_settings({"dim": 50, "learning_rate": 5e-3, "batch_size": 128, "threads": 1})
    worker = cls(kb, settings)
    known = KnownAnswers(kb.known_triples(), len(kb.entities), len(kb.relations))
    untrained = evaluate_ranking(worker.score_all, kb.test, known)

    optimizer = torch.optim.Adam(worker.modules().parameters(), lr=settings.learning_rate)
    train = torch.from_numpy(kb.train)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = train[torch.randint(len(train), (settings.batch_size,), generator=generator)]
        optimizer.zero_grad()
        loss = worker.train_loss(batch)
        loss.backward()
        optimizer.step()

    trained = evaluate_ranking(worker.score_all, kb.test, known)
    assert trained.num_queries == 2 * len(kb.test)
    assert trained.mrr > 0.3, (untrained, trained)
    assert trained.mrr > 5 * untrained.mrr, (untrained, trained)
    assert trained.mr < untrained.mr


@pytest.mark.parametrize("name", sorted(WORKER_TYPES))
def test_train_scores_equal_separate_own_loss_and_candidate_scores(name):
    """A student's step shares one lookup between its own loss and the KD scores: same values, same gradients."""
    kb = load_kb(UMLS)
    cls = WORKER_TYPES.get(name)
    train = torch.from_numpy(kb.train)
    generator = torch.Generator().manual_seed(1)
    batch = train[torch.randint(len(train), (16,), generator=generator)]
    queries = {
        QueryKind.TAIL: batch[:, [0, 1]],
        QueryKind.HEAD: batch[:, [1, 2]],
        QueryKind.RELATION: batch[:, [0, 2]],
    }
    requests = [
        (kind, query, torch.randint(len(kb.relations if kind == QueryKind.RELATION else kb.entities), (16, 5), generator=generator))
        for kind, query in queries.items()
    ]
    weights = [torch.rand(16, 5, generator=generator) for _ in requests]

    def run(shared: bool):
        torch.manual_seed(2)
        worker = cls(kb, cls.validate_settings({"dim": 16}))  # a perfect square, as Kronecker types need
        torch.manual_seed(3)  # the own loss samples its negatives
        if shared:
            own, scores = worker.train_scores(batch, requests)
        else:
            own, scores = worker.train_loss(batch), [worker.score_candidates(*request) for request in requests]
        (own + sum((w * s).sum() for w, s in zip(weights, scores))).backward()
        return [own, *scores, *(p.grad for p in worker.modules().parameters())]

    for expected, got in zip(run(False), run(True), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)

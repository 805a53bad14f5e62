"""Training sanity: TransE on the packaged UMLS KB learns far beyond an untrained model."""

from __future__ import annotations

from pathlib import Path

import torch

from kdmkb.kb_worker.data import load_kb
from kdmkb.kb_worker.ranking import KnownAnswers, evaluate_ranking
from kdmkb.kb_worker.worker_types import WORKER_TYPES

UMLS = Path(__file__).parents[2] / "services" / "datasets" / "umls"


def test_transe_learns_umls(one_thread):
    kb = load_kb(UMLS)
    cls = WORKER_TYPES.get("transe")
    settings = cls.validate_settings({"dim": 50, "learning_rate": 5e-3, "batch_size": 128, "threads": 1})
    worker = cls(kb, settings)
    known = KnownAnswers(kb.known_triples(), len(kb.entities), len(kb.relations))
    untrained = evaluate_ranking(worker.score, kb.test, known)

    optimizer = torch.optim.Adam(worker.modules().parameters(), lr=settings.learning_rate)
    train = torch.from_numpy(kb.train)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = train[torch.randint(len(train), (settings.batch_size,), generator=generator)]
        optimizer.zero_grad()
        loss = worker.train_loss(batch)
        loss.backward()
        optimizer.step()

    trained = evaluate_ranking(worker.score, kb.test, known)
    assert trained.num_queries == 2 * len(kb.test)
    assert trained.mrr > 0.3, (untrained, trained)
    assert trained.mrr > 5 * untrained.mrr, (untrained, trained)
    assert trained.mr < untrained.mr

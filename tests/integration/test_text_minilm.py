"""``lmke`` with the real packaged encoder (all-MiniLM-L6-v2, offline) on a tiny KB of real-looking texts: a few dozen CPU steps rank better than chance.

No Ray: the worker type alone, as a worker process would drive it (train mode to learn, eval mode to rank).
"""

from __future__ import annotations

import numpy as np
import torch

from kdmkb.kb_worker.data import EntityTexts, KnowledgeBase, RelationTexts, Vocabulary
from kdmkb.kb_worker.ranking import KnownAnswers, evaluate_ranking
from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind

# (country, its description, capital, the capital's description, continent)
COUNTRIES = [
    ("France", "a country in western Europe", "Paris", "the capital and largest city of France, on the Seine", "Europe"),
    ("Germany", "a federal republic in central Europe", "Berlin", "the capital and largest city of Germany", "Europe"),
    ("Italy", "a country on a long peninsula in southern Europe", "Rome", "the capital city of Italy, once the centre of the Roman Empire", "Europe"),
    ("Spain", "a country on the Iberian peninsula", "Madrid", "the capital and largest city of Spain", "Europe"),
    ("Japan", "an island country in East Asia", "Tokyo", "the capital of Japan, on the island of Honshu", "Asia"),
    ("India", "the most populous country in South Asia", "New Delhi", "the capital of India, part of Delhi", "Asia"),
    ("Egypt", "a country in north Africa, along the Nile", "Cairo", "the capital of Egypt, on the Nile", "Africa"),
    ("Kenya", "a country in East Africa on the Indian Ocean", "Nairobi", "the capital and largest city of Kenya", "Africa"),
]
CONTINENTS = {"Europe": "a continent in the northern hemisphere", "Asia": "the largest continent", "Africa": "a continent south of Europe"}
RELATIONS = ("has capital", "capital of", "located in")


def capitals_kb() -> KnowledgeBase:
    """19 entities, 32 train triples: a country has its capital, the capital is capital of it, both lie in a continent."""
    texts = {country: about for country, about, *_ in COUNTRIES} | {city: about for _, _, city, about, _ in COUNTRIES} | CONTINENTS
    names = list(texts)
    index = {name: i for i, name in enumerate(names)}
    train = []
    for country, _, city, _, continent in COUNTRIES:
        train += [(index[country], 0, index[city]), (index[city], 1, index[country]), (index[country], 2, index[continent]), (index[city], 2, index[continent])]
    none = np.zeros((0, 3), dtype=np.int64)
    return KnowledgeBase(
        Vocabulary.of(name.lower().replace(" ", "_") for name in names),
        Vocabulary.of(name.replace(" ", "_") for name in RELATIONS),
        np.asarray(train, dtype=np.int64),
        none,
        none,
        entity_text=EntityTexts(tuple(names), tuple(texts[name] for name in names), np.ones(len(names), dtype=bool)),
        relation_text=RelationTexts(RELATIONS, np.ones(len(RELATIONS), dtype=bool)),
    )


def test_lmke_with_minilm_ranks_its_triples_better_than_chance_after_a_few_dozen_steps():
    kb = capitals_kb()
    cls = WORKER_TYPES.get("lmke")
    torch.manual_seed(0)
    settings = cls.validate_settings({"max_length": 32, "device": "cpu", "batch_size": 8, "learning_rate": 1e-3, "encoder_learning_rate": 5e-5})
    worker = cls(kb, settings)  # encoder "": the packaged MiniLM
    assert worker.model.query_encoder.config.hidden_size == 384 and worker.model.query_encoder.config.num_hidden_layers == 6
    known = KnownAnswers(kb.train, len(kb.entities), len(kb.relations))
    generator = torch.Generator().manual_seed(0)

    def guess(kind, queries):
        return torch.rand(queries.shape[0], len(kb.entities), generator=generator)

    chance = evaluate_ranking(guess, kb.train, known).mrr
    optimizer = worker.optimizer()
    triples = torch.from_numpy(kb.train)
    for _ in range(40):
        loss = worker.train_loss(triples[torch.randperm(len(triples), generator=generator)[: settings.batch_size]])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        worker.updates += 1
    worker.modules().eval()
    result = evaluate_ranking(worker.score, kb.train, known, batch_size=64)
    assert result.mrr > 2 * chance, (result.mrr, chance)
    top = worker.top_candidates(QueryKind.TAIL, triples[:, :2], torch.arange(len(kb.entities)), 3)
    assert top.shape == (len(triples), 3)

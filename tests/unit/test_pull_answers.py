"""A teacher answering a student's pull: each distinct query is searched and scored once, and its labels stand wherever it was asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdmkb.kb_worker import exchange
from kdmkb.kb_worker.worker import AlignmentView, KBWorker
from kdmkb.services.tsv import write_rows

E, R, BATCH, STEPS = 40, 3, 32, 6  # 6 batches of 32 over 90 train triples: every query is asked in several steps


@pytest.fixture
def kb_folder(tmp_path):
    rng = np.random.default_rng(0)
    triples = sorted({(f"e{h}", f"r{r}", f"e{t}") for h, r, t in zip(rng.integers(0, E, 200), rng.integers(0, R, 200), rng.integers(0, E, 200))})[:110]
    write_rows(tmp_path / "train.tsv", triples[:90])
    write_rows(tmp_path / "valid.tsv", triples[90:100])
    write_rows(tmp_path / "test.tsv", triples[100:])
    write_rows(tmp_path / "entities.tsv", [(f"e{i}",) for i in range(E)])
    write_rows(tmp_path / "relations.tsv", [(f"r{i}",) for i in range(R)])
    return tmp_path


def _workers(folder) -> tuple[KBWorker, KBWorker]:
    ids = {f"e{i}": i for i in range(E)}, {f"r{i}": i for i in range(R)}
    shared = (list(range(E)), list(range(R)))
    pair = []
    for name, peer in (("student", "teacher"), ("teacher", "student")):
        worker = KBWorker(name, folder, "transe", {"dim": 8, "batch_size": BATCH})
        worker.configure("job", 0, {"top_k": 3, "relation_weight": 0.5}, AlignmentView(*ids, peers={peer: shared}))
        pair.append(worker)
    return pair[0], pair[1]


@pytest.mark.parametrize("rule", ["top-k", "all"])
def test_each_distinct_query_is_searched_and_scored_once_and_labelled_alike_in_every_step(kb_folder, rule):
    student, teacher = _workers(kb_folder)
    _, payload = student.ask(0, STEPS, "teacher", rule)
    asked = exchange.decode_queries(payload)
    model = teacher.model
    searched, scored = [], []
    top_candidates, score_sliced = model.top_candidates, model.score_sliced
    model.top_candidates = lambda kind, queries, *rest: searched.append((kind, queries.shape[0])) or top_candidates(kind, queries, *rest)
    model.score_sliced = lambda kind, queries, *rest: scored.append((kind, queries.shape[0])) or score_sliced(kind, queries, *rest)
    _, messages = teacher.answer(payload)
    labels = [block for message in messages for block in exchange.decode(message).blocks]

    distinct = {kind: {tuple(q) for b in asked.blocks if b.kind == kind for q in b.queries.tolist()} for kind in {b.kind for b in asked.blocks}}
    asked_rows = sum(len(b.queries) for b in asked.blocks)
    assert asked_rows > sum(map(len, distinct.values()))  # the round repeats queries: what this test is about
    assert sorted(scored) == sorted((kind, len(queries)) for kind, queries in distinct.items())
    assert sorted(searched) == ([] if rule == "all" else sorted((kind, len(distinct[kind])) for kind in distinct if kind != exchange.QueryKind.RELATION))

    # every asked query is answered, in its step, in the order asked
    by_step = {(b.kind, b.step): b for b in labels}
    assert sorted(by_step) == sorted((b.kind, b.step) for b in asked.blocks)
    for block in asked.blocks:
        assert np.array_equal(by_step[block.kind, block.step].queries, block.queries)
    # a query asked in several steps gets the same candidates and scores in each, and they are the model's scores
    seen = {}
    for block in labels:
        candidates = np.broadcast_to(block.candidates, (len(block.queries), block.candidates.shape[-1]))
        for query, row, scores in zip(block.queries.tolist(), candidates, block.scores):
            key = (block.kind, tuple(query))
            if key in seen:
                assert np.array_equal(seen[key][0], row) and np.array_equal(seen[key][1], scores)
            seen[key] = (row, scores)
            expected = score_sliced(block.kind, torch.tensor([query]), torch.tensor(row.tolist())[None]) * model.logit_scale
            assert np.allclose(scores, expected.numpy()[0], atol=1e-5)

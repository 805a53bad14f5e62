"""A long ranking says how far it is; cut short, it goes on where it stopped, and only for the weights and settings that began it."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from kdmkb.kb_worker import checkpoints
from kdmkb.kb_worker.ranking import KnownAnswers, PartialRanking, evaluate_ranking
from kdmkb.kb_worker.worker import KBWorker
from kdmkb.kb_worker.worker_types.base import QueryKind, Ranking
from kdmkb.services.datasets import dataset_dir

NUM_ENTITIES, NUM_RELATIONS = 25, 3


class Interrupted(Exception):
    pass


def counting(score, fail_after: int | None = None):
    """``score`` that counts its calls and, with ``fail_after``, raises on the call after that many."""
    calls = []

    def wrapped(*args, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise Interrupted
        calls.append(args[1].shape[0])
        return score(*args, **kwargs)

    return wrapped, calls


@pytest.mark.parametrize("rerank_k", [0, 5])
def test_a_ranking_resumed_from_its_last_batch_equals_an_uninterrupted_one(rerank_k):
    rng = np.random.default_rng(0)
    triples = np.stack([rng.integers(0, NUM_ENTITIES, 40), rng.integers(0, NUM_RELATIONS, 40), rng.integers(0, NUM_ENTITIES, 40)], axis=1)
    known = KnownAnswers(triples, NUM_ENTITIES, NUM_RELATIONS)
    tails = torch.from_numpy(rng.normal(size=(NUM_ENTITIES, NUM_RELATIONS, NUM_ENTITIES)).astype(np.float32))
    heads = torch.from_numpy(rng.normal(size=(NUM_RELATIONS, NUM_ENTITIES, NUM_ENTITIES)).astype(np.float32))

    def table(kind, queries):
        return (tails if kind == QueryKind.TAIL else heads)[queries[:, 0], queries[:, 1]]

    def score(kind, queries, candidates=None):
        scores = table(kind, queries)
        return scores if candidates is None else scores.gather(1, candidates)

    ranking = Ranking(lambda kind, queries: -table(kind, queries), "reversed", rerank_k) if rerank_k else Ranking()
    whole = evaluate_ranking(score, triples, known, batch_size=6, ranking=ranking, degrees=np.arange(NUM_ENTITIES))

    saved: list[PartialRanking] = []
    cut, _ = counting(score, fail_after=2 * 3)  # 3 batches of a tail and a head query each, then the interruption
    with pytest.raises(Interrupted):
        evaluate_ranking(cut, triples, known, batch_size=6, ranking=ranking, on_batch=lambda part: saved.append(copy.deepcopy(part)))
    assert [part.batches for part in saved] == [1, 2, 3]

    rest, calls = counting(score)
    progress = []
    resumed = evaluate_ranking(rest, triples, known, batch_size=6, ranking=ranking, degrees=np.arange(NUM_ENTITIES), done=saved[-1], progress=progress.append)
    assert len(calls) == 2 * (7 - 3)  # 40 triples in 7 batches of 6: only the 4 left are scored
    assert progress[0] == 18 and sum(progress) == 40
    expected = whole.as_dict() | {"seconds": None}
    assert resumed.as_dict() | {"seconds": None} == expected
    assert (resumed.retriever_recall is not None) == bool(rerank_k)


SETTINGS = {"dim": 8, "batch_size": 64, "eval_batch_size": 40}


@pytest.fixture
def worker():
    worker = KBWorker("nations", dataset_dir("nations"), "transe", SETTINGS)
    worker.configure("job", 3)
    worker.train(0, 5)
    worker.ranking_save_seconds = 0.0  # every batch
    return worker


def score_calls(worker: KBWorker, monkeypatch, fail_after: int | None = None) -> list:
    wrapped, calls = counting(type(worker.model).score.__get__(worker.model), fail_after)  # the type's own, not an earlier wrapper
    monkeypatch.setattr(worker.model, "score", wrapped)
    return calls


def test_a_worker_takes_up_its_interrupted_ranking_and_removes_it_when_done(worker, tmp_path, monkeypatch):
    batches = -(-len(worker.kb.split("test")) // SETTINGS["eval_batch_size"])
    assert batches >= 3
    expected = worker.evaluate("test", by_degree=True)

    score_calls(worker, monkeypatch, fail_after=2 * 2)
    with pytest.raises(Interrupted):
        worker.evaluate("test", by_degree=True, directory=tmp_path)
    assert checkpoints.ranking_path(tmp_path, "test").is_file()

    calls = score_calls(worker, monkeypatch)
    result = worker.evaluate("test", by_degree=True, directory=tmp_path)
    assert len(calls) == 2 * (batches - 2)
    assert result | {"seconds": None} == expected | {"seconds": None}
    assert not checkpoints.ranking_path(tmp_path, "test").exists()


def test_progress_of_other_weights_or_damaged_is_not_taken_up(worker, tmp_path, monkeypatch, caplog):
    batches = -(-len(worker.kb.split("test")) // SETTINGS["eval_batch_size"])
    score_calls(worker, monkeypatch, fail_after=2)
    with pytest.raises(Interrupted):
        worker.evaluate("test", directory=tmp_path)
    saved = checkpoints.ranking_path(tmp_path, "test").read_bytes()

    calls = score_calls(worker, monkeypatch)
    worker.train(1, 1)  # other weights: the saved ranks are not theirs
    expected = worker.evaluate("test")
    calls.clear()
    with caplog.at_level(logging.WARNING):
        assert worker.evaluate("test", directory=tmp_path) | {"seconds": None} == expected | {"seconds": None}
    assert len(calls) == 2 * batches and "of other weights or settings" in caplog.text

    caplog.clear()
    checkpoints.ranking_path(tmp_path, "test").write_bytes(saved[: len(saved) // 2])
    calls.clear()
    with caplog.at_level(logging.WARNING):
        assert worker.evaluate("test", directory=tmp_path) | {"seconds": None} == expected | {"seconds": None}
    assert len(calls) == 2 * batches and "ranking from the first query" in caplog.text
    assert not checkpoints.ranking_path(tmp_path, "test").exists()


def test_the_weights_digest_is_taken_only_for_a_saved_ranking_or_a_save_that_is_due(worker, tmp_path, monkeypatch):
    digests = []
    fingerprint = checkpoints.weights_fingerprint
    monkeypatch.setattr(checkpoints, "weights_fingerprint", lambda module: digests.append(1) or fingerprint(module))
    worker.ranking_save_seconds = 3600.0  # a ranking far shorter than its first save: a job's valid ranking
    worker.evaluate("test", directory=tmp_path)
    assert digests == [] and not checkpoints.ranking_path(tmp_path, "test").exists()

    worker.ranking_save_seconds = 0.0
    score_calls(worker, monkeypatch, fail_after=2 * 2)
    with pytest.raises(Interrupted):
        worker.evaluate("test", directory=tmp_path)
    assert len(digests) == 1  # once, at the first save; the next saves reuse it
    score_calls(worker, monkeypatch)
    worker.evaluate("test", directory=tmp_path)
    assert len(digests) == 2  # the saved file is checked against these weights


def test_a_partial_ranking_counts_the_triples_it_ranked_a_short_last_batch_too():
    part = PartialRanking(2, 0.0, [torch.zeros(4), torch.zeros(4), torch.zeros(3), torch.zeros(3)], [torch.zeros(4)] * 2 + [torch.zeros(3)] * 2, [])
    assert part.triples == 7 and PartialRanking().triples == 0


def test_a_worker_says_how_far_its_ranking_is_while_it_runs(worker, tmp_path, monkeypatch):
    total, size = len(worker.kb.split("test")), SETTINGS["eval_batch_size"]
    seen = []
    score = type(worker.model).score.__get__(worker.model)

    def watched(*args, **kwargs):
        seen.append(worker.work_progress())
        return score(*args, **kwargs)

    monkeypatch.setattr(worker.model, "score", watched)
    worker.evaluate("test")
    assert [status["done"] for status in seen[::2]] == list(range(0, total, size))  # each batch's tail query sees the batches before it
    assert {(status["work"], status["total"], status["unit"], status["taken_up"]) for status in seen} == {("ranking test", total, "triples", 0)}
    assert worker.work_progress() is None

    seen.clear()
    score_calls(worker, monkeypatch, fail_after=2 * 2)
    with pytest.raises(Interrupted):
        worker.evaluate("test", directory=tmp_path)
    assert worker.work_progress() is None
    monkeypatch.setattr(worker.model, "score", watched)
    worker.evaluate("test", directory=tmp_path)
    assert seen[0]["done"] == seen[0]["taken_up"] == 2 * size  # taken up: the pace of this sitting starts here

"""``feature-complex``: scores against complex arithmetic by hand, the 1vsAll loss with reciprocals, N3, missing feature rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdmkb.kb_worker.data import Features
from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind
from kdmkb.kb_worker.worker_types.feature_complex import n3_penalty
from kdmkb.services.errors import ConfigError

COVERED_WORKER_TYPES = ("feature-complex",)
E, R, RANK = 5, 2, 3


def _kb(make_kb, present=(True, True, False, True, True)):
    kb = make_kb(E, R, train=[[0, 0, 1], [1, 1, 2], [2, 0, 3], [3, 1, 4]])
    values = np.random.default_rng(0).standard_normal((E, 4)).astype(np.float32)
    present = np.asarray(present)
    values[~present] = 0.0
    return dataclasses.replace(kb, features={"text": Features(values, present)})


def _worker(make_kb, **settings):
    cls = WORKER_TYPES.get("feature-complex")
    torch.manual_seed(0)
    return cls(_kb(make_kb), cls.validate_settings({"features": "text", "rank": RANK, "init_scale": 0.5, **settings}))


def _complex(vectors: torch.Tensor) -> np.ndarray:
    """``[real | imaginary]`` rows as complex numbers."""
    real, imaginary = np.split(vectors.detach().numpy(), 2, axis=-1)
    return real + 1j * imaginary


def test_scores_are_re_h_r_conj_t_with_reciprocal_head_queries(make_kb):
    worker = _worker(make_kb)
    entities = _complex(worker.model.entities())
    relations = _complex(worker.model.relation.weight)
    with torch.no_grad():
        tails = worker.score(QueryKind.TAIL, torch.tensor([[0, 1], [4, 0]]))
        heads = worker.score(QueryKind.HEAD, torch.tensor([[1, 3]]))
        by_relation = worker.score(QueryKind.RELATION, torch.tensor([[2, 3]]))
    for row, (h, r) in enumerate([(0, 1), (4, 0)]):
        expected = [np.real(np.sum(entities[h] * relations[r] * np.conj(entities[t]))) for t in range(E)]
        np.testing.assert_allclose(tails[row].numpy(), expected, rtol=1e-5, atol=1e-6)
    # (?, r, t) is answered as (t, r^-1, ?): relation r + |R| is the inverse vector
    expected = [np.real(np.sum(entities[3] * relations[1 + R] * np.conj(entities[h]))) for h in range(E)]
    np.testing.assert_allclose(heads[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    expected = [np.real(np.sum(entities[2] * relations[r] * np.conj(entities[3]))) for r in range(R)]
    np.testing.assert_allclose(by_relation[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_entities_are_a_projection_of_the_features_and_missing_rows_follow_the_setting(make_kb):
    learned = _worker(make_kb)
    model = learned.model
    expected = model.projection(torch.from_numpy(learned.kb.features["text"].values))
    torch.testing.assert_close(model.entities()[[0, 1, 3, 4]], expected[[0, 1, 3, 4]])
    torch.testing.assert_close(model.entities()[2], model.missing.weight[0])  # entity 2 has no feature row
    zeros = _worker(make_kb, missing="zeros")
    assert zeros.model.missing is None and torch.count_nonzero(zeros.model.entities()[2]) == 0
    plain = WORKER_TYPES.get("feature-complex")(learned.kb, WORKER_TYPES.get("feature-complex").validate_settings({"rank": RANK}))
    assert not hasattr(plain.model, "projection") and plain.model.entities().shape == (E, 2 * RANK)


def test_loss_is_1vsall_cross_entropy_over_both_directions_plus_n3(make_kb):
    worker = _worker(make_kb, n3=0.3)
    batch = torch.from_numpy(worker.kb.train[:2])
    torch.manual_seed(1)
    got = worker.train_loss(batch)
    entities, relations = worker.model.entities(), worker.model.relation.weight
    e, rel = _complex(entities), _complex(relations)
    logits, targets, cubes = [], [], 0.0
    for h, r, t in batch.tolist():
        for given, relation, target in ((h, r, t), (t, r + R, h)):
            logits.append([np.real(np.sum(e[given] * rel[relation] * np.conj(e[x]))) for x in range(E)])
            targets.append(target)
            cubes += sum(np.sum(np.abs(v) ** 3) for v in (e[given], rel[relation], e[target]))
    cross_entropy = F.cross_entropy(torch.tensor(logits), torch.tensor(targets)).item()
    assert got.item() == pytest.approx(cross_entropy + 0.3 * cubes / 4, rel=1e-4)
    factors = (entities[:2], relations[:2])
    assert n3_penalty(factors).item() == pytest.approx(sum(np.sum(np.abs(_complex(f)) ** 3) for f in factors), rel=1e-5)


def test_it_learns_its_training_triples_with_adagrad(make_kb):
    worker = _worker(make_kb, learning_rate=0.5)
    batch = torch.from_numpy(worker.kb.train)
    optimizer = worker.optimizer()
    assert isinstance(optimizer, torch.optim.Adagrad)
    for _ in range(200):
        optimizer.zero_grad()
        worker.train_loss(batch).backward()
        optimizer.step()
    with torch.no_grad():
        assert torch.equal(worker.score(QueryKind.TAIL, batch[:, :2]).argmax(dim=1), batch[:, 2])
        assert torch.equal(worker.score(QueryKind.HEAD, batch[:, 1:]).argmax(dim=1), batch[:, 0])


def test_a_kb_without_the_modality_is_refused_naming_the_setting(make_kb):
    cls = WORKER_TYPES.get("feature-complex")
    with pytest.raises(ConfigError, match=r"settings.features: the KB has no features/image.npy \(its modalities: none\)"):
        cls.check_kb(make_kb(3, 1), cls.validate_settings({"features": "image"}))


def test_train_scores_reuse_the_1vsall_logits_for_the_batchs_own_queries(make_kb, monkeypatch):
    worker = _worker(make_kb)
    scored = []
    score = worker.score
    monkeypatch.setattr(worker, "score", lambda *request: scored.append(request) or score(*request))
    batch = torch.from_numpy(worker.kb.train[:3])
    requests = [
        (QueryKind.TAIL, batch[[2, 0], :2], None),  # the batch's own queries, in another order: from the loss's logits
        (QueryKind.HEAD, batch[:, 1:], None),  # answered by the reciprocal half
        (QueryKind.TAIL, torch.tensor([[4, 1]]), None),  # not a query of the batch: scored on its own
        (QueryKind.TAIL, batch[:1, :2], torch.tensor([[1, 2]])),
    ]
    loss, scores = worker.train_scores(batch, requests)
    assert len(scored) == 2  # only the last two requests needed scoring of their own
    assert loss.item() == pytest.approx(worker.train_loss(batch).item())
    for (kind, queries, candidates), got in zip(requests, scores):
        torch.testing.assert_close(got, worker.score(kind, queries, candidates))


def test_slices_of_a_shared_list_project_the_features_once_and_score_as_one_product(make_kb, monkeypatch):
    """A teacher's full answer (one candidate list for every query) costs one projection and one product per slice, not a gather per query."""
    worker = _worker(make_kb)
    projections = []
    entities = worker.model.entities
    monkeypatch.setattr(worker.model, "entities", lambda: projections.append(1) or entities())
    gathers = []
    einsum = torch.einsum
    monkeypatch.setattr(torch, "einsum", lambda *args: gathers.append(args[0]) or einsum(*args))
    monkeypatch.setattr(type(worker), "shared_slice_pairs", 2 * E)  # 2 queries a slice: 3 slices
    queries = torch.tensor([[0, 1], [4, 0], [2, 1], [3, 0], [1, 1]])
    pool = torch.tensor([4, 0, 2])
    with torch.no_grad():
        expected = torch.stack([worker.score(QueryKind.TAIL, queries[i : i + 1], pool[None])[0] for i in range(len(queries))])
        copied = worker.score(QueryKind.TAIL, queries, pool.repeat(len(queries), 1))  # a list per query: the gathered scores
    projections.clear(), gathers.clear()
    got = worker.score_sliced(QueryKind.TAIL, queries, pool.expand(len(queries), -1))
    assert len(projections) == 1 and not gathers
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(copied, expected)
    assert worker._frozen_entities is None  # training after it sees the live weights

"""``feature-mlp``: its score against a hand-built MLP pass, missing feature rows, and a KB without the features."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kdmkb.kb_worker.data import Features
from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind
from kdmkb.services.errors import ConfigError, PreconditionError

COVERED_WORKER_TYPES = ("feature-mlp",)


def _worker(make_kb, present=(True, True, True, False)):
    kb = make_kb(4, 2, train=[[0, 0, 1], [1, 1, 2], [2, 0, 3]])
    values = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    present = np.asarray(present)
    values[~present] = 0.0
    kb = dataclasses.replace(kb, features={"num": Features(values, present)})
    cls = WORKER_TYPES.get("feature-mlp")
    torch.manual_seed(0)
    return cls(kb, cls.validate_settings({"features": "num", "hidden": 5, "dim": 2})), values, present


def _reference(worker, values, present, h, r, t):
    """The MLP by hand: ReLU(W1 [f_h; p_h; r; f_t; p_t] + b1) . w2 + b2."""
    first, second = worker.model.mlp[0], worker.model.mlp[2]
    x = np.concatenate([values[h], [float(present[h])], worker.model.relation.weight[r].detach().numpy(), values[t], [float(present[t])]])
    hidden = np.maximum(first.weight.detach().numpy() @ x + first.bias.detach().numpy(), 0.0)
    return float(second.weight.detach().numpy()[0] @ hidden + second.bias.item())


def test_scores_are_the_mlp_of_both_entities_features_and_the_relation(make_kb):
    worker, values, present = _worker(make_kb)
    with torch.no_grad():
        tails = worker.score(QueryKind.TAIL, torch.tensor([[0, 1], [3, 0]]))
        heads = worker.score(QueryKind.HEAD, torch.tensor([[1, 2]]), torch.tensor([[3, 0]]))
        relations = worker.score(QueryKind.RELATION, torch.tensor([[2, 3]]))
    for row, (h, r) in enumerate([(0, 1), (3, 0)]):
        for t in range(4):
            assert tails[row, t].item() == pytest.approx(_reference(worker, values, present, h, r, t), abs=1e-5)
    assert heads[0].tolist() == pytest.approx([_reference(worker, values, present, h, 1, 2) for h in (3, 0)], abs=1e-5)
    assert relations[0].tolist() == pytest.approx([_reference(worker, values, present, 2, r, 3) for r in range(2)], abs=1e-5)


def test_a_missing_feature_row_enters_as_zeros_with_its_flag_off(make_kb):
    worker, _, _ = _worker(make_kb)
    inputs = worker.model.features
    assert inputs[3].tolist() == [0.0, 0.0, 0.0, 0.0] and inputs[0, -1].item() == 1.0


def test_a_kb_without_the_modality_is_refused_naming_the_setting(make_kb):
    cls = WORKER_TYPES.get("feature-mlp")
    with pytest.raises(ConfigError, match=r"settings.features.*features/text.npy.*none"):
        cls(make_kb(3, 1), cls.validate_settings({"features": "text"}))


def test_it_learns_to_rank_its_training_triples_and_has_no_embeddings(make_kb):
    worker, _, _ = _worker(make_kb)
    batch = torch.from_numpy(worker.kb.train)
    optimizer = worker.optimizer()
    with torch.no_grad():
        before = worker.score(QueryKind.TAIL, batch[:, :2]).argmax(dim=1)
    for _ in range(300):
        optimizer.zero_grad()
        worker.train_loss(batch).backward()
        optimizer.step()
    with torch.no_grad():
        after = worker.score(QueryKind.TAIL, batch[:, :2]).argmax(dim=1)
    assert torch.equal(after, batch[:, 2]), (before, after)
    with pytest.raises(PreconditionError):
        worker.embeddings()

"""Teacher combinations: ``mean-kl`` (KD-MKB eq. 5) against hand-computed values; the registry."""

from __future__ import annotations

import math

import pytest
import torch

from kdmkb.kb_worker.combining import COMBINATIONS, LabelledRows, StepLessons, make_combination
from kdmkb.kb_worker.worker_types import QueryKind
from kdmkb.services.config import DistillSettings
from kdmkb.services.errors import ConfigError


def kl(p_logits: list[float], q_logits: list[float], temperature: float = 1.0) -> float:
    """KL(softmax(p/T) || softmax(q/T)) * T^2, by hand."""
    p = [math.exp(x / temperature) for x in p_logits]
    q = [math.exp(x / temperature) for x in q_logits]
    p = [x / sum(p) for x in p]
    q = [x / sum(q) for x in q]
    return sum(a * math.log(a / b) for a, b in zip(p, q)) * temperature**2


# Teacher "a": two entity rows and one relation row; teacher "b": one entity row.
TEACHER = {"a0": [1.0, 0.0, -1.0], "a1": [0.5, 0.5, 2.0], "b0": [3.0, 0.0, 0.0], "ar": [0.0, 1.0]}
STUDENT = {"a0": [0.0, 0.0, 0.0], "a1": [1.0, -1.0, 0.0], "b0": [0.2, 0.1, 0.3], "ar": [2.0, 0.0]}


def lessons(weights=(1.0, 1.0)) -> tuple[StepLessons, list[torch.Tensor]]:
    entity = LabelledRows(
        QueryKind.TAIL,
        torch.zeros(3, 2, dtype=torch.long),
        torch.zeros(3, 3, dtype=torch.long),
        torch.tensor([TEACHER["a0"], TEACHER["b0"], TEACHER["a1"]]),
        torch.tensor([0, 1, 0]),
    )
    relation = LabelledRows(QueryKind.RELATION, torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long), torch.tensor([TEACHER["ar"]]), torch.tensor([0]))
    student = [torch.tensor([STUDENT["a0"], STUDENT["b0"], STUDENT["a1"]]), torch.tensor([STUDENT["ar"]])]
    return StepLessons(("a", "b"), torch.tensor(weights), (entity, relation)), student


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_mean_kl_is_eq_5_by_hand(temperature):
    """(1/|T|) sum over teachers of (mean entity KL + relation_weight x mean relation KL)."""
    relation_weight = 0.25
    combination = make_combination("mean-kl", {}, temperature=temperature, relation_weight=relation_weight)
    step, student = lessons()
    got = combination.loss(step, student).item()
    a = (kl(TEACHER["a0"], STUDENT["a0"], temperature) + kl(TEACHER["a1"], STUDENT["a1"], temperature)) / 2
    a += relation_weight * kl(TEACHER["ar"], STUDENT["ar"], temperature)
    b = kl(TEACHER["b0"], STUDENT["b0"], temperature)
    assert got == pytest.approx((a + b) / 2, rel=1e-5)


def test_plan_weights_scale_each_teachers_term():
    combination = make_combination("mean-kl", {}, temperature=1.0, relation_weight=0.25)
    step, student = lessons()
    (weighted, _), (single_a, _) = lessons((2.0, 0.5)), lessons((1.0, 0.0))
    whole = combination.loss(step, student).item()
    only_a = combination.loss(single_a, student).item()
    only_b = whole - only_a
    assert combination.loss(weighted, student).item() == pytest.approx(2.0 * only_a + 0.5 * only_b, rel=1e-5)


def test_mean_kl_gradient_reaches_the_student_only():
    combination = make_combination("mean-kl", {}, temperature=1.0, relation_weight=0.25)
    step, student = lessons()
    student = [s.clone().requires_grad_() for s in student]
    combination.loss(step, student).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert combination.modules() is None  # nothing learned: nothing for the student's optimiser


def test_unknown_combination_lists_the_known_ones():
    assert "mean-kl" in COMBINATIONS.names()
    with pytest.raises(ValueError, match="unknown teacher combination 'vote'; known: .*mean-kl"):
        DistillSettings(combination="vote")
    with pytest.raises(ConfigError, match="unknown teacher combination"):
        make_combination("vote", {}, temperature=1.0, relation_weight=1.0)
    with pytest.raises(ValueError, match="weight"):
        DistillSettings(combination_settings={"weight": 1})  # mean-kl has no settings

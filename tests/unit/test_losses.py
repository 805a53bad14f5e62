"""Losses against their formulas, written out with math.log / math.exp on plain floats."""

from __future__ import annotations

import math

import pytest
import torch

from kdmkb.kb_worker.losses import EMPTY_BUCKET, distillation_kl, logistic_loss, self_adversarial_loss, with_tail_bucket

POSITIVE = [1.0, -0.5]
NEGATIVE = [[0.2, -1.0, 0.5], [1.5, 0.0, -2.0]]


def log_sigmoid(x: float) -> float:
    return -math.log(1.0 + math.exp(-x))


def softplus(x: float) -> float:
    return math.log(1.0 + math.exp(x))


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def expected_self_adversarial(positive, negative, valid=None, temperature=1.0) -> float:
    """RotatE eq. 5 halved: mean over rows of -log s(p) - sum_i w_i log s(-n_i), w = softmax(T n) over valid."""
    total = 0.0
    for b, (p, row) in enumerate(zip(positive, negative)):
        keep = [i for i in range(len(row)) if valid is None or valid[b][i]]
        exps = {i: math.exp(temperature * row[i]) for i in keep}
        weights = {i: exps[i] / sum(exps.values()) for i in keep}
        total += -log_sigmoid(p) - sum(weights[i] * log_sigmoid(-row[i]) for i in keep)
    return total / len(positive) / 2


def expected_logistic(positive, negative, valid=None) -> float:
    total = 0.0
    for b, (p, row) in enumerate(zip(positive, negative)):
        keep = [i for i in range(len(row)) if valid is None or valid[b][i]]
        total += softplus(-p) + (sum(softplus(row[i]) for i in keep) / len(keep) if keep else 0.0)
    return total / len(positive)


def expected_kl(teacher, student, temperature=1.0) -> float:
    total = 0.0
    for t_row, s_row in zip(teacher, student):
        p = softmax([x / temperature for x in t_row])
        q = softmax([x / temperature for x in s_row])
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return total / len(teacher) * temperature**2


def tensors():
    return torch.tensor(POSITIVE, dtype=torch.float64), torch.tensor(NEGATIVE, dtype=torch.float64)


# -- self-adversarial ---------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_self_adversarial_hand_computed(temperature):
    positive, negative = tensors()
    got = self_adversarial_loss(positive, negative, temperature=temperature)
    assert got.item() == pytest.approx(expected_self_adversarial(POSITIVE, NEGATIVE, temperature=temperature), rel=1e-12)


def test_self_adversarial_literal_value():
    # one row, p = 0, negatives (0, 0): weights 1/2 each; -log s(0) = log 2 for every term
    got = self_adversarial_loss(torch.tensor([0.0]), torch.tensor([[0.0, 0.0]]))
    assert got.item() == pytest.approx((math.log(2) + math.log(2)) / 2)


def test_self_adversarial_temperature_zero_is_uniform_mean():
    positive, negative = tensors()
    got = self_adversarial_loss(positive, negative, temperature=0.0)
    uniform = sum(-log_sigmoid(p) - sum(log_sigmoid(-n) for n in row) / 3 for p, row in zip(POSITIVE, NEGATIVE)) / 2 / 2
    assert got.item() == pytest.approx(uniform, rel=1e-12)


def test_self_adversarial_masked_negative_contributes_nothing():
    positive, negative = tensors()
    valid = torch.tensor([[True, False, True], [True, True, False]])
    got = self_adversarial_loss(positive, negative, valid)
    assert got.item() == pytest.approx(expected_self_adversarial(POSITIVE, NEGATIVE, valid.tolist()), rel=1e-12)
    # the masked logits' values are irrelevant ...
    changed = negative.clone()
    changed[0, 1], changed[1, 2] = 50.0, -50.0
    assert self_adversarial_loss(positive, changed, valid).item() == pytest.approx(got.item(), rel=1e-12)
    # ... and they get no gradient
    negative.requires_grad_(True)
    self_adversarial_loss(positive, negative, valid).backward()
    assert negative.grad[0, 1] == 0 and negative.grad[1, 2] == 0
    assert (negative.grad[valid] != 0).all()


def test_self_adversarial_row_with_every_negative_masked_is_just_the_positive_term():
    positive, negative = tensors()
    valid = torch.tensor([[False, False, False], [True, True, True]])
    got = self_adversarial_loss(positive, negative, valid)
    row0 = -log_sigmoid(POSITIVE[0])
    row1 = -log_sigmoid(POSITIVE[1]) - sum(w * log_sigmoid(-n) for w, n in zip(softmax(NEGATIVE[1]), NEGATIVE[1]))
    assert torch.isfinite(got)
    assert got.item() == pytest.approx((row0 + row1) / 2 / 2, rel=1e-12)
    only = self_adversarial_loss(positive[:1], negative[:1], valid[:1])
    assert only.item() == pytest.approx(-log_sigmoid(POSITIVE[0]) / 2, rel=1e-12)


def test_self_adversarial_weights_are_detached():
    """d loss / d n_i = w_i * s(n_i) / (2 b): the softmax weights themselves carry no gradient."""
    positive, negative = tensors()
    negative.requires_grad_(True)
    self_adversarial_loss(positive, negative).backward()
    for b, row in enumerate(NEGATIVE):
        weights = softmax(row)
        for i, n in enumerate(row):
            assert negative.grad[b, i].item() == pytest.approx(weights[i] / (1 + math.exp(-n)) / 2 / 2, rel=1e-10)


# -- logistic -----------------------------------------------------------------------------------
def test_logistic_hand_computed():
    positive, negative = tensors()
    assert logistic_loss(positive, negative).item() == pytest.approx(expected_logistic(POSITIVE, NEGATIVE), rel=1e-12)
    # literal: p = 0, negatives (0, 0): log 2 + log 2
    assert logistic_loss(torch.tensor([0.0]), torch.tensor([[0.0, 0.0]])).item() == pytest.approx(2 * math.log(2))


def test_logistic_masking():
    positive, negative = tensors()
    valid = torch.tensor([[True, False, True], [False, False, False]])
    got = logistic_loss(positive, negative, valid)
    assert got.item() == pytest.approx(expected_logistic(POSITIVE, NEGATIVE, valid.tolist()), rel=1e-12)
    changed = negative.clone()
    changed[~valid] = 100.0
    assert logistic_loss(positive, changed, valid).item() == pytest.approx(got.item(), rel=1e-12)


# -- distillation KL ----------------------------------------------------------------------------
TEACHER = [[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]
STUDENT = [[0.0, 1.0, 1.0], [2.0, -0.5, 0.5]]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_kl_hand_computed(temperature):
    got = distillation_kl(torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(STUDENT, dtype=torch.float64), temperature)
    assert got.item() == pytest.approx(expected_kl(TEACHER, STUDENT, temperature), rel=1e-10)


def test_kl_is_teacher_to_student_not_symmetric():
    teacher, student = torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(STUDENT, dtype=torch.float64)
    forward = distillation_kl(teacher, student).item()
    assert forward != pytest.approx(distillation_kl(student, teacher).item(), rel=1e-3)
    assert forward == pytest.approx(expected_kl(TEACHER, STUDENT), rel=1e-10)


def test_kl_zero_for_identical_and_positive_otherwise():
    teacher = torch.tensor(TEACHER, dtype=torch.float64)
    assert distillation_kl(teacher, teacher.clone()).item() == pytest.approx(0.0, abs=1e-12)
    for _ in range(20):
        student = torch.randn(2, 3, dtype=torch.float64)
        assert distillation_kl(teacher, student).item() > 0


def test_kl_invariant_to_a_constant_added_to_a_row():
    teacher, student = torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(STUDENT, dtype=torch.float64)
    base = distillation_kl(teacher, student).item()
    shift = torch.tensor([[7.0], [-3.0]], dtype=torch.float64)
    assert distillation_kl(teacher + shift, student).item() == pytest.approx(base, rel=1e-10)
    assert distillation_kl(teacher, student - shift).item() == pytest.approx(base, rel=1e-10)


@pytest.mark.parametrize("temperature", [2.0, 4.0, 0.5])
def test_kl_temperature_squared_scaling(temperature):
    teacher, student = torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(STUDENT, dtype=torch.float64)
    got = distillation_kl(teacher, student, temperature).item()
    unscaled = distillation_kl(teacher / temperature, student / temperature, 1.0).item()
    assert got == pytest.approx(temperature**2 * unscaled, rel=1e-10)
    # the gradient w.r.t. the student logits is T * (q - p) / rows: its size follows T, not 1/T
    student.requires_grad_(True)
    distillation_kl(teacher, student, temperature).backward()
    for b in range(2):
        p = softmax([x / temperature for x in TEACHER[b]])
        q = softmax([x / temperature for x in STUDENT[b]])
        for i in range(3):
            assert student.grad[b, i].item() == pytest.approx(temperature * (q[i] - p[i]) / 2, rel=1e-8, abs=1e-12)


def test_kl_weighted_sum_of_rows():
    teacher, student = torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(STUDENT, dtype=torch.float64)
    rows = [expected_kl([t], [s], 2.0) for t, s in zip(TEACHER, STUDENT)]  # each already times T^2
    got = distillation_kl(teacher, student, 2.0, weights=torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert got.item() == pytest.approx(0.25 * rows[0] + 0.75 * rows[1], rel=1e-10)
    uniform = distillation_kl(teacher, student, 2.0, weights=torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert uniform.item() == pytest.approx(distillation_kl(teacher, student, 2.0).item(), rel=1e-10)


def test_a_tail_bucket_holds_the_mass_of_the_unlisted_columns():
    scores = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.5, 0.0, 0.0, 0.0]], requires_grad=True)
    bucketed = with_tail_bucket(scores, torch.tensor([[1, 3], [0, 2]]))
    expected = [[2.0, -1.0, math.log(math.exp(1.0) + math.exp(0.0))], [0.5, 0.0, math.log(2.0)]]
    assert bucketed.tolist() == [pytest.approx(row, rel=1e-6) for row in expected]
    # the softmax over listed + bucket is the full softmax with the unlisted columns summed
    full = torch.softmax(scores, dim=1)
    assert torch.softmax(bucketed, dim=1)[0].tolist() == pytest.approx([full[0, 1].item(), full[0, 3].item(), (full[0, 0] + full[0, 2]).item()], rel=1e-6)
    everything = with_tail_bucket(scores, torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]))
    assert everything[:, 4].tolist() == [-1.0 - EMPTY_BUCKET, 0.0 - EMPTY_BUCKET]  # nothing unlisted: an empty bucket
    everything.sum().backward()
    assert torch.isfinite(scores.grad).all()

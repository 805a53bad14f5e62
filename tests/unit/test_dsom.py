"""DSoM's equations against hand-computed values: subsets, the combined teacher, reward, baseline, the policy gradient's sign, NDKD on 5 entities."""

from __future__ import annotations

import math

import pytest
import torch

from kdmkb.kb_worker.dsom import combined_logits, ndkd_loss, reinforce_loss, rewards, teacher_subsets


def softmax(values: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_the_actions_are_every_non_empty_subset_of_teachers():
    assert teacher_subsets(3).int().tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]]
    assert teacher_subsets(4).shape == (15, 4)


def test_the_combined_teacher_is_the_mean_of_the_chosen_teachers_logits():
    logits = torch.tensor([[[1.0, 2.0]], [[3.0, 0.0]], [[5.0, 4.0]]])  # 3 teachers, 1 query, 2 entities
    assert combined_logits(logits, torch.tensor([[True, False, True]])).tolist() == [[3.0, 3.0]]
    assert combined_logits(logits, torch.tensor([[False, True, False]])).tolist() == [[3.0, 0.0]]


def test_reward_is_plus_one_when_the_combined_teacher_beats_the_student_else_minus_ten():
    student = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    combined = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # right on query 0, wrong on query 1
    assert rewards(combined, student, torch.tensor([0, 0])).tolist() == [1.0, -10.0]


def test_reinforce_raises_the_probability_of_an_action_that_beat_the_baseline():
    policy_logits = torch.zeros(1, 3, requires_grad=True)
    log_policy = torch.log_softmax(policy_logits, dim=1)
    loss = reinforce_loss(log_policy, torch.tensor([1]), torch.tensor([1.0]), torch.tensor([-10.0]))
    # L = -(r - b) log pi(a) = -11 log(1/3)
    assert loss.item() == pytest.approx(11 * math.log(3))
    loss.backward()
    gradient = policy_logits.grad[0].tolist()
    # d/dz_j of -11 log softmax(z)_1 = -11 (1[j=1] - 1/3): descending the loss raises action 1's logit
    assert gradient == pytest.approx([11 / 3, -22 / 3, 11 / 3])
    worse = reinforce_loss(torch.log_softmax(torch.zeros(1, 3), dim=1), torch.tensor([1]), torch.tensor([-10.0]), torch.tensor([1.0]))
    assert worse.item() == pytest.approx(-11 * math.log(3))  # an action worse than the baseline is pushed down
    reward = torch.tensor([1.0], requires_grad=True)
    reinforce_loss(torch.log_softmax(torch.zeros(1, 3, requires_grad=True), dim=1), torch.tensor([0]), reward, torch.tensor([0.0])).backward()
    assert reward.grad is None  # the reward is detached


@pytest.mark.parametrize("mass", ["mean", "sum"])
def test_ndkd_on_five_entities_by_hand(mass):
    teacher = [2.0, 1.0, 0.5, -1.0, 0.0]
    student = [0.5, 1.5, -0.5, 0.0, 1.0]
    neighbours = [True, False, True, False, False]  # the target (0) and another train answer (2)
    tau, alpha, beta = 2.0, 1.0, 0.5
    p_t, p_s = softmax(teacher, tau), softmax(student, tau)
    if mass == "mean":
        m_t, m_s = (p_t[0] + p_t[2]) / 2, (p_s[0] + p_s[2]) / 2
    else:
        m_t, m_s = p_t[0] + p_t[2], p_s[0] + p_s[2]
    nekd = kl([m_t, 1 - m_t], [m_s, 1 - m_s])
    rest = [1, 3, 4]
    nnkd = kl([p_t[i] / sum(p_t[j] for j in rest) for i in rest], [p_s[i] / sum(p_s[j] for j in rest) for i in rest])
    expected = (alpha * nekd + beta * nnkd) * tau**2
    got = ndkd_loss(torch.tensor([teacher]), torch.tensor([student]), torch.tensor([neighbours]), temperature=tau, alpha=alpha, beta=beta, neighbour_mass=mass)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_ndkd_is_zero_when_student_equals_teacher_and_its_gradient_reaches_the_student_only():
    teacher = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    neighbours = torch.tensor([[True, False, False, False, True]])
    assert ndkd_loss(teacher, teacher.clone(), neighbours).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.zeros(1, 5, requires_grad=True)
    teacher_leaf = teacher.clone().requires_grad_()
    ndkd_loss(teacher_leaf.detach(), student, neighbours).backward()
    assert student.grad.abs().sum() > 0 and teacher_leaf.grad is None
    with pytest.raises(ValueError, match="neighbour_mass"):
        ndkd_loss(teacher, teacher, neighbours, neighbour_mass="max")

"""DSoM's equations against hand-computed values: subsets, the combined teacher, reward, baseline, the policy gradient's sign, NDKD on 5 entities,
the policy's two state encodings and the fixed selections of Table 2."""

from __future__ import annotations

import math

import pytest
import torch

from kdmkb.kb_worker.dsom import (
    PolicyNetwork,
    best_subset,
    combined_logits,
    compact_state,
    compact_state_width,
    confident_teacher,
    full_state,
    ndkd_loss,
    reinforce_loss,
    rewards,
    teacher_subsets,
)


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


def entropy(p: list[float]) -> float:
    return -sum(a * math.log(a) for a in p if a > 0)


TEACHERS = [[[2.0, 0.0, 1.0, -1.0]], [[0.0, 0.0, 0.0, 3.0]]]  # 2 teachers, 1 query, 4 entities


def test_full_state_concatenates_each_teachers_distribution():
    state = full_state(torch.tensor(TEACHERS))
    assert state.shape == (1, 8)
    assert state[0].tolist() == pytest.approx(softmax(TEACHERS[0][0]) + softmax(TEACHERS[1][0]), rel=1e-6)


def test_compact_state_by_hand():
    target, neighbours = torch.tensor([2]), torch.tensor([[False, True, True, False]])
    state = compact_state(torch.tensor(TEACHERS), target, neighbours, top_m=2)
    assert state.shape == (1, compact_state_width(2, 2)) == (1, 10)
    expected = []
    for (logits,) in TEACHERS:
        p = softmax(logits)
        expected += sorted(p, reverse=True)[:2] + [entropy(p) / math.log(4), p[2], p[1] + p[2]]
    assert state[0].tolist() == pytest.approx(expected, rel=1e-5)
    wide = compact_state(torch.tensor(TEACHERS), target, neighbours, top_m=6)  # more than the entities: zero-padded
    assert wide.shape == (1, 18) and wide[0, 4:6].tolist() == [0.0, 0.0]


def test_the_policy_maps_a_state_to_log_probabilities_over_the_subsets():
    policy = PolicyNetwork(state_width=10, hidden=16, actions=7)
    log_policy = policy(torch.randn(3, 10))
    assert log_policy.shape == (3, 7) and log_policy.exp().sum(dim=1).tolist() == pytest.approx([1.0] * 3)
    assert sum(p.numel() for p in policy.parameters()) == 10 * 16 + 16 + 16 * 7 + 7


def test_fixed_selections_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0]], [[0.0, 0.0, 5.0]], [[0.0, 1.0, 0.0]]])  # 3 teachers, 1 query
    assert confident_teacher(logits).tolist() == [[False, True, False]]  # max probabilities .79, .99, .58
    subsets = teacher_subsets(3)
    # target 0: teacher 0 alone has the lowest cross-entropy
    assert best_subset(logits, torch.tensor([0]), subsets[subsets.sum(dim=1) == 1]).tolist() == [[True, False, False]]
    # target 1: teacher 2 alone (logit 1 of 3) beats every mean, e.g. teachers 0 and 2 ([1, .5, 0])
    assert best_subset(logits, torch.tensor([1]), subsets).tolist() == [[False, False, True]]

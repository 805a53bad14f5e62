"""Teacher combinations: ``mean-kl`` (KD-MKB eq. 5) against hand-computed values, ``dsom`` (DSoM eq. 4-12) assembled on a 5-entity KB; the registry."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kdmkb.kb_worker.combining import COMBINATIONS, LabelledRows, StepLessons, StudentContext, make_combination
from kdmkb.kb_worker.dsom import compact_state, ndkd_loss
from kdmkb.kb_worker.losses import with_tail_bucket
from kdmkb.kb_worker.worker_types import QueryKind
from kdmkb.services.config import DistillSettings
from kdmkb.services.errors import ConfigError, DataError


def kl(p_logits: list[float], q_logits: list[float], temperature: float = 1.0) -> float:
    """KL(softmax(p/T) || softmax(q/T)) * T^2, by hand."""
    p = [math.exp(x / temperature) for x in p_logits]
    q = [math.exp(x / temperature) for x in q_logits]
    p = [x / sum(p) for x in p]
    q = [x / sum(q) for x in q]
    return sum(a * math.log(a / b) for a, b in zip(p, q)) * temperature**2


BATCH = torch.zeros(0, 3, dtype=torch.long)  # mean-kl does not read the step's own triples

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
    got = combination.loss(step, student, BATCH).item()
    a = (kl(TEACHER["a0"], STUDENT["a0"], temperature) + kl(TEACHER["a1"], STUDENT["a1"], temperature)) / 2
    a += relation_weight * kl(TEACHER["ar"], STUDENT["ar"], temperature)
    b = kl(TEACHER["b0"], STUDENT["b0"], temperature)
    assert got == pytest.approx((a + b) / 2, rel=1e-5)


def test_plan_weights_scale_each_teachers_term():
    combination = make_combination("mean-kl", {}, temperature=1.0, relation_weight=0.25)
    step, student = lessons()
    (weighted, _), (single_a, _) = lessons((2.0, 0.5)), lessons((1.0, 0.0))
    whole = combination.loss(step, student, BATCH).item()
    only_a = combination.loss(single_a, student, BATCH).item()
    only_b = whole - only_a
    assert combination.loss(weighted, student, BATCH).item() == pytest.approx(2.0 * only_a + 0.5 * only_b, rel=1e-5)


def test_mean_kl_gradient_reaches_the_student_only():
    combination = make_combination("mean-kl", {}, temperature=1.0, relation_weight=0.25)
    step, student = lessons()
    student = [s.clone().requires_grad_() for s in student]
    combination.loss(step, student, BATCH).backward()
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


# -- dsom ------------------------------------------------------------------------------------------
# A 5-entity KB whose train answers give the step's queries their neighbours: (e0, r0, ?) -> {1, 3}, (?, r0, e1) -> {0, 2}.
DSOM_TRAIN = [[0, 0, 1], [0, 0, 3], [2, 0, 1]]
DSOM_BATCH = torch.tensor([[0, 0, 1]])
NEIGHBOURS = {QueryKind.TAIL: [False, True, False, True, False], QueryKind.HEAD: [True, False, True, False, False]}
TARGET = {QueryKind.TAIL: 1, QueryKind.HEAD: 0}
DSOM_TEACHERS = {  # per teacher, its logits of the tail query and of the head query
    "a": ([0.0, 4.0, 0.0, 1.0, 0.0], [4.0, 0.0, 1.0, 0.0, 0.0]),
    "b": ([0.0, -2.0, 6.0, 0.0, 0.0], [-2.0, 0.0, 0.0, 6.0, 0.0]),
    "c": ([0.0, -2.0, 6.0, 0.0, 1.0], [-2.0, 1.0, 0.0, 6.0, 0.0]),
}
DSOM_STUDENT = ([0.5, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0, 0.0])


def dsom_combination(make_kb, relation_weight: float = 0.0, teachers=("a", "b", "c"), **settings):
    context = StudentContext(make_kb(5, 1, train=DSOM_TRAIN), teachers, torch.device("cpu"))
    return make_combination("dsom", settings, temperature=2.0, relation_weight=relation_weight, context=context)


def dsom_lessons(order=("c", "a", "b")) -> tuple[StepLessons, list[torch.Tensor]]:
    """One tail and one head group, each with a row per teacher, in the order the teachers' payloads came."""
    groups = []
    for column, (kind, query) in enumerate(((QueryKind.TAIL, [0, 0]), (QueryKind.HEAD, [0, 1]))):
        logits = torch.tensor([DSOM_TEACHERS[name][column] for name in order])
        groups.append(LabelledRows(kind, torch.tensor([query] * 3), torch.arange(5).expand(3, -1), logits, torch.arange(3)))
    student = [torch.tensor([DSOM_STUDENT[column]] * 3, requires_grad=True) for column in range(2)]
    return StepLessons(tuple(order), torch.ones(3), tuple(groups)), student


def expected_dsom(chosen: dict[QueryKind, tuple[str, ...]], distillation: str = "ndkd", gamma: float = 2.0) -> float:
    """gamma x the mean over the two queries of the distillation from the chosen teachers' mean logits, neighbours written out above."""
    total = 0.0
    for column, kind in enumerate((QueryKind.TAIL, QueryKind.HEAD)):
        teacher = torch.tensor([DSOM_TEACHERS[name][column] for name in chosen[kind]]).mean(dim=0, keepdim=True)
        student = torch.tensor([DSOM_STUDENT[column]])
        if distillation == "kd":
            total += kl(teacher[0].tolist(), student[0].tolist(), 2.0)
            continue
        neighbours = NEIGHBOURS[kind] if distillation == "ndkd" else [i == TARGET[kind] for i in range(5)]
        total += ndkd_loss(teacher, student, torch.tensor([neighbours]), temperature=2.0).item()
    return gamma * total / 2


@pytest.mark.parametrize("distillation", ["ndkd", "dkd", "kd"])
def test_dsom_teacher_average_distils_with_the_queries_train_answers_as_neighbours(make_kb, distillation):
    combination = dsom_combination(make_kb, selection="all", distillation=distillation)
    step, student = dsom_lessons()
    got = combination.loss(step, student, DSOM_BATCH)
    every = ("a", "b", "c")
    assert got.item() == pytest.approx(expected_dsom({QueryKind.TAIL: every, QueryKind.HEAD: every}, distillation), rel=1e-5)
    got.backward()
    assert all(s.grad.abs().sum() > 0 for s in student) and combination.modules() is None
    assert combination.statistics() == {"teacher_subsets": {"a+b+c": 2}}
    assert combination.statistics() == {"teacher_subsets": {}}  # counted since the last call


def test_dsom_fixed_selections_pick_per_query(make_kb):
    step, student = dsom_lessons()
    best = dsom_combination(make_kb, selection="best", gamma=1.0)
    assert best.loss(step, student, DSOM_BATCH).item() == pytest.approx(expected_dsom({QueryKind.TAIL: ("a",), QueryKind.HEAD: ("a",)}, gamma=1.0), rel=1e-5)
    confident = dsom_combination(make_kb, selection="confident")
    confident.loss(step, student, DSOM_BATCH)
    assert confident.statistics() == {"teacher_subsets": {"b": 2}}  # max probabilities: a .905, b .992, c .988 on both queries


def test_dsom_policy_learns_to_choose_the_only_subset_that_beats_the_student(make_kb):
    """Only {a} beats the student's cross-entropy (+1); every other subset, the all-teacher baseline among them, gets -10:
    L_RC pushes the policy towards {a}, and its gradient reaches the policy, never the student."""
    torch.manual_seed(0)
    combination = dsom_combination(make_kb, state="compact", hidden=16, gamma=0.0)
    policy = combination.modules()
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.05)
    step, student = dsom_lessons()

    def chance_of_a() -> float:
        state = compact_state(torch.tensor([[DSOM_TEACHERS[n][0]] for n in ("a", "b", "c")]), torch.tensor([1]), torch.tensor([NEIGHBOURS[QueryKind.TAIL]]), 8)
        return policy(state)[0, 0].exp().item()  # subset 0 is {a}

    before = chance_of_a()
    for _ in range(60):
        optimizer.zero_grad()
        combination.loss(step, student, DSOM_BATCH).backward()
        optimizer.step()
    assert before == pytest.approx(1 / 7, abs=0.05) and chance_of_a() > 0.9
    assert all(s.grad is None or s.grad.abs().sum() == 0 for s in student)  # gamma 0: L_RC alone, which the student does not see
    counts = combination.statistics()["teacher_subsets"]
    assert sum(counts.values()) == 120 and counts["a"] > 60


def test_dsom_full_state_is_teachers_times_entities_wide(make_kb):
    combination = dsom_combination(make_kb, hidden=8)
    assert combination.modules().layers[0].in_features == 3 * 5
    step, student = dsom_lessons()
    assert torch.isfinite(combination.loss(step, student, DSOM_BATCH))


def test_dsom_reads_a_tail_bucket_as_one_more_non_neighbour(make_kb):
    combination = dsom_combination(make_kb, selection="all")
    listed = torch.tensor([0, 1, 3])  # both targets listed, entities 2 and 4 only in the bucket
    groups, students, expected = [], [], 0.0
    for column, (kind, query) in enumerate(((QueryKind.TAIL, [0, 0]), (QueryKind.HEAD, [0, 1]))):
        teachers = torch.tensor([DSOM_TEACHERS[name][column] for name in ("a", "b", "c")])
        bucketed = with_tail_bucket(teachers, listed.expand(3, -1))
        groups.append(LabelledRows(kind, torch.tensor([query] * 3), listed.expand(3, -1), bucketed, torch.arange(3), tail=True))
        student = with_tail_bucket(torch.tensor([DSOM_STUDENT[column]] * 3), listed.expand(3, -1))
        students.append(student)
        neighbours = [NEIGHBOURS[kind][i] for i in listed.tolist()] + [False]
        expected += ndkd_loss(bucketed.mean(dim=0, keepdim=True), student[:1], torch.tensor([neighbours]), temperature=2.0).item()
    got = combination.loss(StepLessons(("a", "b", "c"), torch.ones(3), tuple(groups)), students, DSOM_BATCH)
    assert got.item() == pytest.approx(2.0 * expected / 2, rel=1e-5)
    groups[1] = dataclasses.replace(groups[1], candidates=listed.expand(3, -1) + 1)  # the head query's target 0 unlisted
    with pytest.raises(DataError, match="target is not among"):
        combination.loss(StepLessons(("a", "b", "c"), torch.ones(3), tuple(groups)), students, DSOM_BATCH)


def test_dsom_refuses_what_it_cannot_combine(make_kb):
    with pytest.raises(ConfigError, match="relation_weight"):
        dsom_combination(make_kb, relation_weight=0.25)
    with pytest.raises(ConfigError, match="student's KB"):
        make_combination("dsom", {}, temperature=1.0, relation_weight=0.0)
    with pytest.raises(ValueError, match="combination_settings.state"):
        DistillSettings(combination="dsom", combination_settings={"state": "tiny"})
    step, student = dsom_lessons()
    with pytest.raises(DataError, match="teacher 'd' sent no soft labels"):
        dsom_combination(make_kb, teachers=("a", "b", "c", "d")).loss(step, student, DSOM_BATCH)
    with pytest.raises(DataError, match="did not label the step's queries"):
        dsom_combination(make_kb).loss(step, student, torch.tensor([[2, 0, 1]]))

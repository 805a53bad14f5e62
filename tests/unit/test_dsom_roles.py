"""Who builds the dsom combination's policy: the student only; a KB that only teaches holds no policy parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdmkb.coordinator.strategies import make_strategy
from kdmkb.kb_worker.combining import DSoMSettings
from kdmkb.kb_worker.worker import AlignmentView, KBWorker
from kdmkb.services.config import JobSettings
from kdmkb.services.tsv import write_rows

E, R = 40, 2
KBS = ("student", "structure", "text")
DISTILL = {"combination": "dsom", "relation_weight": 0, "combination_settings": {"state": "full", "hidden": 8}}


@pytest.fixture
def kb_folder(tmp_path):
    rng = np.random.default_rng(0)
    triples = sorted({(f"e{h}", f"r{r}", f"e{t}") for h, r, t in zip(rng.integers(0, E, 120), rng.integers(0, R, 120), rng.integers(0, E, 120))})
    write_rows(tmp_path / "train.tsv", triples[:-10])
    write_rows(tmp_path / "valid.tsv", triples[-10:-5])
    write_rows(tmp_path / "test.tsv", triples[-5:])
    write_rows(tmp_path / "entities.tsv", [(f"e{i}",) for i in range(E)])
    write_rows(tmp_path / "relations.tsv", [(f"r{i}",) for i in range(R)])
    (tmp_path / "features").mkdir()
    np.save(tmp_path / "features" / "text.npy", rng.standard_normal((E, 4)).astype(np.float32))
    return tmp_path


def dsom_workers(folder) -> dict[str, KBWorker]:
    """Every KB aligned with every other (as the coordinator's views make them), configured with the teachers the dsom strategy names."""
    strategy = make_strategy("dsom", list(KBS), JobSettings.model_validate({"rounds": 2, **DISTILL}), {"student": "student"})
    ids = {f"e{i}": i for i in range(E)}, {f"r{i}": i for i in range(R)}
    everything = (list(range(E)), list(range(R)))
    workers = {}
    for name in KBS:
        worker = KBWorker(name, folder, "feature-complex", {"rank": 4, "batch_size": 16, **({"features": "text"} if name == "text" else {})})
        view = AlignmentView(*ids, peers={peer: everything for peer in KBS if peer != name})
        worker.configure("job", 0, DISTILL, view, strategy.teachers_of(name))
        workers[name] = worker
    return workers


def test_the_dsom_strategy_names_the_students_teachers_and_none_for_a_teacher():
    strategy = make_strategy("dsom", list(KBS), JobSettings.model_validate({"rounds": 2}), {"student": "text"})
    assert strategy.teachers_of("text") == ("student", "structure")
    assert strategy.teachers_of("structure") == () and strategy.teachers_of("student") == ()
    assert make_strategy("cooperative", list(KBS), JobSettings.model_validate({"rounds": 2})).teachers_of("text") is None  # every aligned KB


def test_a_teacher_of_a_dsom_job_holds_no_policy_parameters(kb_folder):
    workers = dsom_workers(kb_folder)
    for teacher in ("structure", "text"):
        worker = workers[teacher]
        assert worker.student.combination.modules() is None
        optimised = sum(p.numel() for group in worker.student.optimizer.param_groups for p in group["params"])
        assert optimised == worker.model.num_parameters()  # the model's own parameters, nothing else
    # the student's policy: the full state of its two teachers, 2 x E wide, over their 3 non-empty subsets
    policy = workers["student"].student.combination.modules()
    assert [tuple(p.shape) for p in policy.parameters()] == [(8, 2 * E), (8,), (3, 8), (3,)]
    assert workers["student"].student.combination.context.teachers == ("structure", "text")


def taught_round(workers: dict[str, KBWorker]) -> dict:
    """Round 0 of 2 steps: the student pulls both teachers' answers and trains on them."""
    student = workers["student"]
    inbound = []
    for teacher in ("structure", "text"):
        _, queries = student.ask(0, 2, teacher, "all")
        inbound.append(workers[teacher].answer(queries)[1])
    return student.train(0, 2, *inbound)


def test_a_teacher_without_a_policy_still_answers_and_the_student_learns(kb_folder, tmp_path):
    workers = dsom_workers(kb_folder)
    result = taught_round(workers)
    assert sum(result["teacher_subsets"].values()) == 2 * 2 * 16
    workers["text"].save(tmp_path / "text", 1)
    workers["text"].load(tmp_path / "text", 1)  # its checkpoint holds no policy and loads back
    assert workers["text"].student.combination.modules() is None


def test_the_policy_steps_at_its_own_rate_not_the_students(kb_folder):
    """At the student's rate (Adagrad 0.1) every policy weight moves 0.1 in the first step, which fixes it on one subset at once."""
    workers = dsom_workers(kb_folder)
    student = workers["student"]
    policy = list(student.student.combination.modules().parameters())
    before = [parameter.detach().clone() for parameter in policy]
    taught_round(workers)  # 2 steps
    moved = max(float((parameter.detach() - old).abs().max()) for parameter, old in zip(policy, before, strict=True))
    rate = DSoMSettings().policy_learning_rate
    assert rate < student.settings.learning_rate
    assert 0 < moved <= 2 * rate * (1 + 1e-6)  # an Adagrad step is at most its rate per weight


def trained_student(kb_folder, directory) -> KBWorker:
    """The student of a dsom job after one taught round, checkpointed as round 1 in ``directory``."""
    workers = dsom_workers(kb_folder)
    taught_round(workers)
    workers["student"].save(directory, 1)
    return workers["student"]


def test_a_dsom_jobs_result_predicts_with_its_student(kb_folder, tmp_path):
    """Result rebuilds the student with the policy its checkpoint holds: the strategy names its teachers (the result has no alignment views)."""
    from kdmkb.kb_worker import checkpoints
    from kdmkb.services.api import Result
    from kdmkb.services.config import job_file_from_dict

    student = trained_student(kb_folder, tmp_path / "student")
    entries = [{"name": name, "data": str(kb_folder), "worker_type": "feature-complex", "settings": {"rank": 4, "batch_size": 16, **({"features": "text"} if name == "text" else {})}} for name in KBS]
    job = job_file_from_dict({"strategy": {"name": "dsom", "student": "student"}, "job": {"rounds": 1, **DISTILL}, "kb": entries})
    result = Result(job, {"job_id": "job", "strategy": "dsom", "rounds": 1, "kbs": {}}, [], {}, {"student": checkpoints.path(tmp_path / "student", 1)})
    assert [p.entity for p in result.predict("student", "e0", "r0", k=3)] == [p["entity"] for p in student.predict("e0", "r0", k=3)]
    rebuilt = result._worker("student").student.combination.modules().state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in student.student.combination.modules().state_dict().items())


def test_a_dsom_student_restored_outside_its_job_gets_its_policy_back(kb_folder, tmp_path):
    """A worker restarted outside the job (no alignment views) restores the student's checkpoint, policy included, given the strategy's teachers."""
    from kdmkb.services.config import DistillSettings

    student = trained_student(kb_folder, tmp_path)
    fresh = KBWorker("student", kb_folder, "feature-complex", {"rank": 4, "batch_size": 16})
    distill = DistillSettings.model_validate(DISTILL)
    assert fresh.restore_model("job", 0, distill, tmp_path, [1], teachers=("structure", "text")) == {"round": 1, "unusable": []}
    restored = fresh.student.combination.modules().state_dict()
    assert all(torch.equal(restored[k], v) for k, v in student.student.combination.modules().state_dict().items())
    assert fresh.restore_model("job", 0, distill, tmp_path, [1])["round"] is None  # without its teachers the checkpoint does not fit


def test_a_resumed_student_steps_its_policy_at_the_rate_its_settings_give_now(kb_folder, tmp_path):
    """A checkpoint keeps the optimiser's sums, not its step size: a rate changed between sittings applies on resume."""
    from kdmkb.services.config import DistillSettings

    trained_student(kb_folder, tmp_path)  # saved at the default rate
    changed = {**DISTILL, "combination_settings": {**DISTILL["combination_settings"], "policy_learning_rate": 0.01}}
    fresh = KBWorker("student", kb_folder, "feature-complex", {"rank": 4, "batch_size": 16})
    assert fresh.restore_model("job", 0, DistillSettings.model_validate(changed), tmp_path, [1], teachers=("structure", "text"))["round"] == 1
    policy = {id(p) for p in fresh.student.combination.modules().parameters()}
    rates = {("policy" if id(group["params"][0]) in policy else "model"): group["lr"] for group in fresh.student.optimizer.param_groups}
    assert rates == {"policy": 0.01, "model": fresh.settings.learning_rate}
    assert all(state["sum"].abs().sum() > 0 for state in fresh.student.optimizer.state.values())  # the sums did come back

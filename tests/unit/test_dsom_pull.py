"""A DSoM student and its teachers as plain KB workers: full and compact answers (bytes per query, exactly), the policy's checkpoint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kdmkb.kb_worker import exchange
from kdmkb.kb_worker.shared_lists import is_shared
from kdmkb.kb_worker.worker import AlignmentView, KBWorker
from kdmkb.protos.kdmkb.exchange.v1 import soft_labels_pb2
from kdmkb.services.tsv import write_rows

E, R, STEPS, BATCH = 300, 3, 2, 16
TEACHERS = ("numeric", "structure", "text")
DISTILL = {"combination": "dsom", "relation_weight": 0, "temperature": 4.0, "top_k": 3, "combination_settings": {"hidden": 32}}


@pytest.fixture
def kb_folder(tmp_path):
    """Every KB of the job is this one graph (as DSoM's modality teachers are), with two random feature matrices."""
    rng = np.random.default_rng(0)
    triples = sorted({(f"e{h}", f"r{r}", f"e{t}") for h, r, t in zip(rng.integers(0, 12, 400), rng.integers(0, R, 400), rng.integers(0, E, 400))})
    write_rows(tmp_path / "train.tsv", triples[:-20])
    write_rows(tmp_path / "valid.tsv", triples[-20:-10])
    write_rows(tmp_path / "test.tsv", triples[-10:])
    write_rows(tmp_path / "entities.tsv", [(f"e{i}",) for i in range(E)])
    write_rows(tmp_path / "relations.tsv", [(f"r{i}",) for i in range(R)])
    (tmp_path / "features").mkdir()
    for modality, width in (("text", 8), ("numeric", 3)):
        np.save(tmp_path / "features" / f"{modality}.npy", rng.standard_normal((E, width)).astype(np.float32))
    return tmp_path


def workers(folder, **combination) -> dict[str, KBWorker]:
    names = ("student", *TEACHERS)
    ids = {f"e{i}": i for i in range(E)}, {f"r{i}": i for i in range(R)}
    everything = (list(range(E)), list(range(R)))
    result = {}
    for name in names:
        features = {"text": {"features": "text"}, "numeric": {"features": "numeric"}}.get(name, {})
        worker = KBWorker(name, folder, "feature-complex", {"rank": 4, "batch_size": BATCH, **features})
        distill = {**DISTILL, "combination_settings": {**DISTILL["combination_settings"], **combination}}
        worker.configure("job", 0, distill, AlignmentView(*ids, peers={peer: everything for peer in names if peer != name}))
        result[name] = worker
    return result


def pull(kbs: dict[str, KBWorker], round_: int, rule: str) -> list[list[bytes]]:
    """Each teacher's messages answering the student's queries."""
    payloads = []
    for teacher in TEACHERS:
        _, queries = kbs["student"].ask(round_, STEPS, teacher, rule)
        payloads.append(kbs[teacher].answer(queries)[1])
    return payloads


def test_a_compact_answer_is_a_shared_list_and_a_tail_bucket_bytes_per_query_exactly(kb_folder):
    kbs = workers(kb_folder)
    (full,), (compact,) = pull(kbs, 0, "all")[0], pull(kbs, 0, "shared")[0]
    queries = 2 * STEPS * BATCH  # a tail and a head query per triple of the round's batches
    full_blocks = soft_labels_pb2.SoftLabels.FromString(full).blocks
    assert len(full_blocks) == 2 * STEPS and not any(b.tail_bucket for b in full_blocks)
    # every shared entity: one candidate row of E int32 ids per block, E float32 logits per query
    assert sum(len(b.candidates.data) for b in full_blocks) == 2 * STEPS * 4 * E
    assert sum(len(b.scores.data) for b in full_blocks) == queries * 4 * E
    decoded = exchange.decode(compact)
    listed = [b.candidates.shape[1] for b in decoded.blocks]
    assert all(b.tail for b in decoded.blocks) and all(width < E for width in listed)
    compact_blocks = soft_labels_pb2.SoftLabels.FromString(compact).blocks
    assert [len(b.candidates.data) for b in compact_blocks] == [4 * width for width in listed]  # one list per block
    assert [len(b.scores.data) for b in compact_blocks] == [4 * BATCH * (width + 1) for width in listed]  # + the bucket
    # the whole messages, per query (seeded: the lists are the student's top-3 and the queries' train answers)
    assert (len(full), len(compact)) == (82_323, 25_519)
    assert len(full) / queries == pytest.approx(1286.3, abs=0.1) and len(compact) / queries == pytest.approx(398.7, abs=0.1)
    # the bucket holds the rest of the teacher's distribution: listed + bucket sum to one
    block = decoded.blocks[0]
    probabilities = torch.softmax(torch.from_numpy(block.scores.astype(np.float32)), dim=1)
    assert probabilities.sum(dim=1).tolist() == pytest.approx([1.0] * BATCH, rel=1e-5)
    with torch.no_grad():
        teacher = kbs["numeric"].model
        everything = torch.softmax(teacher.score(block.kind, torch.tensor(block.queries, dtype=torch.long)), dim=1)
    listed_ids = torch.tensor(block.candidates[0], dtype=torch.long)
    torch.testing.assert_close(probabilities[:, :-1], everything[:, listed_ids], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rule, state", [("all", "full"), ("shared", "compact")])
def test_the_student_trains_on_every_teachers_answers_and_records_its_choices(kb_folder, rule, state):
    kbs = workers(kb_folder, state=state)
    policy = kbs["student"].student.combination.modules()
    before = [p.detach().clone() for p in policy.parameters()]
    result = kbs["student"].student.train([kbs["student"]._train[rows] for rows in kbs["student"].schedule.batches(0, STEPS)], kbs["student"].student.lessons([m for messages in pull(kbs, 0, rule) for m in messages], {})[0])
    assert result["kd_steps"] == STEPS and np.isfinite(result["kd_loss"])
    assert sum(result["teacher_subsets"].values()) == 2 * STEPS * BATCH
    assert all(set(label.split("+")) <= set(TEACHERS) for label in result["teacher_subsets"])
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))  # the student's optimiser steps the policy


def test_the_policy_is_in_the_students_checkpoint(kb_folder, tmp_path):
    kbs = workers(kb_folder)
    student = kbs["student"]
    student.train(0, STEPS, *pull(kbs, 0, "all"))
    saved = {k: v.clone() for k, v in student.student.combination.modules().state_dict().items()}
    student.save(tmp_path / "checkpoint", 1)
    student.train(1, STEPS, *pull(kbs, 1, "all"))
    assert any(not torch.equal(saved[k], v) for k, v in student.student.combination.modules().state_dict().items())
    student.load(tmp_path / "checkpoint", 1)
    restored = student.student.combination.modules()
    assert all(torch.equal(saved[k], v) for k, v in restored.state_dict().items())
    assert any(p is q for group in student.student.optimizer.param_groups for p in group["params"] for q in restored.parameters())


def test_a_full_answer_stays_one_shared_row_and_trains_as_its_copy_per_query(kb_folder):
    """Every entity for every query travels as one row to the student's loss (no [q, |E|] id matrix), with the same update as a copy per query."""
    runs = []
    for copied in (False, True):
        kbs = workers(kb_folder)
        student = kbs["student"]
        lessons = student.student.lessons([m for messages in pull(kbs, 0, "all") for m in messages], {})[0]
        groups = [group for lesson in lessons.values() for group in lesson.groups]
        assert groups and all(is_shared(group.candidates) for group in groups)
        if copied:
            lessons = {
                step: dataclasses.replace(lesson, groups=tuple(dataclasses.replace(g, candidates=g.candidates.contiguous()) for g in lesson.groups))
                for step, lesson in lessons.items()
            }
        torch.manual_seed(0)  # the policy's draws
        result = student.student.train([student._train[rows] for rows in student.schedule.batches(0, STEPS)], lessons)
        runs.append((result["loss"], result["kd_loss"], [p.detach().clone() for p in student.model.modules().parameters()]))
    (own, kd, weights), (own_copied, kd_copied, weights_copied) = runs
    assert (own, kd) == (own_copied, kd_copied)
    assert all(torch.equal(a, b) for a, b in zip(weights, weights_copied))

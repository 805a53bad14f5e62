"""The soft-label exchange between real KB workers, and the merge of pairwise alignments.

Workers are plain :class:`KBWorker` objects (the Ray path is the same code, exercised by test_api).
The KBs are aligned only partially: half of their shared entities and all relations but one.
"""

from __future__ import annotations

from collections import Counter
import numpy as np
import pytest

from kdmkb.coordinator.alignment import PairAlignment, build_pair, merge
from kdmkb.kb_worker import exchange
from kdmkb.kb_worker.worker import KBWorker
from kdmkb.kb_worker.worker_types import QueryKind
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.errors import DataError
from kdmkb.services.split import split_dataset

SETTINGS = {"dim": 16, "batch_size": 64, "negatives": 8, "learning_rate": 0.01}
DISTILL = {"alpha": 0.5, "top_k": 4, "temperature": 1.0, "score_dtype": "float32"}
STEPS = 4


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """Two nations KBs, "a" and "b", aligned on half of their shared entities and on all relations but the busiest."""
    out = tmp_path_factory.mktemp("partial") / "kbs"
    summary = split_dataset(dataset_dir("nations"), out, kbs=2, seed=3, align="0.5", names=["a", "b"])
    entities_path = out / "alignments" / "a__b.entities.tsv"
    train = [line.split("\t") for line in (out / "a" / "train.tsv").read_text(encoding="utf-8").splitlines()]
    dropped = Counter(relation for _, relation, _ in train).most_common(1)[0][0]
    relations = [line.split("\t")[0] for line in (out / "a" / "relations.tsv").read_text(encoding="utf-8").splitlines()]
    relations_path = out / "alignments" / "a__b.partial-relations.tsv"
    relations_path.write_text("".join(f"{r}\t{r}\n" for r in relations if r != dropped), encoding="utf-8")

    workers = {name: KBWorker(name, out / name, "transe", SETTINGS) for name in ("a", "b")}
    vocabularies = {name: worker.vocabulary() for name, worker in workers.items()}
    pair = build_pair("a", "b", vocabularies["a"], vocabularies["b"], str(entities_path), str(relations_path))
    views = merge(["a", "b"], [pair])
    for seed, (name, worker) in enumerate(workers.items()):
        worker.configure("job-x", seed, DISTILL, views[name])
    shared_entities = {name for name, _ in pair.entities}
    assert 0 < len(shared_entities) < len(vocabularies["a"]["entity"]) - 1, "the alignment must be partial"
    assert dropped not in {name for name, _ in pair.relations}
    return {"summary": summary, "workers": workers, "pair": pair, "views": views, "dropped": dropped, "vocabularies": vocabularies}


def _shared_ids(partial) -> tuple[set[int], set[int]]:
    """Alignment ids of the entities and relations aligned between a and b, from the alignment's name pairs."""
    views, pair = partial["views"], partial["pair"]
    entities = {views["a"].entities[x] for x, _ in pair.entities}
    relations = {views["a"].relations[x] for x, _ in pair.relations}
    # both sides give each aligned pair the same id
    assert entities == {views["b"].entities[y] for _, y in pair.entities}
    assert relations == {views["b"].relations[y] for _, y in pair.relations}
    return entities, relations


def test_soft_labels_carry_aligned_ids_only(partial):
    teacher = partial["workers"]["a"]
    stats, (payload,) = teacher.teach(7, STEPS, ["b"])
    assert stats["bytes"] == {"b": len(payload)} and stats["messages"] == {"b": 1} and len(payload) > 0
    lesson = exchange.decode(payload)
    assert (lesson.job_id, lesson.round, lesson.teacher, lesson.student) == ("job-x", 7, "a", "b")

    entities, relations = _shared_ids(partial)
    views = partial["views"]
    unaligned = set(partial["vocabularies"]["a"]["entity"]) - {x for x, _ in partial["pair"].entities}
    assert unaligned and not unaligned & set(views["a"].entities)  # unaligned entities have no alignment id at all
    assert partial["dropped"] not in views["a"].relations

    columns = {QueryKind.TAIL: (entities, relations), QueryKind.HEAD: (relations, entities), QueryKind.RELATION: (entities, entities)}
    kinds = set()
    for block in lesson.blocks:
        kinds.add(block.kind)
        first, second = columns[block.kind]
        candidates = relations if block.kind == QueryKind.RELATION else entities
        assert block.queries.shape[0] > 0 and block.queries.dtype == np.int32  # alignment ids that fit travel as int32
        assert set(block.queries[:, 0].tolist()) <= first, block.kind
        assert set(block.queries[:, 1].tolist()) <= second, block.kind
        assert set(block.candidates.ravel().tolist()) <= candidates, block.kind
        assert block.scores.shape == block.candidates.shape and np.isfinite(block.scores).all()
        assert 0 <= block.step < STEPS
        if block.kind == QueryKind.RELATION:  # every shared relation is a candidate of every relation query
            assert all(set(row) == relations for row in block.candidates.tolist())
        else:  # top-k plus as many random candidates
            assert block.candidates.shape[1] == 2 * DISTILL["top_k"]
    assert kinds == {QueryKind.TAIL, QueryKind.HEAD, QueryKind.RELATION}


def test_soft_labels_name_only_the_students_shared_ids(partial, tmp_path):
    """With a third KB aligned on fewer entities, each student's payload uses what it shares with the teacher."""
    out = partial["summary"].out_dir
    c = KBWorker("c", out / "b", "transe", SETTINGS)  # b's triples under another name
    few = [x for x, _ in partial["pair"].entities][:3]
    path = tmp_path / "a__c.entities.tsv"
    path.write_text("".join(f"{x}\t{x}\n" for x in few), encoding="utf-8")
    vocabularies = {**partial["vocabularies"], "c": c.vocabulary()}
    pairs = [partial["pair"], build_pair("a", "c", vocabularies["a"], vocabularies["c"], str(path), "")]
    views = merge(["a", "b", "c"], pairs)
    teacher = KBWorker("a", out / "a", "transe", SETTINGS)
    teacher.configure("job-y", 0, DISTILL, views["a"])
    _, (to_b,), (to_c,) = teacher.teach(0, STEPS, ["b", "c"])
    ids_c = {views["a"].entities[x] for x in few}
    for block in exchange.decode(to_c).blocks:
        if block.kind != QueryKind.RELATION:
            assert set(block.candidates.ravel().tolist()) <= ids_c
    entity_ids_b = {views["a"].entities[x] for x, _ in partial["pair"].entities}
    seen_b = set()
    for block in exchange.decode(to_b).blocks:
        if block.kind != QueryKind.RELATION:
            seen_b |= set(block.candidates.ravel().tolist())
    assert seen_b <= entity_ids_b and seen_b - ids_c, "b shares more entities with a than c does"


def test_student_learns_from_the_payload(partial):
    teacher, student = partial["workers"]["a"], partial["workers"]["b"]
    _, messages = teacher.teach(1, STEPS, ["b"])
    before = student.export()["entity"][1].copy()
    result = student.train(1, STEPS, messages)
    assert result["kd_loss"] > 0
    assert np.isfinite(result["loss"]) and result["loss"] > 0
    assert not np.array_equal(before, student.export()["entity"][1])
    # the same round without soft labels has no distillation loss
    assert student.train(2, STEPS)["kd_loss"] == 0.0


def test_payload_for_another_student_is_refused(partial):
    teacher = partial["workers"]["a"]
    _, messages = teacher.teach(2, STEPS, ["b"])
    with pytest.raises(DataError, match="routed"):
        teacher.train(2, STEPS, messages)  # a's own lesson for b, routed back to a


def test_payload_with_an_unshared_id_is_refused(partial):
    student = partial["workers"]["b"]
    entities, relations = _shared_ids(partial)
    foreign = max(entities | relations) + 100
    block = exchange.SoftLabelBlock(QueryKind.TAIL, 0, np.array([[min(entities), min(relations)]]), np.array([[min(entities), foreign]]), np.zeros((1, 2), np.float32))
    payload = exchange.encode(exchange.SoftLabels("job-x", 0, "a", "b", (block,)))
    with pytest.raises(DataError, match=f"alignment id {foreign}"):
        student.train(0, STEPS, [payload])


# -- pull: a student's queries, a teacher's answer ------------------------------------------------
@pytest.mark.parametrize("rule", ["top-k", "listed", "all"])
def test_queries_and_answers_carry_aligned_ids_only(partial, rule):
    """b asks a about b's own batches; both messages name only ids a and b share, and the answer is a's logits."""
    import torch

    teacher, student = partial["workers"]["a"], partial["workers"]["b"]
    entities, relations = _shared_ids(partial)
    stats, payload = student.ask(11, STEPS, "a", rule)
    assert stats["bytes"] == len(payload) > 0
    asked = exchange.decode_queries(payload)
    assert (asked.job_id, asked.round, asked.student, asked.teacher, asked.top_k) == ("job-x", 11, "b", "a", DISTILL["top_k"])
    columns = {QueryKind.TAIL: (entities, relations), QueryKind.HEAD: (relations, entities), QueryKind.RELATION: (entities, entities)}
    assert {block.kind for block in asked.blocks} == set(QueryKind)
    for block in asked.blocks:
        first, second = columns[block.kind]
        assert set(block.queries[:, 0].tolist()) <= first and set(block.queries[:, 1].tolist()) <= second
        assert (block.candidates is not None) == (rule == "listed")
        if block.candidates is not None:
            assert set(block.candidates.ravel().tolist()) <= (relations if block.kind == QueryKind.RELATION else entities)

    stats, (answer,) = teacher.answer(payload)
    assert stats["bytes"] == len(answer) and stats["messages"] == 1 and stats["student"] == "b"
    labels = exchange.decode(answer)
    assert (labels.teacher, labels.student, labels.round) == ("a", "b", 11)
    asked_by_step = {(b.kind, b.step): b for b in asked.blocks}
    alignment = teacher.alignment
    for block in labels.blocks:
        question = asked_by_step[block.kind, block.step]
        np.testing.assert_array_equal(block.queries, question.queries)  # the student's own queries, answered in order
        pool = relations if block.kind == QueryKind.RELATION else entities
        assert set(block.candidates.ravel().tolist()) <= pool
        if rule == "listed":
            np.testing.assert_array_equal(block.candidates, question.candidates)
        if rule == "all" or block.kind == QueryKind.RELATION:
            assert all(set(row) == pool for row in block.candidates.tolist())
        with torch.no_grad():  # the scores are the teacher's own model on its local ids
            teacher.model.modules().eval()
            local = alignment.local_queries(block.kind, block.queries, "b"), alignment.local_candidates(block.kind, block.candidates, "b")
            expected = teacher.model.score(block.kind, *local)
            teacher.model.modules().train()
        np.testing.assert_allclose(block.scores, expected.numpy(), rtol=1e-5, atol=1e-5)
    result = student.train(11, STEPS, [answer])
    assert result["kd_loss"] > 0 and np.isfinite(result["loss"])


def test_a_teacher_answers_only_what_it_shares_with_the_asking_student(partial, tmp_path):
    """c shares three entities with a; queries from c about what a shares only with b are refused, as are misrouted ones."""
    out = partial["summary"].out_dir
    few = [x for x, _ in partial["pair"].entities][:3]
    path = tmp_path / "a__c.entities.tsv"
    path.write_text("".join(f"{x}\t{x}\n" for x in few), encoding="utf-8")
    c = KBWorker("c", out / "b", "transe", SETTINGS)
    vocabularies = {**partial["vocabularies"], "c": c.vocabulary()}
    views = merge(["a", "b", "c"], [partial["pair"], build_pair("a", "c", vocabularies["a"], vocabularies["c"], str(path), "")])
    teacher = KBWorker("a", out / "a", "transe", SETTINGS)
    teacher.configure("job-z", 0, DISTILL, views["a"])
    b = KBWorker("b", out / "b", "transe", SETTINGS)
    b.configure("job-z", 1, DISTILL, views["b"])
    _, from_b = b.ask(0, STEPS, "a", "top-k")
    asked = exchange.decode_queries(from_b)
    assert any(block.kind == QueryKind.TAIL for block in asked.blocks)
    # the same queries, claimed by c: a shares their entities with b, not (all of them) with c
    as_c = exchange.encode_queries(exchange.Queries("job-z", 0, "c", "a", asked.rule, asked.top_k, asked.blocks))
    with pytest.raises(DataError, match="does not share with it"):
        teacher.answer(as_c)
    with pytest.raises(DataError, match="routed"):
        b.answer(from_b)  # a's queries sent to b itself
    stranger = exchange.encode_queries(exchange.Queries("job-z", 0, "d", "a", asked.rule, asked.top_k, ()))
    with pytest.raises(DataError, match="shares nothing with 'd'"):
        teacher.answer(stranger)
    with pytest.raises(DataError, match="top-k of 0"):
        teacher.answer(exchange.encode_queries(exchange.Queries("job-z", 0, "b", "a", exchange.TEACHER_TOP_K, 0, ())))


# -- merging pairwise alignments ------------------------------------------------------------------

VOCAB = {
    "A": {"entity": ["a1", "a2", "a3"], "relation": ["ra", "rx"]},
    "B": {"entity": ["b1", "b2", "b3"], "relation": ["rb"]},
    "C": {"entity": ["c1", "c3", "c9"], "relation": ["rc"]},
}


def _pair(a: str, b: str, entities, relations=()) -> PairAlignment:
    return PairAlignment(a, b, tuple(entities), tuple(relations))


def test_merge_makes_transitive_classes():
    ab = _pair("A", "B", [("a1", "b1"), ("a2", "b2")], [("ra", "rb")])
    bc = _pair("B", "C", [("b1", "c1"), ("b3", "c3")], [("rb", "rc")])
    views = merge(["A", "B", "C"], [ab, bc])
    # a1 ~ b1 ~ c1 is one class although A and C were never aligned directly
    assert views["A"].entities["a1"] == views["B"].entities["b1"] == views["C"].entities["c1"]
    assert views["A"].relations["ra"] == views["B"].relations["rb"] == views["C"].relations["rc"]
    assert views["A"].entities["a2"] == views["B"].entities["b2"] and "a2" not in views["C"].entities.values()
    assert views["B"].entities["b3"] == views["C"].entities["c3"]
    # unaligned names get no id
    assert "a3" not in views["A"].entities and "c9" not in views["C"].entities and "rx" not in views["A"].relations
    # distinct classes have distinct ids, numbered densely
    ids = {views[kb].entities[name] for kb in views for name in views[kb].entities}
    assert ids == set(range(3))
    # each KB shares with each peer exactly the classes both belong to
    assert set(views["A"].peers) == {"B", "C"}
    assert sorted(views["A"].peers["C"][0]) == [views["A"].entities["a1"]]
    assert sorted(views["A"].peers["B"][0]) == sorted([views["A"].entities["a1"], views["A"].entities["a2"]])
    assert sorted(views["C"].peers["B"][0]) == sorted([views["C"].entities["c1"], views["C"].entities["c3"]])
    assert views["A"].peers["C"][1] == [views["A"].relations["ra"]]
    # the ids do not depend on the order the pairs are given in
    assert merge(["A", "B", "C"], [bc, ab]) == views


def test_merge_ignores_kbs_outside_the_job():
    ab = _pair("A", "B", [("a1", "b1")])
    bc = _pair("B", "C", [("b1", "c1"), ("b3", "c3")])
    views = merge(["A", "B"], [ab, bc])
    assert set(views) == {"A", "B"}
    assert set(views["B"].entities) == {"b1"} and set(views["B"].peers) == {"A"}


def test_merge_rejects_conflicting_classes():
    ab = _pair("A", "B", [("a1", "b1")])
    bc = _pair("B", "C", [("b1", "c1")])
    ca = _pair("C", "A", [("c1", "a2")])  # closes the cycle on another entity of A
    with pytest.raises(DataError) as raised:
        merge(["A", "B", "C"], [ab, bc, ca])
    message = str(raised.value)
    assert "'a1'" in message and "'a2'" in message and "'A'" in message
    # without the third KB there is no conflict
    merge(["A", "B"], [ab, bc, ca])


def test_build_pair_validates_names():
    with pytest.raises(DataError, match="two different KBs"):
        build_pair("A", "A", VOCAB["A"], VOCAB["A"])
    with pytest.raises(DataError, match="aligns no entity"):
        build_pair("A", "B", VOCAB["A"], VOCAB["B"])  # identical names: none in common
    shared = build_pair("B", "B2", VOCAB["B"], {"entity": ["b2", "zz"], "relation": ["rb"]})
    assert shared.entities == (("b2", "b2"),) and shared.relations == (("rb", "rb"),)


"""Text worker types as peers of structural ones: mixed jobs through the gRPC API on real Ray workers.

The text KBs use the tiny random BERT (tests/conftest.py): these tests check that the types
teach, learn, rank and report in a federation, not how well (docs/results-text.md has that).
"""

from __future__ import annotations

import re

import pytest

from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.split import split_dataset
from kdmkb.services.wire import to_struct

TIMEOUT = 600
TEXT = {"max_length": 24, "batch_size": 8, "eval_batch_size": 256, "device": "cpu"}
STRUCTURAL = {"dim": 16, "batch_size": 64, "negatives": 8, "learning_rate": 0.01}


@pytest.fixture(scope="module")
def umls_halves(tmp_path_factory):
    out = tmp_path_factory.mktemp("text-federation") / "kbs"
    split_dataset(dataset_dir("umls"), out, kbs=2, seed=0, names=["text", "struct"], align="all")
    return out


def _register(stub, out, name, folder, worker_type, settings):
    request = pb.RegisterKBRequest(name=name, data_dir=str(out / folder), worker_type=worker_type, settings=to_struct(settings))
    return stub.RegisterKB(request, timeout=TIMEOUT).kb


def _run(stub, out, kbs, strategy_settings):
    for a, b in ((kbs[0], kbs[1]),):
        stub.RegisterAlignment(
            pb.RegisterAlignmentRequest(kb_a=a, kb_b=b, entities_path=str(out / "alignments" / "text__struct.entities.tsv"), relations_path=str(out / "alignments" / "text__struct.relations.tsv")),
            timeout=TIMEOUT,
        )
    settings = {"rounds": 2, "steps_per_round": 3, "top_k": 4, "checkpoint_every": 0}
    job = stub.CreateJob(pb.CreateJobRequest(strategy="cooperative", kbs=kbs, settings=to_struct(settings), strategy_settings=to_struct(strategy_settings)), timeout=TIMEOUT).job
    stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=TIMEOUT)
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT))
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED, events[-1].message
    return stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=TIMEOUT).job


@pytest.mark.parametrize("exchange", ["push", "pull"])
def test_lmke_and_transe_teach_each_other(stub, umls_halves, tiny_encoder, exchange):
    text, struct = f"lmke-{exchange}", f"transe-{exchange}"
    _register(stub, umls_halves, text, "text", "lmke", {**TEXT, "encoder": tiny_encoder})
    _register(stub, umls_halves, struct, "struct", "transe", STRUCTURAL)
    job = _run(stub, umls_halves, [text, struct], {"exchange": exchange})
    for kb in (text, struct):
        assert job.progress[kb].soft_label_bytes_sent > 0 and job.progress[kb].soft_label_bytes_received > 0
        assert job.progress[kb].kd_loss > 0
        assert job.test_metrics[kb].num_queries > 0 and job.test_metrics[kb].ranking == "exact"
    assert (job.progress[text].query_bytes_sent > 0) == (exchange == "pull")


def test_mtl_kgc_reranks_and_teaches_rotate_through_pull(stub, umls_halves, tiny_encoder):
    text, struct = "mtl-kgc-pull", "rotate-pull"
    settings = {**TEXT, "encoder": tiny_encoder, "rerank_k": 8, "retriever": "rotate", "retriever_settings": {"dim": 8}}
    _register(stub, umls_halves, text, "text", "mtl-kgc", settings)
    _register(stub, umls_halves, struct, "struct", "rotate", STRUCTURAL)
    job = _run(stub, umls_halves, [text, struct], {"exchange": "pull", "candidates": "listed"})
    assert job.test_metrics[text].ranking == "rerank@8(rotate)" and 0 < job.test_metrics[text].retriever_recall <= 1
    assert job.test_metrics[struct].ranking == "exact"
    for kb in (text, struct):
        assert job.progress[kb].kd_loss > 0 and job.progress[kb].query_bytes_sent > 0
    evaluated = stub.Evaluate(pb.EvaluateRequest(kb=text, split="valid"), timeout=TIMEOUT).metrics
    assert evaluated.ranking == "rerank@8(rotate)"


def test_a_round_and_a_ranking_under_way_report_how_far_they_are_and_their_eta(stub, umls_halves, tiny_encoder, monkeypatch):
    from kdmkb.coordinator import jobs

    monkeypatch.setattr(jobs, "WORK_POLL_SECONDS", 0.05)  # the coordinator runs in this process
    name = "lmke-ranking"  # a bi-encoder: a ranking of seconds, not a cross-encoder's minute, still many polls long
    _register(stub, umls_halves, name, "text", "lmke", {**TEXT, "encoder": tiny_encoder, "eval_batch_size": 16})
    job = stub.CreateJob(pb.CreateJobRequest(strategy="none", kbs=[name], settings=to_struct({"rounds": 1, "steps_per_round": 24, "checkpoint_every": 0})), timeout=TIMEOUT).job
    stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=TIMEOUT)
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT))
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED, events[-1].message
    eta = r"ETA (\d+ s|\d+ min|\d+ h \d\d min|\?)"
    for kind, pattern in (("working", rf"round 1/1: {name} training ([\d,]+)/24 steps, {eta}"), ("ranking", rf"{name} ranking test ([\d,]+)/[\d,]+ triples, {eta}")):
        said = [event.message for event in events if event.kind == kind]
        assert said and all(re.fullmatch(pattern, text) for text in said), (kind, [text for text in said if not re.fullmatch(pattern, text)])
        done = [int(re.fullmatch(pattern, text).group(1).replace(",", "")) for text in said]
        assert done == sorted(done) and any("ETA ?" not in text for text in said), (kind, said)
    kinds = [event.kind for event in events]
    assert kinds.index("working") < kinds.index("round") < kinds.index("ranking")


def test_a_pull_round_reports_each_kbs_answering_while_it_answers(stub, umls_halves, tiny_encoder, monkeypatch):
    """The poll of every KB's work must not queue behind an answer that waits for another KB's ask: asks go first."""
    from kdmkb.coordinator import jobs

    monkeypatch.setattr(jobs, "WORK_POLL_SECONDS", 0.05)  # the coordinator runs in this process
    text, struct = "lmke-answering", "transe-asking"
    _register(stub, umls_halves, text, "text", "lmke", {**TEXT, "encoder": tiny_encoder, "eval_batch_size": 16})
    _register(stub, umls_halves, struct, "struct", "transe", STRUCTURAL)
    for a, b in ((text, struct),):
        stub.RegisterAlignment(
            pb.RegisterAlignmentRequest(kb_a=a, kb_b=b, entities_path=str(umls_halves / "alignments" / "text__struct.entities.tsv"), relations_path=str(umls_halves / "alignments" / "text__struct.relations.tsv")),
            timeout=TIMEOUT,
        )
    settings = {"rounds": 1, "steps_per_round": 16, "top_k": 4, "checkpoint_every": 0, "relation_weight": 0.0}
    job = stub.CreateJob(pb.CreateJobRequest(strategy="cooperative", kbs=[text, struct], settings=to_struct(settings), strategy_settings=to_struct({"exchange": "pull"})), timeout=TIMEOUT).job
    stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=TIMEOUT)
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT))
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED, events[-1].message
    said = [event.message for event in events if event.kind == "working"]
    answering = [message for message in said if f"{text} answering" in message]
    assert len(answering) >= 2, said  # each poll of the answer's second or so; one (before the answer started) when the poll queued behind it

"""A DSoM job over gRPC: three teachers (structure, text and numeric features of one nations graph) and a feature-less student.

The teachers pre-train alone, then the student pulls every teacher's answers for its own queries
and trains with the dsom combination; its choices of teacher subsets reach its /metrics and the job's record.
"""

from __future__ import annotations

import re
import shutil
import urllib.request

import numpy as np
import pytest

from kdmkb.kb_worker.data import load_kb
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.services.client import job_report
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.tsv import write_rows
from kdmkb.services.wire import to_struct as struct

TIMEOUT = 120.0
STUDENT = "dsom-student"
TEACHERS = {"dsom-structure": {}, "dsom-text": {"features": "text"}, "dsom-numeric": {"features": "numeric"}}
WORKER = {"rank": 16, "batch_size": 256, "learning_rate": 0.1}
ROUNDS, STEPS, PRETRAIN = 7, 5, 3


@pytest.fixture(scope="module")
def dsom_kbs(stub, tmp_path_factory):
    """One nations folder with random text (16-wide) and numeric (4-wide) features, registered as a student and three teachers aligned with it by name."""
    folder = tmp_path_factory.mktemp("dsom") / "nations"
    shutil.copytree(dataset_dir("nations"), folder)
    names = load_kb(folder).entities.names
    write_rows(folder / "entities.tsv", [(name,) for name in names])
    (folder / "features").mkdir()
    rng = np.random.default_rng(0)
    for modality, width in (("text", 16), ("numeric", 4)):
        np.save(folder / "features" / f"{modality}.npy", rng.standard_normal((len(names), width)).astype(np.float32))
    for name, settings in {STUDENT: {}, **TEACHERS}.items():
        stub.RegisterKB(pb.RegisterKBRequest(name=name, data_dir=str(folder), worker_type="feature-complex", settings=struct({**WORKER, **settings})), timeout=TIMEOUT)
    for teacher in TEACHERS:
        stub.RegisterAlignment(pb.RegisterAlignmentRequest(kb_a=STUDENT, kb_b=teacher), timeout=TIMEOUT)
    return [STUDENT, *TEACHERS]


def subset_counts(stub, job_id: str) -> dict[str, float]:
    """The student's kdmkb_worker_teacher_subset_queries_total of the job, by subset, from its /metrics."""
    address = next(kb.metrics_address for kb in stub.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs if kb.name == STUDENT)
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(r'^kdmkb_worker_teacher_subset_queries_total\{(.*)\} (\S+)$', re.MULTILINE)
    counts = {}
    for labels, value in pattern.findall(text):
        parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if parsed["job"] == job_id and parsed["kb"] == STUDENT:
            counts[parsed["subset"]] = float(value)
    return counts


@pytest.mark.parametrize("answers, state", [("full", "full"), ("compact", "compact")])
def test_a_dsom_student_learns_from_three_teachers_and_records_its_choices(stub, coordinator, dsom_kbs, answers, state):
    settings = {
        "rounds": ROUNDS, "steps_per_round": STEPS, "eval_every": 0, "checkpoint_every": 0, "seed": 0,
        "combination": "dsom", "relation_weight": 0, "temperature": 4.0, "combination_settings": {"state": state, "hidden": 64},
    }  # fmt: skip
    strategy_settings = {"student": STUDENT, "pretrain_rounds": PRETRAIN, "answers": answers}
    request = pb.CreateJobRequest(strategy="dsom", kbs=dsom_kbs, settings=struct(settings), strategy_settings=struct(strategy_settings))
    job = stub.CreateJob(request, timeout=TIMEOUT).job
    stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=TIMEOUT)
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT))
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED, events[-1].message
    progress = stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=TIMEOUT).job.progress

    assert progress[STUDENT].steps == (ROUNDS - PRETRAIN) * STEPS  # the student waits while the teachers pre-train
    assert all(progress[t].steps == PRETRAIN * STEPS for t in TEACHERS)  # then they are frozen
    assert all(progress[t].soft_label_bytes_sent > 0 and progress[t].query_bytes_received > 0 for t in TEACHERS)
    assert progress[STUDENT].soft_label_bytes_received == sum(progress[t].soft_label_bytes_sent for t in TEACHERS)
    assert progress[STUDENT].kd_loss != 0  # L_RC + gamma L_NDKD: L_RC, a policy-gradient surrogate, may be below 0
    losses = [e.progress[STUDENT].loss for e in events if e.kind == "round" and e.round > PRETRAIN]
    assert len(losses) == ROUNDS - PRETRAIN and losses[-1] < losses[0]  # its own cross-entropy falls

    counts = subset_counts(stub, job.job_id)
    assert sum(counts.values()) == (ROUNDS - PRETRAIN) * STEPS * 2 * WORKER["batch_size"]  # a tail and a head query per triple
    assert all(set(subset.split("+")) <= set(TEACHERS) for subset in counts)
    chosen = {subset: int(count) for subset, count in counts.items()}
    assert coordinator.job(job.job_id).progress[STUDENT]["teacher_subsets"] == chosen  # the job's record too
    assert dict(progress[STUDENT].teacher_subsets) == chosen and not any(progress[t].teacher_subsets for t in TEACHERS)  # and its clients
    assert job_report(stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=TIMEOUT).job)["teacher_subsets"] == {STUDENT: chosen}


def test_a_dsom_job_names_a_student_outside_the_job(stub, dsom_kbs):
    import grpc

    request = pb.CreateJobRequest(strategy="dsom", kbs=dsom_kbs, strategy_settings=struct({"student": "nobody"}))
    with pytest.raises(grpc.RpcError) as error:
        stub.CreateJob(request, timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "strategy_settings.student: 'nobody' is not one of the job's KBs" in error.value.details()

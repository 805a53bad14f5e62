"""Bad requests over gRPC: the right status code, details that name the problem, and nothing changed.

Every bad request is followed by ListKBs/ListJobs (the server still serves) whose answers must equal
those from before the request. A job that fails on its own fails alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.services.wire import to_struct as struct

TIMEOUT = 120.0
INVALID, NOT_FOUND, PRECONDITION = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class Setup:
    """Names and paths the cases refer to."""

    left: str
    right: str
    left_dir: Path
    fresh: str
    job_id: str
    bad: Path  # folder of malformed inputs


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(stub, finished_job, kb_names, nations_split, worker_settings, tmp_path_factory) -> Setup:
    """A trained pair ("left", "right"), a finished job, a KB without model ("fresh") and malformed files."""
    left, right = kb_names
    left_dir = nations_split.out_dir / left
    stub.RegisterKB(pb.RegisterKBRequest(name="fresh", data_dir=str(left_dir), settings=struct(worker_settings)), timeout=TIMEOUT)
    bad = tmp_path_factory.mktemp("bad")
    # a KB folder whose train.tsv has a two-column line 2
    good_lines = (left_dir / "train.tsv").read_text(encoding="utf-8").splitlines()
    _write(bad / "malformed" / "train.tsv", [good_lines[0], "usa\tembassy", *good_lines[1:5]])
    for split in ("valid", "test"):
        _write(bad / "malformed" / f"{split}.tsv", (left_dir / f"{split}.tsv").read_text(encoding="utf-8").splitlines())
    # a KB folder whose valid.tsv names an entity missing from its entities.tsv
    for name in ("train.tsv", "test.tsv", "entities.tsv", "relations.tsv"):
        _write(bad / "unknown-entity" / name, (left_dir / name).read_text(encoding="utf-8").splitlines())
    _write(bad / "unknown-entity" / "valid.tsv", ["atlantis\tembassy\tusa"])
    # KB folders with one bad file each: a NUL byte in a name, train.tsv a directory, an empty train.tsv, an entity listed twice
    for name, replace in (
        ("nul", {"train.tsv": [good_lines[0].replace("\t", "\x00\t", 1), *good_lines[1:5]]}),
        ("train-dir", {"train.tsv": None}),
        ("empty-train", {"train.tsv": []}),
        ("duplicate-vocabulary", {"entities.tsv": [*(left_dir / "entities.tsv").read_text(encoding="utf-8").splitlines(), "usa"]}),
    ):
        for file in ("train.tsv", "valid.tsv", "test.tsv", "entities.tsv", "relations.tsv"):
            if file not in replace:
                _write(bad / name / file, (left_dir / file).read_text(encoding="utf-8").splitlines())
            elif replace[file] is None:
                (bad / name / file).mkdir(parents=True)
            else:
                _write(bad / name / file, replace[file])
    # alignment files
    _write(bad / "unknown.entities.tsv", ["usa\tusa", "atlantis\tusa", "uk\tuk"])
    _write(bad / "unknown.relations.tsv", ["embassy\tembassy", "warp\twarp"])
    (bad / "empty.entities.tsv").write_text("", encoding="utf-8")
    _write(bad / "duplicate.entities.tsv", ["usa\tusa", "uk\tuk", "usa\tusa"])
    _write(bad / "one-to-many.entities.tsv", ["usa\tusa", "usa\tuk"])
    _write(bad / "columns.entities.tsv", ["usa\tusa", "uk"])
    return Setup(left, right, left_dir, "fresh", finished_job.job_id, bad)


def _snapshot(stub, coordinator) -> tuple:
    kbs = stub.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT)
    jobs = stub.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT)
    return kbs, jobs, dict(coordinator._alignments)  # no RPC lists alignments


def _call(stub, method: str, request):
    response = getattr(stub, method)(request, timeout=TIMEOUT)
    return list(response) if method in ("WatchJob", "ExportEmbeddings") else response


# (id, method, request factory, code, fragments the details must contain)
CASES = [
    # -- RegisterKB ----------------------------------------------------------------------------
    ("kb-empty-name", "RegisterKB", lambda s: pb.RegisterKBRequest(name="", data_dir=str(s.left_dir)), INVALID, ["name", "empty"]),
    ("kb-bad-name", "RegisterKB", lambda s: pb.RegisterKBRequest(name="bad name!", data_dir=str(s.left_dir)), INVALID, ["name", "'bad name!'"]),
    ("kb-long-name", "RegisterKB", lambda s: pb.RegisterKBRequest(name="a" * 65, data_dir=str(s.left_dir)), INVALID, ["name"]),
    ("kb-empty-data-dir", "RegisterKB", lambda s: pb.RegisterKBRequest(name="newkb", data_dir=""), INVALID, ["data_dir", "empty"]),
    ("kb-missing-folder", "RegisterKB", lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.bad / "missing")), INVALID, ["data_dir", "missing", "not found"]),
    ("kb-malformed-tsv", "RegisterKB", lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.bad / "malformed")), INVALID, ["data_dir", "train.tsv line 2", "columns"]),
    (
        "kb-unknown-entity",
        "RegisterKB",
        lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.bad / "unknown-entity")),
        INVALID,
        ["valid.tsv line 1", "'atlantis'"],
    ),
    (
        "kb-unknown-worker-type",
        "RegisterKB",
        lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.left_dir), worker_type="transf"),
        INVALID,
        ["worker_type", "'transf'", "complex", "distmult", "rotate", "transe"],
    ),
    ("kb-negative-dim", "RegisterKB", lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.left_dir), settings=struct({"dim": -1})), INVALID, ["settings.dim"]),
    (
        "kb-unknown-setting",
        "RegisterKB",
        lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.left_dir), settings=struct({"dimension": 16})),
        INVALID,
        ["settings.dimension"],
    ),
    (
        "kb-fractional-batch",
        "RegisterKB",
        lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.left_dir), settings=struct({"batch_size": 1.5})),
        INVALID,
        ["settings.batch_size"],
    ),
    (
        "kb-cuda-without-gpu",
        "RegisterKB",
        lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.left_dir), settings=struct({"device": "cuda"})),
        grpc.StatusCode.FAILED_PRECONDITION,
        ["settings.device", "no node of the Ray cluster offers a GPU"],
    ),
    (
        "kb-features-missing",
        "RegisterKB",
        lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.left_dir), worker_type="feature-mlp", settings=struct({"features": "images"})),
        INVALID,
        ["settings.features", "features/images.npy"],
    ),
    ("kb-nul-byte", "RegisterKB", lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.bad / "nul")), INVALID, ["train.tsv line 1 column", "control character"]),
    ("kb-train-is-a-directory", "RegisterKB", lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.bad / "train-dir")), INVALID, ["data_dir", "missing train.tsv"]),
    ("kb-empty-train", "RegisterKB", lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.bad / "empty-train")), INVALID, ["train.tsv", "empty"]),
    (
        "kb-duplicate-vocabulary",
        "RegisterKB",
        lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.bad / "duplicate-vocabulary")),
        INVALID,
        ["entities.tsv line", "duplicate entity 'usa'", "first on line"],
    ),
    (
        "kb-nan-setting",
        "RegisterKB",
        lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.left_dir), settings=struct({"learning_rate": float("nan")})),
        INVALID,
        ["settings.learning_rate", "finite"],
    ),
    (
        "oversized-request",
        "RegisterKB",
        lambda s: pb.RegisterKBRequest(name="newkb", data_dir="x" * (65 << 20)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        ["larger than max"],
    ),
    ("kb-bad-norm", "RegisterKB", lambda s: pb.RegisterKBRequest(name="newkb", data_dir=str(s.left_dir), settings=struct({"norm": 3})), INVALID, ["settings.norm"]),
    # re-registering an existing KB badly leaves the registered one in place
    # (forced: without force, re-registering a KB that has an alignment is refused before its folder is read)
    ("kb-existing-missing-folder", "RegisterKB", lambda s: pb.RegisterKBRequest(name=s.left, data_dir=str(s.bad / "missing"), force=True), INVALID, ["data_dir", "not found"]),
    ("kb-existing-malformed", "RegisterKB", lambda s: pb.RegisterKBRequest(name=s.left, data_dir=str(s.bad / "malformed"), force=True), INVALID, ["train.tsv line 2"]),
    ("kb-existing-bad-settings", "RegisterKB", lambda s: pb.RegisterKBRequest(name=s.left, data_dir=str(s.left_dir), settings=struct({"dim": 0})), INVALID, ["settings.dim"]),
    # -- RegisterAlignment ---------------------------------------------------------------------
    ("align-self", "RegisterAlignment", lambda s: pb.RegisterAlignmentRequest(kb_a=s.left, kb_b=s.left), INVALID, ["kb_b", "'left'", "twice"]),
    ("align-unknown-kb", "RegisterAlignment", lambda s: pb.RegisterAlignmentRequest(kb_a="nope", kb_b=s.right), NOT_FOUND, ["kb_a", "'nope'"]),
    ("align-empty-kb", "RegisterAlignment", lambda s: pb.RegisterAlignmentRequest(kb_a=s.left, kb_b=""), INVALID, ["kb_b", "empty"]),
    (
        "align-missing-file",
        "RegisterAlignment",
        lambda s: pb.RegisterAlignmentRequest(kb_a=s.left, kb_b=s.right, entities_path=str(s.bad / "nope.tsv")),
        INVALID,
        ["entities_path", "nope.tsv"],
    ),
    (
        "align-unknown-entity",
        "RegisterAlignment",
        lambda s: pb.RegisterAlignmentRequest(kb_a=s.left, kb_b=s.right, entities_path=str(s.bad / "unknown.entities.tsv")),
        INVALID,
        ["unknown.entities.tsv line 2", "'atlantis'", "'left'"],
    ),
    (
        "align-unknown-relation",
        "RegisterAlignment",
        lambda s: pb.RegisterAlignmentRequest(kb_a=s.left, kb_b=s.right, relations_path=str(s.bad / "unknown.relations.tsv")),
        INVALID,
        ["unknown.relations.tsv line 2", "relation 'warp'"],
    ),
    (
        "align-empty-file",
        "RegisterAlignment",
        lambda s: pb.RegisterAlignmentRequest(kb_a=s.left, kb_b=s.right, entities_path=str(s.bad / "empty.entities.tsv")),
        INVALID,
        ["empty.entities.tsv", "empty"],
    ),
    (
        "align-duplicate-pair",
        "RegisterAlignment",
        lambda s: pb.RegisterAlignmentRequest(kb_a=s.left, kb_b=s.right, entities_path=str(s.bad / "duplicate.entities.tsv")),
        INVALID,
        ["duplicate.entities.tsv line 3", "duplicate pair", "first on line 1"],
    ),
    (
        "align-one-to-many",
        "RegisterAlignment",
        lambda s: pb.RegisterAlignmentRequest(kb_a=s.left, kb_b=s.right, entities_path=str(s.bad / "one-to-many.entities.tsv")),
        INVALID,
        ["one-to-many.entities.tsv line 2", "'usa'", "already aligned"],
    ),
    (
        "align-columns",
        "RegisterAlignment",
        lambda s: pb.RegisterAlignmentRequest(kb_a=s.left, kb_b=s.right, entities_path=str(s.bad / "columns.entities.tsv")),
        INVALID,
        ["columns.entities.tsv line 2", "expected 2"],
    ),
    # -- CreateJob -----------------------------------------------------------------------------
    (
        "job-unknown-strategy",
        "CreateJob",
        lambda s: pb.CreateJobRequest(strategy="coop", kbs=[s.left, s.right]),
        INVALID,
        ["strategy", "'coop'", "cooperative", "none", "one-way", "sequential"],
    ),
    ("job-empty-strategy", "CreateJob", lambda s: pb.CreateJobRequest(strategy="", kbs=[s.left, s.right]), INVALID, ["strategy", "empty"]),
    ("job-no-kbs", "CreateJob", lambda s: pb.CreateJobRequest(strategy="cooperative", kbs=[]), INVALID, ["kbs", "empty"]),
    ("job-duplicate-kbs", "CreateJob", lambda s: pb.CreateJobRequest(strategy="cooperative", kbs=[s.left, s.left]), INVALID, ["kbs", "twice"]),
    ("job-unknown-kb", "CreateJob", lambda s: pb.CreateJobRequest(strategy="cooperative", kbs=[s.left, "nope"]), NOT_FOUND, ["kbs[1]", "'nope'"]),
    ("job-one-kb-cooperative", "CreateJob", lambda s: pb.CreateJobRequest(strategy="cooperative", kbs=[s.left]), INVALID, ["kbs", "at least 2 KBs"]),
    ("job-zero-rounds", "CreateJob", lambda s: pb.CreateJobRequest(strategy="cooperative", kbs=[s.left, s.right], settings=struct({"rounds": 0})), INVALID, ["settings.rounds"]),
    ("job-alpha-2", "CreateJob", lambda s: pb.CreateJobRequest(strategy="cooperative", kbs=[s.left, s.right], settings=struct({"alpha": 2})), INVALID, ["settings.alpha"]),
    ("job-top-k-0", "CreateJob", lambda s: pb.CreateJobRequest(strategy="cooperative", kbs=[s.left, s.right], settings=struct({"top_k": 0})), INVALID, ["settings.top_k"]),
    (
        "job-score-dtype",
        "CreateJob",
        lambda s: pb.CreateJobRequest(strategy="cooperative", kbs=[s.left, s.right], settings=struct({"score_dtype": "float64"})),
        INVALID,
        ["settings.score_dtype"],
    ),
    ("job-unknown-setting", "CreateJob", lambda s: pb.CreateJobRequest(strategy="none", kbs=[s.left], settings=struct({"roundz": 3})), INVALID, ["settings.roundz"]),
    (
        "job-pretrain-too-long",
        "CreateJob",
        lambda s: pb.CreateJobRequest(strategy="one-way", kbs=[s.left, s.right], settings=struct({"rounds": 3, "pretrain_rounds": 3})),
        INVALID,
        ["settings", "pretrain_rounds"],
    ),
    (
        "job-foreign-teacher",
        "CreateJob",
        lambda s: pb.CreateJobRequest(strategy="one-way", kbs=[s.left, s.right], strategy_settings=struct({"teacher": "fresh"})),
        INVALID,
        ["strategy_settings.teacher", "'fresh'"],
    ),
    (
        "job-setting-of-another-strategy",
        "CreateJob",
        lambda s: pb.CreateJobRequest(strategy="cooperative", kbs=[s.left, s.right], strategy_settings=struct({"teacher": s.left})),
        INVALID,
        ["strategy_settings.teacher", "Extra inputs"],
    ),
    (
        "job-unknown-exchange",
        "CreateJob",
        lambda s: pb.CreateJobRequest(strategy="cooperative", kbs=[s.left, s.right], strategy_settings=struct({"exchange": "telepathy"})),
        INVALID,
        ["strategy_settings.exchange"],
    ),
    (
        "job-unknown-combination",
        "CreateJob",
        lambda s: pb.CreateJobRequest(strategy="cooperative", kbs=[s.left, s.right], settings=struct({"combination": "vote"})),
        INVALID,
        ["settings", "unknown teacher combination 'vote'", "mean-kl"],
    ),
    # -- jobs by id ----------------------------------------------------------------------------
    ("get-unknown-job", "GetJob", lambda s: pb.GetJobRequest(job_id="nope"), NOT_FOUND, ["job_id", "'nope'"]),
    ("get-empty-job-id", "GetJob", lambda s: pb.GetJobRequest(job_id=""), INVALID, ["job_id", "empty"]),
    ("start-unknown-job", "StartJob", lambda s: pb.StartJobRequest(job_id="nope"), NOT_FOUND, ["job_id", "'nope'"]),
    ("stop-unknown-job", "StopJob", lambda s: pb.StopJobRequest(job_id="nope"), NOT_FOUND, ["job_id", "'nope'"]),
    ("watch-unknown-job", "WatchJob", lambda s: pb.WatchJobRequest(job_id="nope"), NOT_FOUND, ["job_id", "'nope'"]),
    ("start-finished-job", "StartJob", lambda s: pb.StartJobRequest(job_id=s.job_id), PRECONDITION, ["job_id", "SUCCEEDED"]),
    # -- serving -------------------------------------------------------------------------------
    ("evaluate-unknown-kb", "Evaluate", lambda s: pb.EvaluateRequest(kb="nope"), NOT_FOUND, ["kb", "'nope'"]),
    ("evaluate-empty-kb", "Evaluate", lambda s: pb.EvaluateRequest(kb=""), INVALID, ["kb", "empty"]),
    ("evaluate-bad-split", "Evaluate", lambda s: pb.EvaluateRequest(kb=s.left, split="train2"), INVALID, ["split", "'train2'", "valid", "test"]),
    ("evaluate-fresh-kb", "Evaluate", lambda s: pb.EvaluateRequest(kb=s.fresh), PRECONDITION, ["'fresh'", "no model"]),
    ("predict-fresh-kb", "Predict", lambda s: pb.PredictRequest(kb=s.fresh, head="usa", relation="embassy"), PRECONDITION, ["'fresh'", "no model"]),
    ("predict-unknown-kb", "Predict", lambda s: pb.PredictRequest(kb="nope", head="usa", relation="embassy"), NOT_FOUND, ["kb", "'nope'"]),
    ("predict-unknown-head", "Predict", lambda s: pb.PredictRequest(kb=s.left, head="atlantis", relation="embassy"), NOT_FOUND, ["entity 'atlantis'", "'left'"]),
    ("predict-unknown-relation", "Predict", lambda s: pb.PredictRequest(kb=s.left, head="usa", relation="warp"), NOT_FOUND, ["relation 'warp'"]),
    ("predict-empty-head", "Predict", lambda s: pb.PredictRequest(kb=s.left, head="", relation="embassy"), INVALID, ["head", "empty"]),
    ("predict-negative-k", "Predict", lambda s: pb.PredictRequest(kb=s.left, head="usa", relation="embassy", k=-1), INVALID, ["k:", "-1"]),
    ("predict-huge-k", "Predict", lambda s: pb.PredictRequest(kb=s.left, head="usa", relation="embassy", k=1001), INVALID, ["k:", "1001"]),
    ("export-unknown-kb", "ExportEmbeddings", lambda s: pb.ExportEmbeddingsRequest(kb="nope"), NOT_FOUND, ["kb", "'nope'"]),
    ("export-fresh-kb", "ExportEmbeddings", lambda s: pb.ExportEmbeddingsRequest(kb=s.fresh), PRECONDITION, ["'fresh'", "no model"]),
    ("export-negative-chunk", "ExportEmbeddings", lambda s: pb.ExportEmbeddingsRequest(kb=s.left, chunk_rows=-1), INVALID, ["chunk_rows"]),
]


@pytest.mark.parametrize(("method", "make_request", "code", "fragments"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_request(stub, coordinator, setup, method, make_request, code, fragments):
    before = _snapshot(stub, coordinator)
    with pytest.raises(grpc.RpcError) as raised:
        _call(stub, method, make_request(setup))
    error = raised.value
    details = error.details()
    assert error.code() == code, details
    for fragment in fragments:
        assert fragment in details, (fragment, details)
    assert "Traceback" not in details and "internal error" not in details
    assert _snapshot(stub, coordinator) == before  # still serving, and nothing changed


def test_kb_survives_a_bad_re_registration(stub, setup):
    """After the failed re-registrations above, "left" is still the trained KB it was."""
    metrics = stub.Evaluate(pb.EvaluateRequest(kb=setup.left, split="valid"), timeout=TIMEOUT).metrics
    assert 0 < metrics.mrr <= 1
    listed = {kb.name: kb for kb in stub.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs}
    assert listed[setup.left].data_dir == str(setup.left_dir.resolve())


def test_a_failing_job_fails_alone(stub, setup, job_settings, nations_split):
    """A diverging KB (DistMult at learning rate 1e20: inf, then NaN) fails its job; a concurrent job succeeds."""
    stub.RegisterKB(
        pb.RegisterKBRequest(name="unstable", data_dir=str(setup.left_dir), worker_type="distmult", settings=struct({"dim": 16, "learning_rate": 1e20})),
        timeout=TIMEOUT,
    )
    settings = struct({**job_settings, "rounds": 3, "eval_every": 0})
    doomed = stub.CreateJob(pb.CreateJobRequest(strategy="none", kbs=["unstable"], settings=settings), timeout=TIMEOUT).job
    healthy = stub.CreateJob(pb.CreateJobRequest(strategy="cooperative", kbs=[setup.left, setup.right], settings=settings), timeout=TIMEOUT).job
    stub.StartJob(pb.StartJobRequest(job_id=doomed.job_id), timeout=TIMEOUT)
    stub.StartJob(pb.StartJobRequest(job_id=healthy.job_id), timeout=TIMEOUT)

    doomed_events = list(stub.WatchJob(pb.WatchJobRequest(job_id=doomed.job_id), timeout=TIMEOUT))
    healthy_events = list(stub.WatchJob(pb.WatchJobRequest(job_id=healthy.job_id), timeout=TIMEOUT))

    failed = stub.GetJob(pb.GetJobRequest(job_id=doomed.job_id), timeout=TIMEOUT).job
    assert failed.state == pb.JOB_STATE_FAILED
    assert "FloatingPointError" in failed.error and "'unstable'" in failed.error, failed.error
    assert not failed.test_metrics
    assert doomed_events[-1].state == pb.JOB_STATE_FAILED
    if doomed_events[-1].kind == "failed":  # watched while running: the event carries the error
        assert doomed_events[-1].message == failed.error

    succeeded = stub.GetJob(pb.GetJobRequest(job_id=healthy.job_id), timeout=TIMEOUT).job
    assert succeeded.state == pb.JOB_STATE_SUCCEEDED, succeeded.error
    assert healthy_events[-1].state == pb.JOB_STATE_SUCCEEDED
    assert set(succeeded.test_metrics) == {setup.left, setup.right}
    assert all(0 < m.mrr <= 1 for m in succeeded.test_metrics.values())

    # the server still serves, nobody is left busy, and the failed job resumes (from its last checkpoint: none here) and fails again
    kbs = {kb.name: kb for kb in stub.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs}
    assert kbs["unstable"].busy_with_job == "" and kbs[setup.left].busy_with_job == ""
    stub.StartJob(pb.StartJobRequest(job_id=doomed.job_id), timeout=TIMEOUT)
    assert list(stub.WatchJob(pb.WatchJobRequest(job_id=doomed.job_id), timeout=TIMEOUT))[-1].state == pb.JOB_STATE_FAILED
    assert "FloatingPointError" in stub.GetJob(pb.GetJobRequest(job_id=doomed.job_id), timeout=TIMEOUT).job.error
    jobs = {job.job_id: job.state for job in stub.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT).jobs}
    assert jobs[doomed.job_id] == pb.JOB_STATE_FAILED and jobs[healthy.job_id] == pb.JOB_STATE_SUCCEEDED

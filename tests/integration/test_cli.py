"""The ``kdmkb`` command line: ``split`` and ``run`` in-process (CliRunner), and the installed script once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import tomllib
from typer.testing import CliRunner

from kdmkb.kb_worker.worker_types import WORKER_TYPES
from kdmkb.services.cli import Exit, app
from kdmkb.services.config import JobSettings, load_job_file
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.split import split_dataset, write_job_file

NATIONS = dataset_dir("nations")
REPORT_METRICS = {"mrr", "mr", "hits@1", "hits@3", "hits@10"}


def started_as_in_a_terminal(command: list[str], **options) -> subprocess.Popen:
    """``command`` started with Ctrl-C's default action, as a foreground command in a terminal has it.

    A suite started in the background of a non-interactive shell (``.ci/run &``) ignores SIGINT,
    and a child inherits an ignored signal: its Python would never raise KeyboardInterrupt. A
    caught signal is reset to the default at exec, so the parent catches it while it starts the child.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, **options)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(arg) for arg in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


def _malformed_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    lines = (NATIONS / "train.tsv").read_text(encoding="utf-8").splitlines()[:20]
    lines[6] = "usa\tembassy"  # line 7: two columns
    (folder / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split in ("valid", "test"):
        (folder / f"{split}.tsv").write_text((NATIONS / f"{split}.tsv").read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def _assert_failed(result, *fragments: str, code: Exit = Exit.BAD_INPUT) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert "Traceback" not in result.output
    assert "error:" not in result.stdout


# -- split ------------------------------------------------------------------------------------


def test_split_writes_kbs_and_a_job_file(cli, tmp_path):
    out = tmp_path / "kbs"
    result = cli("split", NATIONS, "--out", out, "--kbs", 3, "--seed", 4)
    assert result.exit_code == 0, result.output
    provenance = json.loads((out / "split.json").read_text())
    assert provenance["kb_names"] == ["kb1", "kb2", "kb3"]
    for name, count in provenance["train_counts"].items():
        assert f"{name}: {count} train triples" in result.stdout
        assert len((out / name / "train.tsv").read_text().splitlines()) == count
    assert sum(provenance["train_counts"].values()) == len((NATIONS / "train.tsv").read_text().splitlines())
    for pair in provenance["pairs"]:
        a, b = pair["kbs"]
        assert f"{a} <-> {b}: {pair['aligned_entities']} entities, {pair['aligned_relations']} relations aligned" in result.stdout
    job_file = out / "job.toml"
    assert f"kdmkb run {job_file}" in result.stdout
    raw = tomllib.loads(job_file.read_text())
    assert raw["strategy"] == "cooperative"
    # every setting is there to read and change, with its default
    assert raw["job"] == JobSettings().model_dump(mode="json") and raw["strategy_settings"]["exchange"] == "push"
    assert all(kb["settings"]["dim"] == WORKER_TYPES.get("transe").settings_model().dim for kb in raw["kb"])
    job = load_job_file(job_file)
    assert [kb.name for kb in job.kb] == ["kb1", "kb2", "kb3"]
    assert all(kb.data == (out / kb.name).resolve() and kb.data.is_dir() for kb in job.kb)
    assert len(job.alignment) == 3 and all(a.entities.is_file() and a.relations.is_file() for a in job.alignment)


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (["--kbs", "1"], ["kbs", "must be an integer >= 2"]),
        (["--align", "2.5"], ["align", "'2.5'"]),
        (["--align", "half"], ["align", "'half'", "co-occurring"]),
        (["--seed", "-1"], ["seed"]),
    ],
    ids=["kbs-1", "align-2.5", "align-word", "negative-seed"],
)
def test_split_rejects_bad_options(cli, tmp_path, options, fragments):
    out = tmp_path / "kbs"
    _assert_failed(cli("split", NATIONS, "--out", out, *options), *fragments)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging leftovers either


def test_split_rejects_a_malformed_dataset(cli, tmp_path):
    dataset = _malformed_dataset(tmp_path / "dataset")
    out = tmp_path / "kbs"
    _assert_failed(cli("split", dataset, "--out", out), "train.tsv line 7", "expected 3 tab-separated columns, found 2")
    assert not out.exists()


def test_split_rejects_a_missing_dataset_and_a_full_out_dir(cli, tmp_path):
    _assert_failed(cli("split", tmp_path / "nowhere", "--out", tmp_path / "kbs"), "nowhere")
    assert not (tmp_path / "kbs").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    _assert_failed(cli("split", NATIONS, "--out", full), "out_dir", "refusing to overwrite")
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_installed_script_reports_errors_on_stderr(tmp_path):
    """The ``kdmkb`` console script itself: exit code 3 (bad data) and one line on stderr, no traceback."""
    dataset = _malformed_dataset(tmp_path / "dataset")
    script = Path(sys.executable).with_name("kdmkb")
    env = {**os.environ, "NO_COLOR": "1"}
    result = subprocess.run([str(script), "split", str(dataset), "--out", str(tmp_path / "kbs")], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == Exit.BAD_INPUT, result
    assert "train.tsv line 7" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "kbs").exists()


# -- run --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job_file(tmp_path_factory, worker_settings) -> Path:
    """A tiny two-KB nations job (2 rounds) as ``kdmkb split`` writes it."""
    summary = split_dataset(NATIONS, tmp_path_factory.mktemp("cli") / "kbs", kbs=2, seed=1)
    job = {"rounds": 2, "steps_per_round": 3, "checkpoint_every": 0, "eval_every": 0, "top_k": 4}
    return write_job_file(summary, worker_settings=worker_settings, job=job)


def _check_report(path: Path, strategy: str, rounds: int = 2) -> dict:
    report = json.loads(path.read_text())
    assert report["strategy"] == strategy
    assert report["state"] == "SUCCEEDED" and report["rounds"] == rounds
    assert set(report["kbs"]) == {"kb1", "kb2"}
    for metrics in report["kbs"].values():
        assert set(metrics) == REPORT_METRICS | {"by_degree"}
        buckets = metrics["by_degree"].values()
        assert sum(b["num_queries"] * b["mrr"] for b in buckets) / sum(b["num_queries"] for b in buckets) == pytest.approx(metrics["mrr"])
        assert 0 < metrics["mrr"] <= 1 and metrics["mr"] >= 1
        assert 0 <= metrics["hits@1"] <= metrics["hits@3"] <= metrics["hits@10"] <= 1
    return report


def test_run_writes_a_report(cli, ray_session, job_file, tmp_path):
    report_path = tmp_path / "r.json"
    result = cli("run", job_file, "--report", report_path)
    assert result.exit_code == 0, result.output
    report = _check_report(report_path, "cooperative")
    assert f"report written to {report_path}" in result.stdout
    for kb, metrics in report["kbs"].items():
        assert any(line.split()[:2] == [kb, "cooperative"] and f"{metrics['mrr']:.4f}" in line for line in result.stdout.splitlines()), result.stdout


def test_run_a_text_federation_from_a_job_file(cli, ray_session, tmp_path, tiny_encoder):
    """worker_type = "lmke" and "mtl-kgc" beside transe in one cooperative job file; progress shows the encoders' sequences/s."""
    summary = split_dataset(dataset_dir("umls"), tmp_path / "kbs", kbs=3, seed=0, names=["bi", "cross", "struct"], align="all")
    path = write_job_file(summary, job={"rounds": 2, "steps_per_round": 2, "checkpoint_every": 0, "eval_every": 0, "top_k": 4})
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    text = {"encoder": tiny_encoder, "max_length": 24, "batch_size": 4, "eval_batch_size": 256}
    types = {"bi": ("lmke", text), "cross": ("mtl-kgc", {**text, "tasks": ["lp", "rp"]}), "struct": ("transe", {"dim": 16, "batch_size": 64, "negatives": 8})}
    for kb in raw["kb"]:
        kb["worker_type"], kb["settings"] = types[kb["name"]]
    path.write_text(tomli_w.dumps(raw), encoding="utf-8")
    report_path = tmp_path / "report.json"
    result = cli("run", path, "--report", report_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["state"] == "SUCCEEDED" and set(report["kbs"]) == {"bi", "cross", "struct"}
    assert all(0 < m["mrr"] <= 1 for m in report["kbs"].values())
    assert "seq/s" in result.stderr and "triples/s" in result.stderr, result.stderr


def _checkpointed_rounds(data_dir: Path) -> int:
    records = [json.loads(path.read_text()) for path in (data_dir / "jobs").glob("*.json")] if (data_dir / "jobs").is_dir() else []
    return max((record["checkpoint_round"] for record in records), default=0)


@pytest.mark.slow  # two processes, each starting Ray: about 40 s
def test_run_with_a_data_dir_resumes_after_ctrl_c(tmp_path, worker_settings):
    """A long run over two sittings: Ctrl-C after some checkpoints, the same command again finishes the same job.

    Rounds of 30 steps, so that the rounds between the test seeing the second checkpoint and the
    signal landing (the test polls every 0.2 s; a loaded CI machine wakes it later) cannot end the job.
    """
    summary = split_dataset(NATIONS, tmp_path / "kbs", kbs=2, seed=1)
    rounds = 12
    job = write_job_file(summary, worker_settings=worker_settings, job={"rounds": rounds, "steps_per_round": 30, "checkpoint_every": 1, "eval_every": 0, "top_k": 4})
    data, report = tmp_path / "state", tmp_path / "report.json"
    command = [str(Path(sys.executable).with_name("kdmkb")), "run", str(job), "--data-dir", str(data), "--report", str(report)]
    env = {**os.environ, "NO_COLOR": "1"}
    first = started_as_in_a_terminal(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while _checkpointed_rounds(data) < 2 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()
        first.send_signal(signal.SIGINT)
        _, said = first.communicate(timeout=120)
    finally:
        first.kill()
    [record_path] = (data / "jobs").glob("*.json")
    interrupted = json.loads(record_path.read_text())
    assert interrupted["state"] == "RUNNING" and 2 <= interrupted["checkpoint_round"] < rounds, interrupted
    assert f"the job is kept in {data}; the same command resumes it" in said and first.returncode == 130, (first.returncode, said)
    assert not report.exists()

    second = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr
    assert f"resuming job {interrupted['job_id']}" in second.stderr and f"round {interrupted['checkpoint_round']}/{rounds}" in second.stderr
    assert json.loads(report.read_text())["job_id"] == interrupted["job_id"]
    _check_report(report, "cooperative", rounds)
    assert [path.name for path in (data / "jobs").glob("*.json")] == [record_path.name]  # no second job


def test_run_on_a_running_coordinator_with_another_strategy(cli, grpc_address, job_file, tmp_path):
    report_path = tmp_path / "r.json"
    result = cli("run", job_file, "--coordinator", grpc_address, "--strategy", "none", "--report", report_path)
    assert result.exit_code == 0, result.output
    _check_report(report_path, "none")


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (lambda text: text.replace("strategy =", "strateggy =", 1), ["strateggy", "Extra inputs are not permitted"]),
        (lambda text: text.replace("[job]\n", "[job]\nroundz = 3\n", 1), ["job.roundz"]),
        (lambda text: text.replace("rounds = 2", "rounds = 0", 1), ["job.rounds"]),
        (lambda text: text.replace('worker_type = "transe"\n', 'worker_type = "transe"\ncolour = "red"\n', 1), ["kb.0.colour"]),
        (lambda text: text.replace('name = "kb2"', 'name = "kb1"', 1), ["duplicate KB names: kb1"]),
        (lambda text: text + "\nthis is not toml\n", ["bad-", "not valid TOML"]),
    ],
    ids=["unknown-key", "unknown-job-key", "zero-rounds", "unknown-kb-key", "duplicate-kb", "syntax"],
)
def test_run_rejects_a_bad_job_file(cli, job_file, tmp_path, edit, fragments):
    bad = job_file.with_name(f"bad-{tmp_path.name}.toml")
    text = job_file.read_text()
    assert edit(text) != text
    bad.write_text(edit(text), encoding="utf-8")
    report_path = tmp_path / "r.json"
    _assert_failed(cli("run", bad, "--report", report_path), *fragments)
    assert not report_path.exists()


def test_run_rejects_a_missing_job_file(cli, tmp_path):
    _assert_failed(cli("run", tmp_path / "nope.toml"), "nope.toml", "job file not found")


def test_run_reports_a_coordinator_error(cli, ray_session, job_file, tmp_path):
    """A job file the coordinator refuses (a KB folder that does not exist) fails with the gRPC status and details."""
    bad = job_file.with_name(f"missing-{tmp_path.name}.toml")
    bad.write_text(job_file.read_text().replace('data = "kb2"', 'data = "kb-missing"', 1), encoding="utf-8")
    _assert_failed(cli("run", bad), "INVALID_ARGUMENT", "data_dir", "kb-missing")


# -- commands against a running coordinator -----------------------------------------------------


def test_status_predict_and_export_against_a_running_coordinator(cli, grpc_address, finished_job, kb_names, tmp_path):
    import numpy as np

    listing = cli("status", "--coordinator", grpc_address)
    assert listing.exit_code == 0, listing.output
    assert any(line.startswith(finished_job.job_id) and "SUCCEEDED" in line for line in listing.stdout.splitlines())

    one = cli("status", finished_job.job_id, "--coordinator", grpc_address)
    assert one.exit_code == 0, one.output
    for kb in kb_names:
        assert any(line.split()[:2] == [kb, "cooperative"] for line in one.stdout.splitlines()), one.stdout

    predicted = cli("predict", kb_names[0], "usa", "embassy", "-k", 3, "--coordinator", grpc_address)
    assert predicted.exit_code == 0, predicted.output
    lines = predicted.stdout.splitlines()
    assert [line.split(".")[0].strip() for line in lines] == ["1", "2", "3"]

    out = tmp_path / "left.npz"
    exported = cli("export", kb_names[0], "--out", out, "--coordinator", grpc_address)
    assert exported.exit_code == 0, exported.output
    arrays = np.load(out)
    assert arrays["entity_vectors"].shape[0] == len(arrays["entity_names"]) > 0
    assert arrays["relation_vectors"].shape[0] == len(arrays["relation_names"]) > 0
    assert f"wrote {len(arrays['entity_names'])} entity vectors" in exported.stdout

    _assert_failed(cli("predict", "nope", "usa", "embassy", "--coordinator", grpc_address), "NOT_FOUND", "'nope'")
    _assert_failed(cli("status", "nope", "--coordinator", grpc_address), "NOT_FOUND", "job_id")


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_read_commands_in_text_and_json(cli, grpc_address, finished_job, kb_names):
    """kbs, jobs, status, evaluate and predict (tails and heads) on the session's finished job, as text and as --json."""
    from kdmkb.services.client import CoordinatorClient

    kbs = _json(cli("kbs", "--json", "-c", grpc_address))
    listed = {kb["name"]: kb for kb in kbs}
    assert set(kb_names) <= set(listed) and all(listed[kb]["healthy"] and listed[kb]["num_train"] > 0 for kb in kb_names)
    text = cli("kbs", "-c", grpc_address).stdout.splitlines()
    assert any(line.split()[:2] == [kb_names[0], "transe"] and "healthy" in line for line in text), text

    jobs = {job["job_id"]: job for job in _json(cli("jobs", "--json", "-c", grpc_address))}
    assert jobs[finished_job.job_id]["state"] == "JOB_STATE_SUCCEEDED" and jobs[finished_job.job_id]["kbs"] == list(kb_names)
    assert any(line.startswith(finished_job.job_id) and "SUCCEEDED" in line for line in cli("jobs", "-c", grpc_address).stdout.splitlines())
    one = _json(cli("status", finished_job.job_id, "--json", "-c", grpc_address))
    assert one["report"]["kbs"][kb_names[0]]["mrr"] == pytest.approx(finished_job.job.test_metrics[kb_names[0]].mrr)

    valid = _json(cli("evaluate", kb_names[0], "--split", "valid", "--json", "-c", grpc_address))
    assert valid["split"] == "valid" and 0 < valid["mrr"] <= 1 and valid["hits@1"] <= valid["hits@10"]
    assert f"{kb_names[0]} valid: mrr {valid['mrr']:.4f}" in cli("evaluate", kb_names[0], "--split", "valid", "-c", grpc_address).stdout
    _assert_failed(cli("evaluate", kb_names[0], "--split", "train", "-c", grpc_address), "INVALID_ARGUMENT", "split")

    client = CoordinatorClient(grpc_address)
    entities, vectors = client.embeddings(kb_names[0])["entity"]
    relations, relation_vectors = client.embeddings(kb_names[0])["relation"]
    client.close()
    r = relation_vectors[relations.index("embassy")]
    tails = _json(cli("predict", kb_names[0], "--head", "usa", "--relation", "embassy", "-k", 3, "--json", "-c", grpc_address))
    heads = _json(cli("predict", kb_names[0], "--tail", "uk", "-r", "embassy", "-k", 3, "--json", "-c", grpc_address))
    # TransE scores -||h + r - t||_1: the ranking the exported vectors give
    by_tail = np.argsort(np.abs(vectors[entities.index("usa")] + r - vectors).sum(axis=1), kind="stable")[:3]
    by_head = np.argsort(np.abs(vectors + r - vectors[entities.index("uk")]).sum(axis=1), kind="stable")[:3]
    assert [p["entity"] for p in tails] == [entities[i] for i in by_tail]
    assert [p["entity"] for p in heads] == [entities[i] for i in by_head]
    positional = cli("predict", kb_names[0], "usa", "embassy", "-k", 3, "-c", grpc_address).stdout.splitlines()
    assert [line.split()[1] for line in positional] == [p["entity"] for p in tails]
    _assert_failed(cli("predict", kb_names[0], "--head", "usa", "--tail", "uk", "-r", "embassy", "-c", grpc_address), "--head, --tail", code=Exit.USAGE)


def test_watch_and_stop(cli, stub, registered, grpc_address, finished_job, job_settings, kb_names):
    """watch follows a job to its end (exit 0 when it succeeded, 5 when it was stopped); stop stops a job."""
    from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
    from kdmkb.services.wire import to_struct

    done = cli("watch", finished_job.job_id, "-c", grpc_address)
    assert done.exit_code == 0 and done.stdout.splitlines()[-1].startswith("SUCCEEDED"), done.output
    events = [json.loads(line) for line in cli("watch", finished_job.job_id, "--json", "-c", grpc_address).stdout.splitlines()]
    assert events[-1]["state"] == "JOB_STATE_SUCCEEDED" and events[-1]["round"] == finished_job.job.total_rounds

    job = stub.CreateJob(pb.CreateJobRequest(strategy="none", kbs=list(kb_names), settings=to_struct(job_settings))).job
    stopped = _json(cli("stop", job.job_id, "--json", "-c", grpc_address))
    assert stopped["job_id"] == job.job_id and stopped["state"] == "JOB_STATE_STOPPED"
    assert stub.GetJob(pb.GetJobRequest(job_id=job.job_id)).job.state == pb.JOB_STATE_STOPPED
    watched = cli("watch", job.job_id, "-c", grpc_address)
    assert watched.exit_code == Exit.JOB_FAILED and watched.stdout.startswith("STOPPED"), watched.output
    _assert_failed(cli("stop", "nope", "-c", grpc_address), "NOT_FOUND", "job_id")


def test_exit_codes_tell_mistakes_apart(cli, tmp_path, job_file):
    """Usage 2, bad input 3, no coordinator 4: each one red line that says what to do, no traceback."""
    assert cli("jobs", "--no-such-option").exit_code == Exit.USAGE
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    for command in (["jobs"], ["kbs", "--json"], ["run", job_file]):
        _assert_failed(cli(*command, "-c", address), f"coordinator unreachable at {address}", "kdmkb serve", code=Exit.UNREACHABLE)
    _assert_failed(cli("run", job_file.parent), "is a folder", "job.toml")
    _assert_failed(cli("export", "kb1", "--out", tmp_path / "missing" / "kb1.npz", "-c", address), "--out", "does not exist", code=Exit.USAGE)
    _assert_failed(cli("run", job_file, "--report", tmp_path / "missing" / "r.json"), "--report", "does not exist", code=Exit.USAGE)  # before the job, not after
    _assert_failed(cli("run", job_file, "--strategy", "bogus"), "strategy: unknown strategy 'bogus'", "cooperative")


def test_check_validates_locally_and_names_each_kb(cli, job_file, tmp_path, monkeypatch):
    """check reads the job file, every KB folder and every alignment without starting Ray; each problem names its KB."""
    import shutil

    def no_ray(*args, **kwargs):
        raise AssertionError("check started Ray")

    monkeypatch.setattr("kdmkb.services.ray_runtime.ensure_ray", no_ray)
    good = cli("check", job_file)
    assert good.exit_code == 0 and good.stdout.splitlines()[-1] == f"{job_file}: ok", good.output
    assert _json(cli("check", job_file, "--json"))["alignments"][0]["kbs"] == ["kb1", "kb2"]

    copy = shutil.copytree(job_file.parent, tmp_path / "kbs")
    train = (copy / "kb2" / "train.tsv").read_text(encoding="utf-8")
    (copy / "kb2" / "train.tsv").write_text(train + "usa\tembassy\n", encoding="utf-8")
    [entities] = (copy / "alignments").glob("*.entities.tsv")
    entities.write_text(entities.read_text(encoding="utf-8") + "atlantis\tusa\n", encoding="utf-8")
    bad = cli("check", copy / "job.toml")
    assert bad.exit_code == Exit.BAD_INPUT, bad.output
    assert "kb 'kb2'" in bad.stderr and "train.tsv line" in bad.stderr and "expected 3 tab-separated columns" in bad.stderr
    found = json.loads(cli("check", copy / "job.toml", "--json").stdout)
    assert found["ok"] is False and list(found["kbs"]) == ["kb1"] and len(found["errors"]) == 1, found  # kb2's alignment waits for kb2

    (copy / "kb2" / "train.tsv").write_text(train, encoding="utf-8")
    aligned = cli("check", copy / "job.toml")
    assert aligned.exit_code == Exit.BAD_INPUT and "alignment[0] 'kb1' <-> 'kb2'" in aligned.stderr and "'atlantis'" in aligned.stderr, aligned.output
    _assert_failed(cli("check", copy), "is a folder", "job.toml")
    raw = tomllib.loads((copy / "job.toml").read_text(encoding="utf-8"))
    raw["kb"][1]["settings"]["dim"] = -1
    (copy / "settings.toml").write_text(tomli_w.dumps(raw), encoding="utf-8")
    _assert_failed(cli("check", copy / "settings.toml"), "kb 'kb2': kb[1].settings.dim: Input should be greater than 0")


def test_config_show_lists_every_setting_and_its_schema(cli):
    from kdmkb.kb_worker.worker_types import WORKER_TYPES
    from kdmkb.services.config import JobSettings

    shown = cli("config", "show")
    assert shown.exit_code == 0, shown.output
    for name, field in JobSettings.model_fields.items():
        assert f"  {name} (" in shown.stdout and field.description in shown.stdout, name
    assert "worker types: " in shown.stdout and "transe" in shown.stdout
    assert _json(cli("config", "show", "--json")) == json.loads(json.dumps(JobSettings.model_json_schema()))
    transe = cli("config", "show", "transe")
    assert "worker type 'transe'" in transe.stdout and all(f"  {name} (" in transe.stdout for name in WORKER_TYPES.get("transe").settings_model.model_fields)
    assert "rounds" not in _json(cli("config", "show", "cooperative", "--json"))["properties"]
    _assert_failed(cli("config", "show", "nope"), "'nope' is neither a worker type", "transe", "cooperative")


def test_version(cli):
    from importlib.metadata import version

    result = cli("--version")
    assert result.exit_code == 0 and result.stdout == f"kdmkb {version('kdmkb')}\n"


@pytest.mark.slow  # two new workers start, then a job runs until Ctrl-C
def test_ctrl_c_on_a_remote_run_leaves_the_job_running(grpc_address, stub, tmp_path, worker_settings):
    """The installed script: Ctrl-C while following a job on a running coordinator says how to follow or stop it; the job goes on."""
    from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb

    summary = split_dataset(NATIONS, tmp_path / "kbs", kbs=2, seed=3, names=["ctrlc1", "ctrlc2"])
    job = write_job_file(summary, worker_settings=worker_settings, job={"rounds": 100_000, "steps_per_round": 3, "checkpoint_every": 0, "eval_every": 0})
    before = {j.job_id for j in stub.ListJobs(pb.ListJobsRequest()).jobs}
    script = Path(sys.executable).with_name("kdmkb")
    process = started_as_in_a_terminal([str(script), "run", str(job), "-c", grpc_address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
    running = []
    try:
        deadline = time.monotonic() + 360  # two new workers start first: minutes on a busy machine
        while not running and process.poll() is None and time.monotonic() < deadline:
            running = [j.job_id for j in stub.ListJobs(pb.ListJobsRequest()).jobs if j.job_id not in before and j.state == pb.JOB_STATE_RUNNING and j.round > 0]
            time.sleep(0.5)
        assert running and process.poll() is None, process.returncode
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
        [job_id] = running
        assert process.returncode == Exit.INTERRUPTED, stderr
        assert f"job {job_id} keeps running on the coordinator at {grpc_address}" in stderr and f"kdmkb stop {job_id} -c {grpc_address}" in stderr, stderr
        assert "Traceback" not in stderr
        assert stub.GetJob(pb.GetJobRequest(job_id=job_id)).job.state == pb.JOB_STATE_RUNNING
        stopped = CliRunner().invoke(app, ["stop", job_id, "-c", grpc_address])
        assert stopped.exit_code == 0 and "STOPPED" in stopped.stdout, stopped.output
    finally:
        process.kill()
        for job_id in running:
            stub.StopJob(pb.StopJobRequest(job_id=job_id))


def test_the_readme_documents_every_exit_code():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| exit code | meaning |", 1)[1].split("\n\n", 1)[0]
    assert [int(row.split("|")[1]) for row in table.strip().splitlines()[1:]] == sorted(int(code) for code in Exit)

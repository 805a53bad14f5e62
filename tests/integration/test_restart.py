"""Coordinator state on disk: KBs, alignments and jobs survive a restart; interrupted jobs resume from checkpoints."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from kdmkb.coordinator.service import Coordinator
from kdmkb.kb_worker import checkpoints
from kdmkb.kb_worker.worker import KBWorker
from kdmkb.services.errors import DataError

TIMEOUT = 180.0
LONG_ROUNDS = 12


def _rounds_run(job_id: str) -> int:
    """Rounds this process's coordinators have run for a job (the round-duration histogram's count)."""
    return int(REGISTRY.get_sample_value("kdmkb_coordinator_round_duration_seconds_count", {"job": job_id}) or 0)


def _interrupt_after(coordinator: Coordinator, job_id: str, rounds: int) -> None:
    """Follows the job until it has completed ``rounds`` rounds, then shuts the coordinator down (a crash, for the job)."""
    events = coordinator.watch_job(job_id, poll_seconds=0.05)
    try:
        for event in events:
            assert event.state == "RUNNING", (event.kind, event.state, event.message)
            if event.round >= rounds:
                break
    finally:
        events.close()
    coordinator.shutdown()


def _register(coordinator: Coordinator, nations_split, kb_names, alignment_files, settings: dict) -> None:
    for name in kb_names:
        coordinator.register_kb(name, str(nations_split.out_dir / name), "transe", settings)
    entities, relations = alignment_files
    coordinator.register_alignment(*kb_names, str(entities), str(relations))


def _without_busy(kbs: list[dict]) -> list[dict]:
    """What a restart must keep of each KB (its worker, metrics port and current job are new)."""
    volatile = {"busy_with_job", "metrics_address"}
    return [{key: value for key, value in kb.items() if key not in volatile} for kb in kbs]


def _record(data: Path, job_id: str) -> dict:
    return json.loads((data / "jobs" / f"{job_id}.json").read_text())


@pytest.mark.slow  # two coordinators re-opening their KBs: about 15 s
def test_jobs_survive_a_restart_and_running_ones_resume(ray_session, tmp_path, nations_split, kb_names, alignment_files, worker_settings, job_settings):
    data = tmp_path / "state"
    settings = {**job_settings, "eval_every": 0, "checkpoint_every": 1}
    first = Coordinator(data)
    try:
        _register(first, nations_split, kb_names, alignment_files, worker_settings)
        kbs_before = _without_busy(first.list_kbs())
        alignments_before = dict(first._alignments)
        done = first.create_job("cooperative", list(kb_names), {**settings, "rounds": 2})
        first.start_job(done.job_id)
        assert first.wait(done.job_id, TIMEOUT).state == "SUCCEEDED", done.error
        done_metrics = json.loads(json.dumps(done.test_metrics))
        waiting = first.create_job("none", [kb_names[0]], {**settings, "rounds": 2})
        long = first.create_job("cooperative", list(kb_names), {**settings, "rounds": LONG_ROUNDS})
        first.start_job(long.job_id)
        _interrupt_after(first, long.job_id, 2)
    finally:
        first.shutdown()

    # what the crashed coordinator left: a RUNNING job with a checkpoint of its last round
    record = _record(data, long.job_id)
    assert record["state"] == "RUNNING"
    interrupted_round = record["round"]
    assert 2 <= interrupted_round < LONG_ROUNDS
    assert record["checkpoint_round"] == interrupted_round
    assert sorted(map(int, record["checkpoints"])) == list(range(max(1, interrupted_round - 2), interrupted_round + 1))  # the last 3 kept
    for name in kb_names:
        kept = sorted(path.name for path in (data / "checkpoints" / long.job_id / name).glob("round-*.pt"))
        assert kept == [checkpoints.path("", round_).name for round_ in sorted(map(int, record["checkpoints"]))]
    assert _rounds_run(long.job_id) == interrupted_round

    second = Coordinator(data)
    try:
        assert _without_busy(second.list_kbs()) == kbs_before  # (the resumed job may be using them)
        assert second._alignments == alignments_before
        jobs = {job.job_id: job for job in second.list_jobs()}
        assert set(jobs) == {done.job_id, waiting.job_id, long.job_id}
        assert jobs[done.job_id].state == "SUCCEEDED" and jobs[done.job_id].round == 2
        assert jobs[done.job_id].test_metrics == done_metrics and set(done_metrics) == set(kb_names)
        assert jobs[waiting.job_id].state == "CREATED"
        # what `kdmkb run --data-dir` asks for: the same job, unfinished, is found rather than created again
        assert second.create_job("cooperative", list(kb_names), {**settings, "rounds": LONG_ROUNDS}, resume_unfinished=True).job_id == long.job_id

        resumed = second.wait(long.job_id, TIMEOUT)
        assert resumed.state == "SUCCEEDED", resumed.error
        assert resumed.round == LONG_ROUNDS
        assert set(resumed.test_metrics) == set(kb_names) and all(0 < m["mrr"] <= 1 for m in resumed.test_metrics.values())
        # resumed at its checkpoint: every round ran once in all (from scratch would run the first ones twice)
        assert _rounds_run(long.job_id) == LONG_ROUNDS
        for name in kb_names:
            assert resumed.progress[name]["steps"] == LONG_ROUNDS * settings["steps_per_round"]
            assert resumed.progress[name]["soft_label_bytes_sent"] > 0
        assert _record(data, long.job_id)["state"] == "SUCCEEDED"

        # a job created before the restart runs on the re-opened KBs
        second.start_job(waiting.job_id)
        assert second.wait(waiting.job_id, TIMEOUT).state == "SUCCEEDED"
        # a succeeded job is not resumed: the same settings make a new job
        assert second.create_job("none", [kb_names[0]], {**settings, "rounds": 2}, resume_unfinished=True).job_id not in jobs
    finally:
        second.shutdown()


def _checkpointed_and_interrupted(data: Path, nations_split, kb_names, alignment_files, worker_settings, job_settings) -> tuple[str, dict]:
    """A cooperative job checkpointing every round, its coordinator shut down after 2 rounds: its id and stored record."""
    first = Coordinator(data)
    try:
        _register(first, nations_split, kb_names, alignment_files, worker_settings)
        job = first.create_job("cooperative", list(kb_names), {**job_settings, "rounds": LONG_ROUNDS, "eval_every": 0, "checkpoint_every": 1})
        first.start_job(job.job_id)
        _interrupt_after(first, job.job_id, 2)
    finally:
        first.shutdown()
    return job.job_id, _record(data, job.job_id)


@pytest.mark.slow  # two coordinators re-opening their KBs: about 15 s
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    ray_session, tmp_path, nations_split, kb_names, alignment_files, worker_settings, job_settings, caplog
):
    data = tmp_path / "state"
    job_id, record = _checkpointed_and_interrupted(data, nations_split, kb_names, alignment_files, worker_settings, job_settings)
    latest = record["checkpoint_round"]
    checkpoint = checkpoints.path(data / "checkpoints" / job_id / kb_names[0], latest)
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])

    with caplog.at_level(logging.ERROR, logger="kdmkb.coordinator.jobs"):
        second = Coordinator(data)
        try:
            resumed = second.wait(job_id, TIMEOUT)
        finally:
            second.shutdown()
    assert resumed.state == "SUCCEEDED", resumed.error
    assert any(str(checkpoint) in message and "corrupt checkpoint" in message for message in caplog.messages), caplog.messages
    # the second coordinator ran every round from the previous checkpoint on, the first every round up to its crash
    assert _rounds_run(job_id) == record["round"] + LONG_ROUNDS - (latest - 1)
    assert resumed.progress[kb_names[0]]["steps"] == LONG_ROUNDS * job_settings["steps_per_round"]


@pytest.mark.slow  # two coordinators re-opening their KBs: about 15 s
def test_a_job_whose_every_checkpoint_is_refused_fails_and_keeps_them(
    ray_session, tmp_path, nations_split, kb_names, alignment_files, worker_settings, job_settings
):
    data = tmp_path / "state"
    job_id, record = _checkpointed_and_interrupted(data, nations_split, kb_names, alignment_files, worker_settings, job_settings)
    folder = data / "checkpoints" / job_id / kb_names[0]
    damaged = sorted(folder.iterdir())
    assert len(damaged) >= 2
    for checkpoint in damaged:
        checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    kept = {path: path.read_bytes() for path in (data / "checkpoints" / job_id).rglob("*.pt")}

    second = Coordinator(data)
    try:
        failed = second.wait(job_id, TIMEOUT)
    finally:
        second.shutdown()
    assert failed.state == "FAILED"
    assert failed.error.startswith("DataError: no checkpoint of this job can be loaded")
    assert all(str(path) in failed.error for path in damaged), failed.error
    assert failed.round == record["round"]
    # nothing trained and nothing written over: the owner decides what becomes of them
    assert _rounds_run(job_id) == record["round"]
    assert {path: path.read_bytes() for path in (data / "checkpoints" / job_id).rglob("*.pt")} == kept


# -- KBWorker.load ----------------------------------------------------------------------------


@pytest.fixture
def trained_worker(nations_split, kb_names, worker_settings):
    worker = KBWorker(kb_names[0], nations_split.out_dir / kb_names[0], "transe", worker_settings)
    worker.configure("job-ck", 0)
    worker.train(0, 3)
    return worker


def _weights(worker: KBWorker) -> dict[str, np.ndarray]:
    return {kind: vectors.copy() for kind, (_, vectors) in worker.export().items()}


def test_checkpoint_round_trip(trained_worker, tmp_path):
    path = Path(trained_worker.save(tmp_path / "ck", 1))
    assert path == checkpoints.path(tmp_path / "ck", 1)
    saved, saved_step = _weights(trained_worker), trained_worker.step
    trained_worker.train(1, 3)
    after_one_more = _weights(trained_worker)
    assert trained_worker.step == saved_step + 3
    assert not np.array_equal(after_one_more["entity"], saved["entity"])
    assert trained_worker.load(tmp_path / "ck", 1) == saved_step
    assert trained_worker.step == saved_step
    for kind, vectors in _weights(trained_worker).items():
        np.testing.assert_array_equal(vectors, saved[kind])
    trained_worker.train(1, 3)  # the restored optimiser, batch order and random state redo the round exactly
    for kind, vectors in _weights(trained_worker).items():
        np.testing.assert_array_equal(vectors, after_one_more[kind])


def test_only_the_last_checkpoints_are_kept(trained_worker, tmp_path):
    for round_ in range(1, 6):
        trained_worker.save(tmp_path / "ck", round_, keep=3)
    assert sorted(path.name for path in (tmp_path / "ck").iterdir()) == [checkpoints.path("", r).name for r in (3, 4, 5)]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]), "corrupt checkpoint"),
        (lambda path: path.write_bytes(b"not a checkpoint at all" * 10), "corrupt checkpoint"),
        (lambda path: path.write_bytes(b""), "corrupt checkpoint"),
        (lambda path: torch.save({"model": {}}, path), "not a kdmkb checkpoint"),
        (lambda path: path.unlink(), "checkpoint not found"),
    ],
    ids=["truncated", "garbage", "empty", "foreign", "missing"],
)
def test_a_bad_checkpoint_raises_and_changes_nothing(trained_worker, tmp_path, damage, message):
    trained_worker.save(tmp_path / "ck", 1)
    path = checkpoints.path(tmp_path / "ck", 1)
    trained_worker.train(1, 3)
    before, step, model, student = _weights(trained_worker), trained_worker.step, trained_worker.model, trained_worker.student
    damage(path)
    with pytest.raises(DataError, match=message):
        trained_worker.load(tmp_path / "ck", 1)
    assert trained_worker.step == step and trained_worker.model is model and trained_worker.student is student
    for kind, vectors in _weights(trained_worker).items():
        np.testing.assert_array_equal(vectors, before[kind])


def test_a_checkpoint_of_other_settings_is_refused(trained_worker, tmp_path, nations_split, kb_names, worker_settings):
    trained_worker.save(tmp_path / "ck", 1)
    other = KBWorker(kb_names[0], nations_split.out_dir / kb_names[0], "transe", {**worker_settings, "dim": 8})
    other.configure("job-ck", 0)
    before = _weights(other)
    with pytest.raises(DataError, match="other settings"):
        other.load(tmp_path / "ck", 1)
    np.testing.assert_array_equal(_weights(other)["entity"], before["entity"])


def test_a_checkpoint_written_before_a_setting_existed_is_taken_at_its_default(trained_worker, tmp_path, nations_split, kb_names, worker_settings):
    """A release that adds a setting (at a default that keeps the old behaviour) must not strand its users' checkpoints;
    set to another value, the same checkpoint is refused."""
    trained_worker.save(tmp_path / "ck", 1)
    path = checkpoints.path(tmp_path / "ck", 1)
    state = torch.load(path, weights_only=True)
    del state["settings"]["regularization"]  # as written before the setting existed
    torch.save(state, path)
    trained_worker.train(1, 3)
    restored = KBWorker(kb_names[0], nations_split.out_dir / kb_names[0], "transe", worker_settings)
    restored.configure("job-ck", 0)
    assert restored.load(tmp_path / "ck", 1) == state["step"]
    other = KBWorker(kb_names[0], nations_split.out_dir / kb_names[0], "transe", {**worker_settings, "regularization": 0.1})
    other.configure("job-ck", 0)
    with pytest.raises(DataError, match="other settings"):
        other.load(tmp_path / "ck", 1)
    state["settings"]["retired_setting"] = 1  # a setting since removed
    torch.save(state, path)
    with pytest.raises(DataError, match="other settings"):
        restored.load(tmp_path / "ck", 1)


def test_a_checkpoint_of_another_kb_is_refused(trained_worker, tmp_path, nations_split, kb_names, worker_settings):
    """The nations halves have vocabularies of one size: the weights would fit, the KB is another."""
    trained_worker.save(tmp_path / "ck", 1)
    other = KBWorker(kb_names[1], nations_split.out_dir / kb_names[1], "transe", worker_settings)
    other.configure("job-ck", 0)
    before = _weights(other)
    with pytest.raises(DataError, match=f"checkpoint is of KB '{trained_worker.name}', not of KB '{kb_names[1]}'"):
        other.load(tmp_path / "ck", 1)
    np.testing.assert_array_equal(_weights(other)["entity"], before["entity"])


def test_a_shutdown_that_ends_a_round_in_flight_leaves_its_job_resumable(ray_session, tmp_path, nations_split, kb_names, alignment_files, worker_settings, job_settings, monkeypatch):
    """Ctrl-C in a round longer than the shutdown's wait: the workers end under the round, and the job must not fail for it."""
    from kdmkb.coordinator import service

    monkeypatch.setattr(service, "SHUTDOWN_WAIT_SECONDS", 0.2)
    data = tmp_path / "state"
    coordinator = Coordinator(data)
    try:
        _register(coordinator, nations_split, kb_names, alignment_files, worker_settings)
        job = coordinator.create_job("cooperative", list(kb_names), {**job_settings, "rounds": 2, "steps_per_round": 5000, "eval_every": 0, "checkpoint_every": 1})
        coordinator.start_job(job.job_id)
        events = coordinator.watch_job(job.job_id, poll_seconds=0.05)
        try:
            assert next(event for event in events if event.kind == "started")
        finally:
            events.close()
    finally:
        coordinator.shutdown()
    coordinator._runners[job.job_id].join(TIMEOUT)
    record = _record(data, job.job_id)
    assert (record["state"], record["error"], record["round"]) == ("RUNNING", "", 0)

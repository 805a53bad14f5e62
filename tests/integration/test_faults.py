"""Faults the coordinator survives, each injected into a real local cluster: damaged state files and checkpoints, dead KB actors, busy ports."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import grpc
import pytest

from kdmkb.coordinator.service import Coordinator
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from kdmkb.services.wire import from_struct, to_struct

TIMEOUT = 180.0
LISTENING = re.compile(r"coordinator listening on (\S+);")


class Served:
    """A `kdmkb serve` process on 127.0.0.1:0 in a session of its own, so that SIGKILL takes its local Ray down with it."""

    def __init__(self, data_dir, *options: str) -> None:
        command = [sys.executable, "-m", "kdmkb", "serve", "--address", "127.0.0.1:0", "--metrics-port", "0", "--data-dir", str(data_dir), *options]
        env = {**os.environ, "KDMKB_LOG_LEVEL": "WARNING"}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        for line in self.process.stderr:
            match = LISTENING.search(line)
            if match:
                self.address = match.group(1)
                break
        else:
            raise AssertionError(f"kdmkb serve ended before listening (exit code {self.process.wait()})")
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.CoordinatorStub(self.channel)

    def kill(self) -> None:
        """SIGKILL to the coordinator and every process of its session (its Ray): a crash, not a shutdown."""
        self.channel.close()
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)

    def stop(self) -> None:
        self.channel.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)


def _register(coordinator: Coordinator, nations_split, kb_names, alignment_files, settings: dict) -> None:
    for name in kb_names:
        coordinator.register_kb(name, str(nations_split.out_dir / name), "transe", settings)
    coordinator.register_alignment(*kb_names, *map(str, alignment_files))


def test_a_corrupt_state_file_is_set_aside_and_the_rest_served(ray_session, tmp_path, nations_split, kb_names, alignment_files, worker_settings, job_settings, caplog):
    data = tmp_path / "state"
    first = Coordinator(data)
    try:
        _register(first, nations_split, kb_names, alignment_files, worker_settings)
        kept = first.create_job("none", [kb_names[0]], job_settings)
        damaged = first.create_job("none", [kb_names[1]], job_settings)
    finally:
        first.shutdown()
    record = data / "jobs" / f"{damaged.job_id}.json"
    record.write_bytes(record.read_bytes()[:40])
    (data / "kbs.json").write_text('{"left": {"name": "left", "data_dir"', encoding="utf-8")

    with caplog.at_level(logging.ERROR, logger="kdmkb.coordinator.store"):
        second = Coordinator(data)
    try:
        assert [job.job_id for job in second.list_jobs()] == [kept.job_id]
        assert second.list_kbs() == []  # its registrations were in the damaged file
        assert second._alignments == {}  # alignments of KBs that are gone are not restored
        assert not record.exists() and not (data / "kbs.json").exists()
        for name in (record.name, "kbs.json"):
            assert any(name in message and "set aside" in message for message in caplog.messages), caplog.messages
        assert len(list(record.parent.glob(f"{record.name}.corrupt-*"))) == 1
        assert len(list(data.glob("kbs.json.corrupt-*"))) == 1
        # it serves: a KB registered again runs the job that survived
        _register(second, nations_split, kb_names, alignment_files, worker_settings)
        second.start_job(kept.job_id)
        assert second.wait(kept.job_id, TIMEOUT).state == "SUCCEEDED"
    finally:
        second.shutdown()


def _metrics(job) -> dict:
    """A job's test metrics without their timing."""
    return {kb: {key: value for key, value in metrics.items() if key != "seconds"} for kb, metrics in job.test_metrics.items()}


def _follow(coordinator: Coordinator, job_id: str, rounds: int) -> None:
    events = coordinator.watch_job(job_id, poll_seconds=0.05)
    try:
        for event in events:
            if event.round >= rounds:
                break
    finally:
        events.close()


def test_a_stopped_job_resumes_and_ends_as_an_uninterrupted_one(ray_session, tmp_path, nations_split, kb_names, alignment_files, worker_settings, job_settings):
    """StopJob checkpoints the round it stopped at; StartJob resumes from there, and every random draw is the one an uninterrupted run makes."""
    coordinator = Coordinator(tmp_path / "state")
    try:
        _register(coordinator, nations_split, kb_names, alignment_files, worker_settings)
        settings = {**job_settings, "rounds": 12, "eval_every": 0, "checkpoint_every": 5}
        whole = coordinator.create_job("cooperative", list(kb_names), settings)
        coordinator.start_job(whole.job_id)
        assert coordinator.wait(whole.job_id, TIMEOUT).state == "SUCCEEDED", whole.error

        stopped = coordinator.create_job("cooperative", list(kb_names), settings)
        coordinator.start_job(stopped.job_id)
        _follow(coordinator, stopped.job_id, 2)
        assert coordinator.stop_job(stopped.job_id).state == "STOPPED"
        assert 2 <= stopped.checkpoint_round == stopped.round < settings["rounds"]
        coordinator.start_job(stopped.job_id)
        resumed = coordinator.wait(stopped.job_id, TIMEOUT)
        assert resumed.state == "SUCCEEDED", resumed.error
        assert _metrics(resumed) == _metrics(whole)
    finally:
        coordinator.shutdown()


def _served_job(stub, settings: dict) -> pb.Job:
    job = stub.CreateJob(pb.CreateJobRequest(strategy="cooperative", kbs=["left", "right"], settings=to_struct(settings)), timeout=TIMEOUT).job
    stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=TIMEOUT)
    return job


def _finished(stub, job_id: str) -> pb.Job:
    for _ in stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=TIMEOUT):
        pass
    return stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=TIMEOUT).job


def _served_metrics(job: pb.Job) -> dict:
    return {kb: (m.mrr, m.mr, m.hits_at_1, m.hits_at_3, m.hits_at_10, m.num_queries) for kb, m in job.test_metrics.items()}


@pytest.mark.slow  # two `kdmkb serve` processes, each starting its own Ray: about a minute
def test_a_job_resumed_after_sigkill_ends_as_an_uninterrupted_one(tmp_path, nations_split, kb_names, alignment_files, worker_settings, job_settings):
    data = tmp_path / "state"
    settings = {**job_settings, "rounds": 16, "eval_every": 0, "checkpoint_every": 3}
    first = Served(data, "--data-root", str(nations_split.out_dir))  # the KB folders and alignments
    try:
        for name in kb_names:
            request = pb.RegisterKBRequest(name=name, data_dir=str(nations_split.out_dir / name), worker_type="transe", settings=to_struct(worker_settings))
            first.stub.RegisterKB(request, timeout=TIMEOUT)
        entities, relations = map(str, alignment_files)
        first.stub.RegisterAlignment(pb.RegisterAlignmentRequest(kb_a=kb_names[0], kb_b=kb_names[1], entities_path=entities, relations_path=relations), timeout=TIMEOUT)
        job = _served_job(first.stub, settings)
        for event in first.stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT):
            if event.round >= 4:  # a checkpoint written, and a round since
                break
    finally:
        first.kill()
    record = json.loads((data / "jobs" / f"{job.job_id}.json").read_text())
    assert record["state"] == "RUNNING" and 3 <= record["checkpoint_round"] < record["round"] < settings["rounds"], record

    second = Served(data, "--data-root", str(nations_split.out_dir))
    try:
        resumed = _finished(second.stub, job.job_id)
        assert resumed.state == pb.JOB_STATE_SUCCEEDED, resumed.error
        assert from_struct(resumed.settings) == from_struct(job.settings)
        uninterrupted = _finished(second.stub, _served_job(second.stub, settings).job_id)
        assert uninterrupted.state == pb.JOB_STATE_SUCCEEDED, uninterrupted.error
        assert _served_metrics(resumed) == _served_metrics(uninterrupted)
    finally:
        second.stop()

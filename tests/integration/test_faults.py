"""Faults the coordinator survives, each injected into a real local cluster: damaged state files and checkpoints, dead KB actors, busy ports."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import grpc
import pytest

from kdmkb.coordinator.server import start_server
from kdmkb.coordinator.service import Coordinator
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from kdmkb.services.errors import PreconditionError
from kdmkb.services.wire import from_struct, to_struct

TIMEOUT = 180.0
LISTENING = re.compile(r"coordinator listening on (\S+);")


class Served:
    """A `kdmkb serve` process on 127.0.0.1:0 in a session of its own, so that SIGKILL takes its local Ray down with it."""

    def __init__(self, data_dir, *options: str) -> None:
        command = [sys.executable, "-m", "kdmkb", "serve", "--address", "127.0.0.1:0", "--metrics-port", "0", "--data-dir", str(data_dir), *options]
        env = {**os.environ, "KDMKB_LOG_LEVEL": "WARNING"}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        said = []
        for line in self.process.stderr:
            said.append(line)
            match = LISTENING.search(line)
            if match:
                self.address = match.group(1)
                break
        else:
            raise AssertionError(f"kdmkb serve ended before listening (exit code {self.process.wait()}):\n" + "".join(said[-30:]))
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
        assert second.wait(kept.job_id, TIMEOUT).state == "SUCCEEDED", kept.error
    finally:
        second.shutdown()


def _metrics(job) -> dict:
    """A job's test metrics without their timing."""
    return {kb: {key: value for key, value in metrics.items() if key != "seconds"} for kb, metrics in job.test_metrics.items()}


def _ran(coordinator: Coordinator, strategy: str, kbs: list[str], settings: dict):
    """A job created, started and waited for; it must succeed."""
    job = coordinator.create_job(strategy, kbs, settings)
    coordinator.start_job(job.job_id)
    assert coordinator.wait(job.job_id, TIMEOUT).state == "SUCCEEDED", job.error
    return job


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
        whole = _ran(coordinator, "cooperative", list(kb_names), settings)

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


def test_a_restarted_coordinator_serves_the_models_its_jobs_left(ray_session, tmp_path, nations_split, kb_names, alignment_files, worker_settings, job_settings, caplog):
    """Each KB gets back its newest job's newest usable checkpoint; a damaged one gives way to the one before, named in the log."""
    data = tmp_path / "state"
    settings = {**job_settings, "rounds": 4, "eval_every": 0, "checkpoint_every": 2}

    def answers(coordinator: Coordinator) -> dict:
        return {kb: coordinator.predict(kb, "usa", "treaties", k=5) for kb in kb_names}

    first = Coordinator(data)
    try:
        _register(first, nations_split, kb_names, alignment_files, worker_settings)
        _ran(first, "none", list(kb_names), {**settings, "rounds": 2})
        job = _ran(first, "cooperative", list(kb_names), settings)
        trained = answers(first)
        _ran(first, "none", [kb_names[1]], {**settings, "rounds": 2, "seed": 7})  # kb_names[1]'s newest job is another one
        trained[kb_names[1]] = answers(first)[kb_names[1]]
    finally:
        first.shutdown()

    second = Coordinator(data)
    try:
        assert answers(second) == trained
    finally:
        second.shutdown()

    newest = data / "checkpoints" / job.job_id / kb_names[0] / "round-000004.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level(logging.ERROR, logger="kdmkb.coordinator.service"):
        third = Coordinator(data)
    try:
        older = third.predict(kb_names[0], "usa", "treaties", k=5)
        assert older != trained[kb_names[0]]  # round 2's model, not round 4's
        assert any("round 4" in message and job.job_id in message for message in caplog.messages), caplog.messages
    finally:
        third.shutdown()


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


def _kill_worker(coordinator: Coordinator, kb: str) -> None:
    os.kill(coordinator.placement(kb)["pid"], signal.SIGKILL)


@pytest.mark.slow  # five short jobs and three worker restarts: about 45 s
def test_a_killed_kb_worker_is_restarted_and_its_job_continues(ray_session, tmp_path, nations_split, kb_names, alignment_files, worker_settings, job_settings):
    folders = tmp_path / "kbs"
    for name in kb_names:
        shutil.copytree(nations_split.out_dir / name, folders / name)
    coordinator = Coordinator(tmp_path / "state")
    server, port = start_server(coordinator, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.CoordinatorStub(channel)
    try:
        for name in kb_names:
            coordinator.register_kb(name, str(folders / name), "transe", worker_settings)
        coordinator.register_alignment(*kb_names, *map(str, alignment_files))
        settings = {**job_settings, "rounds": 10, "eval_every": 0, "checkpoint_every": 2}
        whole = _ran(coordinator, "cooperative", list(kb_names), settings)

        # killed mid-job: restarted, restored from the last checkpoint, and the job ends as an uninterrupted one
        job = coordinator.create_job("cooperative", list(kb_names), settings)
        coordinator.start_job(job.job_id)
        events = coordinator.watch_job(job.job_id, poll_seconds=0.05)
        seen, killed = [], False
        for event in events:
            seen.append(event)
            if event.round == 3 and not killed:  # once: more events of round 3 may come before the restart
                _kill_worker(coordinator, kb_names[0])
                killed = True
        assert job.state == "SUCCEEDED", job.error
        restarted = [event for event in seen if event.kind == "restarted"]
        assert len(restarted) == 1 and repr(kb_names[0]) in restarted[0].message and restarted[0].round <= 3, restarted
        assert _metrics(job) == _metrics(whole)

        # killed while idle: unhealthy in ListKBs, UNAVAILABLE (plain words) to Predict and Evaluate, restarted by an identical RegisterKB
        # with the model its last job left
        question = pb.PredictRequest(kb=kb_names[1], head="usa", relation="treaties", k=5)
        before = stub.Predict(question, timeout=TIMEOUT).predictions
        _kill_worker(coordinator, kb_names[1])
        listed = {kb.name: kb for kb in stub.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs}
        assert listed[kb_names[0]].healthy and not listed[kb_names[1]].healthy
        assert "ended" in listed[kb_names[1]].unhealthy_reason
        for call in (
            lambda: stub.Predict(pb.PredictRequest(kb=kb_names[1], head="usa", relation="treaties"), timeout=TIMEOUT),
            lambda: stub.Evaluate(pb.EvaluateRequest(kb=kb_names[1]), timeout=TIMEOUT),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value
            assert repr(kb_names[1]) in raised.value.details() and "Ray" not in raised.value.details() and "Actor" not in raised.value.details()
        again = pb.RegisterKBRequest(name=kb_names[1], data_dir=str(folders / kb_names[1]), worker_type="transe", settings=to_struct(worker_settings))
        assert stub.RegisterKB(again, timeout=TIMEOUT).kb.healthy
        assert stub.Predict(question, timeout=TIMEOUT).predictions == before
        assert coordinator.store.load_alignments()  # an identical registration keeps the alignment

        # a worker that cannot be restarted (its folder gone): the job fails in plain words, and StartJob resumes it once it can
        failing = coordinator.create_job("cooperative", list(kb_names), settings)
        coordinator.start_job(failing.job_id)
        _follow(coordinator, failing.job_id, 3)
        (folders / kb_names[0]).rename(folders / "away")
        _kill_worker(coordinator, kb_names[0])
        assert coordinator.wait(failing.job_id, TIMEOUT).state == "FAILED"
        assert repr(kb_names[0]) in failing.error and "cannot be restarted" in failing.error and "StartJob" in failing.error, failing.error
        assert "Ray" not in failing.error and "Actor" not in failing.error
        (folders / "away").rename(folders / kb_names[0])
        coordinator.start_job(failing.job_id)
        assert coordinator.wait(failing.job_id, TIMEOUT).state == "SUCCEEDED", failing.error
        assert _metrics(failing) == _metrics(whole)
    finally:
        channel.close()
        server.stop(grace=None).wait()
        coordinator.shutdown()


def test_re_registering_a_kb_with_other_settings_needs_force(ray_session, nations_split, kb_names, alignment_files, worker_settings, job_settings):
    left, right = kb_names
    coordinator = Coordinator()
    try:
        _register(coordinator, nations_split, kb_names, alignment_files, worker_settings)
        before = dict(coordinator._alignments)
        waiting = coordinator.create_job("cooperative", list(kb_names), job_settings)
        other = {**worker_settings, "learning_rate": 0.02}
        with pytest.raises(PreconditionError, match=rf"KB '{left}' has alignments with '{right}' and unfinished jobs {waiting.job_id}.*force"):
            coordinator.register_kb(left, str(nations_split.out_dir / left), "transe", other)
        assert coordinator._alignments == before and coordinator.list_kbs()[0]["settings"] == worker_settings
        assert coordinator.register_kb(left, str(nations_split.out_dir / left), "transe", worker_settings)["healthy"]  # identical: OK

        forced = coordinator.register_kb(left, str(nations_split.out_dir / left), "transe", other, force=True)
        assert forced["settings"] == other
        assert coordinator._alignments == before  # rebuilt against the new worker's vocabulary: the same pairs
        with pytest.raises(PreconditionError, match=rf"KB '{left}' was registered again with other settings after job '{waiting.job_id}'"):
            coordinator.start_job(waiting.job_id)
        _ran(coordinator, "none", [left], {**job_settings, "rounds": 1})
    finally:
        coordinator.shutdown()


@pytest.mark.slow  # a `kdmkb serve` process starts its Ray before it binds: about 30 s
def test_a_second_server_on_a_busy_port_is_refused(coordinator, grpc_address, tmp_path):
    with pytest.raises(PreconditionError, match=f"address: cannot listen on {grpc_address}: the port is in use"):
        start_server(coordinator, grpc_address)
    served = subprocess.run(
        [sys.executable, "-m", "kdmkb", "serve", "--address", grpc_address, "--metrics-port", "0", "--data-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KDMKB_LOG_LEVEL": "WARNING"},
    )
    assert served.returncode == 1, served.stderr  # refused, not a usage error (README: exit codes)
    assert f"cannot listen on {grpc_address}" in served.stderr and "Traceback" not in served.stderr, served.stderr


def test_streams_never_starve_the_server(ray_session, nations_split, kb_names, worker_settings, job_settings):
    """200 open WatchJob streams while a job trains: health, GetJob and Predict still answer within a second; one more stream is refused, naming the limit."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from kdmkb.services.limits import Limits

    streams = 200
    coordinator = Coordinator(limits=Limits(max_streams=streams))
    server, port = start_server(coordinator, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.CoordinatorStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    opened, job = [], None
    try:
        name = kb_names[0]
        coordinator.register_kb(name, str(nations_split.out_dir / name), "transe", worker_settings)
        job = coordinator.create_job("none", [name], {**job_settings, "rounds": 100_000, "steps_per_round": 20, "eval_every": 0})
        coordinator.start_job(job.job_id)
        predict = pb.PredictRequest(kb=name, head="usa", relation="treaties", k=3)
        deadline = time.monotonic() + TIMEOUT
        while coordinator.job(job.job_id).round < 1:  # the worker has a model (and its Predict snapshot) once a round has ended
            assert time.monotonic() < deadline, "the job's first round did not end"
            time.sleep(0.1)
        stub.Predict(predict, timeout=TIMEOUT)
        for _ in range(streams):
            opened.append(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT))
            next(opened[-1])  # the server has given it a thread
        for call in (
            lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=1),
            lambda: stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=1),
            lambda: stub.Predict(predict, timeout=1),  # answered from the model's snapshot, not after the round in progress
        ):
            started = time.perf_counter()
            call()
            assert time.perf_counter() - started < 1.0
        assert coordinator.job(job.job_id).state == "RUNNING"
        with pytest.raises(grpc.RpcError) as raised:
            next(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_streams" in raised.value.details(), raised.value
        for stream in opened[:10]:
            stream.cancel()
        deadline = time.monotonic() + 10  # a cancelled stream gives its slot back within a poll
        while True:
            extra = stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT)
            try:
                next(extra)
                extra.cancel()
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        for stream in opened:
            stream.cancel()
        if job is not None:
            coordinator.stop_job(job.job_id)
        channel.close()
        server.stop(grace=None).wait()
        coordinator.shutdown()

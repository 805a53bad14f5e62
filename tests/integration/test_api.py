"""The coordinator's public API through a real gRPC channel: KBs, alignment, a cooperative job and serving."""

from __future__ import annotations

import math
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb

TIMEOUT = 120.0
SERVICE = "kdmkb.coordinator.v1.Coordinator"


def test_register_kbs_reports_their_sizes(stub, registered, nations_split, kb_names, worker_settings, vocabulary_names):
    listed = {kb.name: kb for kb in stub.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs}
    for name in kb_names:
        folder = nations_split.out_dir / name
        kb = listed[name]
        assert kb == registered["kbs"][name]
        assert kb.worker_type == "transe"
        assert kb.data_dir == str(folder.resolve())
        assert kb.num_entities == len(vocabulary_names(folder / "entities.tsv"))
        assert kb.num_relations == len(vocabulary_names(folder / "relations.tsv"))
        assert kb.num_train == nations_split.train_counts[name]
        assert kb.num_valid == len((folder / "valid.tsv").read_text().splitlines())
        assert kb.num_test == len((folder / "test.tsv").read_text().splitlines())
        assert dict(kb.settings.items()) == worker_settings  # Struct numbers are doubles: 16.0 == 16


def test_register_kb_is_idempotent(stub, registered, nations_split, kb_names, worker_settings):
    from kdmkb.services.wire import to_struct as struct

    name = kb_names[0]
    again = stub.RegisterKB(
        pb.RegisterKBRequest(name=name, data_dir=str(nations_split.out_dir / name), worker_type="transe", settings=struct(worker_settings)), timeout=TIMEOUT
    ).kb
    assert again == registered["kbs"][name]
    assert [kb.name for kb in stub.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs].count(name) == 1


def test_register_alignment_counts_the_pairs(registered, alignment_files, nations_split, kb_names):
    alignment = registered["alignment"]
    entities, relations = alignment_files
    assert (alignment.kb_a, alignment.kb_b) == kb_names
    assert alignment.entities_path == str(entities.resolve())
    assert alignment.relations_path == str(relations.resolve())
    entity_pairs, relation_pairs = nations_split.pair_counts[kb_names]
    assert alignment.num_entity_pairs == entity_pairs == len(entities.read_text().splitlines()) > 0
    assert alignment.num_relation_pairs == relation_pairs == len(relations.read_text().splitlines()) > 0


def test_watch_job_streams_rounds_until_succeeded(finished_job, job_settings):
    events = finished_job.events
    assert events, "WatchJob yielded nothing"
    assert all(event.job_id == finished_job.job_id for event in events)
    rounds = [event.round for event in events]
    assert rounds == sorted(rounds), rounds
    round_events = [event for event in events if event.kind == "round"]
    assert [event.round for event in round_events] == list(range(1, job_settings["rounds"] + 1))
    assert all(event.total_rounds == job_settings["rounds"] for event in events)
    assert all(event.state == pb.JOB_STATE_RUNNING for event in events[:-1])
    last = events[-1]
    assert last.state == pb.JOB_STATE_SUCCEEDED and last.kind == "finished"
    assert events[-2].kind == "evaluating" and events[-2].state == pb.JOB_STATE_RUNNING  # the final test ranking is announced
    assert last.round == job_settings["rounds"]
    # eval_every=1: validation metrics arrive with the rounds before the last one
    evaluated = [event for event in events if event.kind == "evaluated"]
    assert len(evaluated) == job_settings["rounds"] - 1
    assert all(0 < event.progress[kb].valid.mrr <= 1 for event in evaluated for kb in event.progress)


def test_get_job_has_metrics_and_exchange_progress(finished_job, kb_names, job_settings, stub):
    job = finished_job.job
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    assert job.error == ""
    assert job.strategy == "cooperative"
    assert tuple(job.kbs) == kb_names
    assert job.round == job.total_rounds == job_settings["rounds"]
    assert int(job.settings["rounds"]) == job_settings["rounds"] and job.settings["top_k"] == job_settings["top_k"]
    assert set(job.test_metrics) == set(kb_names)
    for kb in kb_names:
        metrics = job.test_metrics[kb]
        assert 0 < metrics.mrr <= 1
        assert 1 <= metrics.mr
        assert 0 <= metrics.hits_at_1 <= metrics.hits_at_3 <= metrics.hits_at_10 <= 1
        assert metrics.num_queries > 0
        progress = job.progress[kb]
        assert progress.soft_label_bytes_sent > 0
        assert progress.soft_label_bytes_received > 0
        assert progress.steps == job_settings["rounds"] * job_settings["steps_per_round"]
        assert math.isfinite(progress.loss) and progress.loss > 0
        assert progress.kd_loss > 0
    # what one KB sent, the other received
    left, right = kb_names
    assert job.progress[left].soft_label_bytes_sent == job.progress[right].soft_label_bytes_received
    assert job.progress[right].soft_label_bytes_sent == job.progress[left].soft_label_bytes_received
    listed = {j.job_id: j for j in stub.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT).jobs}
    assert listed[finished_job.job_id] == job
    assert all(kb.busy_with_job == "" for kb in stub.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs)


def test_watching_a_finished_job_yields_its_final_state(stub, finished_job):
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=finished_job.job_id), timeout=TIMEOUT))
    assert len(events) == 1
    assert events[0].state == pb.JOB_STATE_SUCCEEDED and events[0].round == finished_job.job.round


def test_evaluate_matches_the_splits(stub, finished_job, kb_names, nations_split):
    for kb in kb_names:
        for split in ("valid", "test"):
            metrics = stub.Evaluate(pb.EvaluateRequest(kb=kb, split=split), timeout=TIMEOUT).metrics
            lines = len((nations_split.out_dir / kb / f"{split}.tsv").read_text().splitlines())
            assert metrics.num_queries == 2 * lines  # a head and a tail query per triple
            assert 0 < metrics.mrr <= 1 and metrics.mr >= 1
            assert 0 <= metrics.hits_at_1 <= metrics.hits_at_3 <= metrics.hits_at_10 <= 1
        # the job's test metrics are those of the final model; split defaults to test
        default = stub.Evaluate(pb.EvaluateRequest(kb=kb), timeout=TIMEOUT).metrics
        assert default.mrr == pytest.approx(finished_job.job.test_metrics[kb].mrr)
        assert default.num_queries == finished_job.job.test_metrics[kb].num_queries


def _export(stub, kb: str, chunk_rows: int = 0) -> tuple[dict, list]:
    parts: dict[str, tuple[list, list, set]] = {}
    chunks = list(stub.ExportEmbeddings(pb.ExportEmbeddingsRequest(kb=kb, chunk_rows=chunk_rows), timeout=TIMEOUT))
    for chunk in chunks:
        names, vectors, dims = parts.setdefault(chunk.kind, ([], [], set()))
        names.extend(chunk.names)
        vectors.append(np.frombuffer(chunk.vectors, dtype="<f4").reshape(len(chunk.names), chunk.dim))
        dims.add(chunk.dim)
    return {kind: (names, np.concatenate(vectors), dims) for kind, (names, vectors, dims) in parts.items()}, chunks


def test_export_embeddings(stub, finished_job, kb_names, nations_split, worker_settings, vocabulary_names):
    for kb in kb_names:
        folder = nations_split.out_dir / kb
        exported, chunks = _export(stub, kb, chunk_rows=4)
        assert set(exported) == {"entity", "relation"}
        assert all(len(chunk.names) <= 4 for chunk in chunks)
        entity_names, entity_vectors, entity_dims = exported["entity"]
        relation_names, relation_vectors, relation_dims = exported["relation"]
        assert entity_names == vocabulary_names(folder / "entities.tsv")
        assert relation_names == vocabulary_names(folder / "relations.tsv")
        assert entity_vectors.shape == (len(entity_names), worker_settings["dim"])
        assert relation_vectors.shape == (len(relation_names), worker_settings["dim"])
        assert entity_dims == relation_dims == {worker_settings["dim"]}
        assert np.isfinite(entity_vectors).all() and np.isfinite(relation_vectors).all()
        # the default chunking returns the same rows
        whole, _ = _export(stub, kb)
        assert whole["entity"][0] == entity_names
        np.testing.assert_array_equal(whole["entity"][1], entity_vectors)
        np.testing.assert_array_equal(whole["relation"][1], relation_vectors)


def test_predict_ranks_tails(stub, finished_job, kb_names, nations_split, kb_triples, vocabulary_names):
    kb = kb_names[0]
    folder = nations_split.out_dir / kb
    triples = kb_triples(folder)
    entities = vocabulary_names(folder / "entities.tsv")
    head, relation, _ = sorted(triples)[0]
    known_tails = {t for h, r, t in triples if (h, r) == (head, relation)}
    assert known_tails

    top = stub.Predict(pb.PredictRequest(kb=kb, head=head, relation=relation, k=5), timeout=TIMEOUT).predictions
    assert len(top) == 5
    scores = [p.score for p in top]
    assert scores == sorted(scores, reverse=True)
    assert len({p.entity for p in top}) == 5
    for p in top:
        assert p.entity in entities
        assert p.known == (p.entity in known_tails)

    # k = every entity: each entity once, and exactly the known tails flagged
    everything = stub.Predict(pb.PredictRequest(kb=kb, head=head, relation=relation, k=len(entities)), timeout=TIMEOUT).predictions
    assert sorted(p.entity for p in everything) == sorted(entities)
    assert {p.entity for p in everything if p.known} == known_tails
    assert [p.score for p in everything] == sorted((p.score for p in everything), reverse=True)
    assert [p.entity for p in everything[:5]] == [p.entity for p in top]

    # the scores are TransE's -||h + r - t||_1 of the exported embeddings
    exported, _ = _export(stub, kb)
    entity_names, entity_vectors, _ = exported["entity"]
    relation_names, relation_vectors, _ = exported["relation"]
    query = entity_vectors[entity_names.index(head)] + relation_vectors[relation_names.index(relation)]
    for p in everything:
        expected = -np.abs(query - entity_vectors[entity_names.index(p.entity)]).sum()
        assert p.score == pytest.approx(expected, rel=1e-4, abs=1e-4)

    # k defaults to 10
    default = stub.Predict(pb.PredictRequest(kb=kb, head=head, relation=relation), timeout=TIMEOUT).predictions
    assert len(default) == min(10, len(entities))


def test_health_serves_both_names(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as error:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_coordinator(channel):
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""), reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]
    responses = list(reflection.ServerReflectionInfo(iter(requests), timeout=TIMEOUT))
    assert len(responses) == 2
    services = {service.name for service in responses[0].list_services_response.service}
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    from google.protobuf import descriptor_pb2

    files = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in responses[1].file_descriptor_response.file_descriptor_proto]
    described = {f"{f.package}.{service.name}": [method.name for method in service.method] for f in files for service in f.service}
    assert "WatchJob" in described[SERVICE] and "ExportEmbeddings" in described[SERVICE]


def test_watch_ends_with_the_terminal_event_even_for_a_slow_consumer(coordinator, registered, kb_names, job_settings):
    """A consumer that is slow between events still gets the job's terminal event, not a stream cut short."""
    job = coordinator.create_job("none", list(kb_names), {**job_settings, "rounds": 2, "eval_every": 0})
    coordinator.start_job(job.job_id)
    events = []
    for event in coordinator.watch_job(job.job_id, poll_seconds=0.05):
        events.append(event)
        time.sleep(0.3)  # the job runs on meanwhile: its state changes long before the next event is read
    assert coordinator.wait(job.job_id, timeout=TIMEOUT).state == "SUCCEEDED"
    assert events[-1].state == "SUCCEEDED" and events[-1].kind == "finished", [(e.kind, e.state) for e in events]


def test_concurrent_clients_are_served_during_a_job(stub, registered, kb_names, job_settings, grpc_address):
    """The server answers other RPCs (and a second watcher) while a job runs and is watched."""
    from kdmkb.services.wire import to_struct as struct

    job = stub.CreateJob(pb.CreateJobRequest(strategy="cooperative", kbs=list(kb_names), settings=struct({**job_settings, "rounds": 4})), timeout=TIMEOUT).job
    assert job.state == pb.JOB_STATE_CREATED and job.round == 0 and job.total_rounds == 4
    started = stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=TIMEOUT).job
    assert started.state == pb.JOB_STATE_RUNNING
    # starting a running job again is a no-op
    assert stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=TIMEOUT).job.state in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_SUCCEEDED)
    second: list = []
    other = threading.Thread(target=lambda: second.extend(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT)))
    other.start()
    first = []
    for event in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT):
        first.append(event)
        assert stub.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs
    other.join(TIMEOUT)
    for events in (first, second):
        assert events and events[-1].state == pb.JOB_STATE_SUCCEEDED
        assert [e.round for e in events] == sorted(e.round for e in events)
    assert stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=TIMEOUT).job.state == pb.JOB_STATE_SUCCEEDED


def test_a_running_job_keeps_its_kbs_and_can_be_stopped(stub, registered, kb_names, nations_split, worker_settings, job_settings):
    """While a job runs its KBs are busy (no other job, no re-registration); StopJob ends it as STOPPED."""
    from kdmkb.services.wire import to_struct as struct

    left, right = kb_names
    long = stub.CreateJob(pb.CreateJobRequest(strategy="cooperative", kbs=[left, right], settings=struct({**job_settings, "rounds": 500})), timeout=TIMEOUT).job
    other = stub.CreateJob(pb.CreateJobRequest(strategy="none", kbs=[left], settings=struct({**job_settings, "rounds": 1})), timeout=TIMEOUT).job
    stub.StartJob(pb.StartJobRequest(job_id=long.job_id), timeout=TIMEOUT)
    try:
        stream = stub.WatchJob(pb.WatchJobRequest(job_id=long.job_id), timeout=TIMEOUT)
        for event in stream:
            if event.round >= 1:
                break
        stream.cancel()
        busy = {kb.name: kb.busy_with_job for kb in stub.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs}
        assert busy[left] == busy[right] == long.job_id
        with pytest.raises(grpc.RpcError) as raised:
            stub.StartJob(pb.StartJobRequest(job_id=other.job_id), timeout=TIMEOUT)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION and long.job_id in raised.value.details()
        with pytest.raises(grpc.RpcError) as raised:
            stub.RegisterKB(
                pb.RegisterKBRequest(name=left, data_dir=str(nations_split.out_dir / left), settings=struct({**worker_settings, "dim": 8})), timeout=TIMEOUT
            )
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION and long.job_id in raised.value.details()
    finally:
        stopped = stub.StopJob(pb.StopJobRequest(job_id=long.job_id), timeout=TIMEOUT).job
    assert stopped.state == pb.JOB_STATE_STOPPED and 1 <= stopped.round < 500
    assert not stopped.test_metrics
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=long.job_id), timeout=TIMEOUT))
    assert [e.state for e in events] == [pb.JOB_STATE_STOPPED]
    assert all(kb.busy_with_job == "" for kb in stub.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs)
    # a job that never started can be stopped too, and StartJob resumes a stopped job (from its last checkpoint; none here)
    assert stub.StopJob(pb.StopJobRequest(job_id=other.job_id), timeout=TIMEOUT).job.state == pb.JOB_STATE_STOPPED
    stub.StartJob(pb.StartJobRequest(job_id=other.job_id), timeout=TIMEOUT)
    assert list(stub.WatchJob(pb.WatchJobRequest(job_id=other.job_id), timeout=TIMEOUT))[-1].state == pb.JOB_STATE_SUCCEEDED


@pytest.mark.parametrize("strategy", ["none", "one-way", "sequential"])
def test_each_strategy_exchanges_in_its_own_directions(stub, registered, kb_names, job_settings, strategy):
    """none: nothing is sent; one-way: only the teacher (the first KB) sends and stops training; sequential: both send."""
    from kdmkb.services.wire import to_struct as struct

    left, right = kb_names
    settings = {**job_settings, "rounds": 3, "eval_every": 0}
    strategy_settings = {} if strategy == "none" else {"pretrain_rounds": 1}
    request = pb.CreateJobRequest(strategy=strategy, kbs=[left, right], settings=struct(settings), strategy_settings=struct(strategy_settings))
    job = stub.CreateJob(request, timeout=TIMEOUT).job
    assert dict(job.strategy_settings) == strategy_settings
    stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=TIMEOUT)
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT))
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED, events[-1].message
    job = stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=TIMEOUT).job
    sent = {kb: job.progress[kb].soft_label_bytes_sent for kb in kb_names}
    received = {kb: job.progress[kb].soft_label_bytes_received for kb in kb_names}
    steps = {kb: job.progress[kb].steps for kb in kb_names}
    full = settings["rounds"] * settings["steps_per_round"]
    if strategy == "none":
        assert sent == received == {left: 0, right: 0}
        assert steps == {left: full, right: full}
        assert all(job.progress[kb].kd_loss == 0 for kb in kb_names)
    elif strategy == "one-way":
        assert sent[left] > 0 and received[left] == 0
        assert sent[right] == 0 and received[right] == sent[left]
        assert steps == {left: strategy_settings["pretrain_rounds"] * settings["steps_per_round"], right: full}  # the teacher is frozen
        assert job.progress[right].kd_loss > 0
    else:
        assert sent[left] > 0 and sent[right] > 0
        assert received == {left: sent[right], right: sent[left]}
    assert set(job.test_metrics) == set(kb_names)


@pytest.mark.parametrize("candidates", ["top-k", "listed", "all"])
def test_pull_exchange_sends_queries_and_learns_from_the_answers(stub, registered, kb_names, job_settings, candidates):
    """Cooperative by pull: each student asks about its own batches, each teacher answers; every byte is metered."""
    from kdmkb.services.wire import to_struct as struct

    left, right = kb_names
    settings = {**job_settings, "rounds": 2, "eval_every": 0}
    request = pb.CreateJobRequest(
        strategy="cooperative", kbs=[left, right], settings=struct(settings), strategy_settings=struct({"exchange": "pull", "candidates": candidates})
    )
    job = stub.CreateJob(request, timeout=TIMEOUT).job
    stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=TIMEOUT)
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT))
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED, events[-1].message
    progress = stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=TIMEOUT).job.progress
    for kb, peer in ((left, right), (right, left)):
        assert progress[kb].query_bytes_sent > 0 and progress[kb].query_bytes_sent == progress[peer].query_bytes_received
        assert progress[kb].soft_label_bytes_sent > 0 and progress[kb].soft_label_bytes_sent == progress[peer].soft_label_bytes_received
        assert progress[kb].kd_loss > 0 and progress[kb].steps == settings["rounds"] * settings["steps_per_round"]


def test_export_of_wide_embeddings_fits_default_client_limits(stub, registered, nations_split, kb_names):
    """Default chunks of wide embeddings stay under the 4 MB a default gRPC client accepts (55 x 20000 floats is 4.4 MB)."""
    from kdmkb.services.wire import to_struct as struct

    dim = 20_000
    stub.RegisterKB(
        pb.RegisterKBRequest(name="wide", data_dir=str(nations_split.out_dir / kb_names[0]), worker_type="distmult", settings=struct({"dim": dim, "batch_size": 16, "negatives": 2})),
        timeout=TIMEOUT,
    )
    job = stub.CreateJob(pb.CreateJobRequest(strategy="none", kbs=["wide"], settings=struct({"rounds": 1, "steps_per_round": 1, "checkpoint_every": 0})), timeout=TIMEOUT).job
    stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=TIMEOUT)
    assert list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT))[-1].state == pb.JOB_STATE_SUCCEEDED
    exported, chunks = _export(stub, "wide")
    kb = {k.name: k for k in stub.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs}["wide"]
    assert exported["entity"][1].shape == (kb.num_entities, dim)
    assert exported["relation"][1].shape == (kb.num_relations, dim)
    assert max(chunk.ByteSize() for chunk in chunks) < 4 * 2**20

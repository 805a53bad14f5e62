"""The server's limits over gRPC: each refused request gets INVALID_ARGUMENT or RESOURCE_EXHAUSTED with the limit's name.

Soft labels between workers: a round's labels over max_label_bytes travel as several messages and
change nothing else; one step over it fails the job, naming the limit, before any model changes.
"""

from __future__ import annotations

import itertools
import re

import grpc
import pytest
import ray
from prometheus_client import REGISTRY

from kdmkb.coordinator.server import start_server
from kdmkb.coordinator.service import Coordinator
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from kdmkb.protos.kdmkb.exchange.v1 import soft_labels_pb2
from kdmkb.services.limits import Limits
from kdmkb.services.wire import to_struct

TIMEOUT = 120.0


@pytest.fixture
def limited(ray_session):
    coordinator = Coordinator(limits=Limits(max_kbs=1, max_triples=150, max_message_bytes=2**20))
    server, port = start_server(coordinator, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.CoordinatorStub(channel)
    channel.close()
    server.stop(grace=None).wait()
    coordinator.shutdown()


def _refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=TIMEOUT)
    return raised.value


def test_each_limit_is_named_when_it_refuses(limited, tmp_path, nations_split, kb_names, worker_settings):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    for split in ("train", "valid", "test"):
        (tiny / f"{split}.tsv").write_text("a\tr\tb\nb\tr\tc\n", encoding="utf-8")
    settings = to_struct(worker_settings)

    error = _refused(limited.RegisterKB, pb.RegisterKBRequest(name="big", data_dir=str(nations_split.out_dir / kb_names[0]), settings=settings))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "train.tsv: more than the server's limit max_triples = 150" in error.details()
    error = _refused(limited.RegisterKB, pb.RegisterKBRequest(name="wide", data_dir=str(tiny), settings=to_struct({**worker_settings, "dim": 10**9})))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "settings.dim" in error.details() and "max_dim = 65536" in error.details()

    assert limited.RegisterKB(pb.RegisterKBRequest(name="tiny", data_dir=str(tiny), settings=settings), timeout=TIMEOUT).kb.num_train == 2
    error = _refused(limited.RegisterKB, pb.RegisterKBRequest(name="second", data_dir=str(tiny), settings=settings))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_kbs" in error.details()
    assert [kb.name for kb in limited.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs] == ["tiny"]

    error = _refused(limited.Predict, pb.PredictRequest(kb="tiny", head="a" * 2**21, relation="r"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error


# -- soft labels within max_label_bytes -----------------------------------------------------------
LABEL_BYTES = 64 * 2**10  # a round of the session's job settings sends about 120 kB of labels to each student


def _cooperative(limits: Limits, nations_split, kb_names, alignment_files, settings: dict[str, dict], job_settings) -> dict:
    """A cooperative job on a coordinator of its own with ``limits``, each KB with its ``settings``: the job's record, the
    progress after each round, the SoftLabels messages routed per (teacher, student) and each worker's (step, updates) at the end."""
    coordinator = Coordinator(limits=limits)
    try:
        for name in kb_names:
            coordinator.register_kb(name, str(nations_split.out_dir / name), "transe", settings[name])
        coordinator.register_alignment(*kb_names, *map(str, alignment_files))
        job = coordinator.create_job("cooperative", list(kb_names), job_settings)
        events = coordinator.watch_job(job.job_id, poll_seconds=0.05)
        next(events)  # subscribed before the start: every round's event comes
        coordinator.start_job(job.job_id)
        rounds = [event.progress for event in events if event.kind == "round"]
        job = coordinator.wait(job.job_id, TIMEOUT)
        trained = {kb: ray.get(coordinator._kb(kb).handle.__ray_call__.remote(lambda worker: (worker.step, worker.model.updates))) for kb in kb_names}
        sample = "kdmkb_coordinator_soft_label_routed_messages_total"
        routed = {(t, s): REGISTRY.get_sample_value(sample, {"teacher": t, "student": s, "job": job.job_id}) for t, s in itertools.permutations(kb_names)}
        return {"job": job, "rounds": rounds, "routed": routed, "trained": trained}
    finally:
        coordinator.shutdown()


def _header(job_id: str, round_: int, teacher: str, student: str) -> int:
    """Bytes of a SoftLabels message's header, which every message of a round repeats."""
    return soft_labels_pb2.SoftLabels(job_id=job_id, round=round_, teacher=teacher, student=student).ByteSize()


def test_soft_labels_over_max_label_bytes_travel_in_several_messages_and_change_nothing_else(ray_session, nations_split, kb_names, alignment_files, worker_settings, job_settings):
    settings = dict.fromkeys(kb_names, worker_settings)
    whole = _cooperative(Limits(), nations_split, kb_names, alignment_files, settings, job_settings)
    cut = _cooperative(Limits(max_label_bytes=LABEL_BYTES), nations_split, kb_names, alignment_files, settings, job_settings)
    assert whole["job"].state == cut["job"].state == "SUCCEEDED", (whole["job"].error, cut["job"].error)
    assert set(whole["routed"].values()) == {job_settings["rounds"]}  # one message a round
    assert all(count > 2 * job_settings["rounds"] for count in cut["routed"].values())  # three a round
    assert cut["trained"] == whole["trained"] == {kb: (job_settings["rounds"] * job_settings["steps_per_round"],) * 2 for kb in kb_names}

    def timeless(record: dict) -> dict:
        return {key: timeless(value) if isinstance(value, dict) else value for key, value in record.items() if key not in ("seconds", "train_seconds")}

    # the same training: test and validation metrics, losses, steps, triples, ...
    assert timeless(cut["job"].test_metrics) == timeless(whole["job"].test_metrics)
    bytes_fields = ("soft_label_bytes_sent", "soft_label_bytes_received")
    assert len(cut["rounds"]) == len(whole["rounds"]) == job_settings["rounds"]
    for after_cut, after_whole in zip(cut["rounds"], whole["rounds"]):
        assert {kb: {k: v for k, v in timeless(p).items() if k not in bytes_fields} for kb, p in after_cut.items()} == {
            kb: {k: v for k, v in timeless(p).items() if k not in bytes_fields} for kb, p in after_whole.items()
        }
    # and the same labels: every extra message adds one header's bytes, nothing else
    messages = dict.fromkeys(cut["routed"], 0)
    previous = {kb: dict.fromkeys(bytes_fields, 0) for kb in kb_names}
    for round_, (after_cut, after_whole) in enumerate(zip(cut["rounds"], whole["rounds"])):
        for teacher, student in cut["routed"]:  # two KBs: a teacher's bytes sent are its one student's
            extra = after_cut[teacher]["soft_label_bytes_sent"] - after_whole[teacher]["soft_label_bytes_sent"] - previous[teacher]["soft_label_bytes_sent"]
            header = _header(cut["job"].job_id, round_, teacher, student)
            assert extra > 0 and extra % header == 0, (round_, teacher, extra, header)
            messages[teacher, student] += 1 + extra // header
            assert after_cut[student]["soft_label_bytes_received"] - after_whole[student]["soft_label_bytes_received"] == after_cut[teacher]["soft_label_bytes_sent"] - after_whole[teacher]["soft_label_bytes_sent"]
        previous = {kb: {f: after_cut[kb][f] - after_whole[kb][f] for f in bytes_fields} for kb in kb_names}
    assert messages == cut["routed"]


def test_a_step_over_max_label_bytes_fails_the_job_naming_the_limit_before_any_model_changes(ray_session, nations_split, kb_names, alignment_files, worker_settings, job_settings):
    """Only the second KB's steps (batches of 256: about 96 kB of labels) are over 48 KiB; the first KB's (about 24 kB) are not.

    The second KB's own training needs only the first KB's labels: it must not run either.
    """
    left, right = kb_names
    settings = {left: worker_settings, right: {**worker_settings, "batch_size": 256}}
    failed = _cooperative(Limits(max_label_bytes=48 * 2**10), nations_split, kb_names, alignment_files, settings, job_settings)
    job = failed["job"]
    assert job.state == "FAILED" and failed["rounds"] == []
    assert re.fullmatch(
        rf"LimitError: one step's soft labels from KB '{right}' for '{left}' are \d+ bytes, over the server's limit max_label_bytes = 49152 \(.*\)", job.error
    ), job.error
    assert failed["trained"] == {kb: (0, 0) for kb in kb_names}  # no KB trained in the failed round

"""The server's limits over gRPC: each refused request gets INVALID_ARGUMENT or RESOURCE_EXHAUSTED with the limit's name."""

from __future__ import annotations

import grpc
import pytest

from kdmkb.coordinator.server import start_server
from kdmkb.coordinator.service import Coordinator
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
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

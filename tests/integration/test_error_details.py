"""INVALID_ARGUMENT errors that name fields carry them as ``google.rpc.BadRequest`` field violations in the status details."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kdmkb.coordinator.servicer import field_violations
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.services.wire import to_struct


def _bad_request(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The field violations a non-Python client would decode from the ``grpc-status-details-bin`` trailer."""
    status = rpc_status.from_call(error)
    assert status is not None and status.code == error.code().value[0] and status.message == error.details()
    [detail] = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    return [(violation.field, violation.description) for violation in bad_request.field_violations]


def test_field_violations_of_a_message():
    violations = field_violations("settings.dim: Input should be greater than 0; kb[1].settings.learning_rate: Input should be a valid number")
    assert [(v.field, v.description) for v in violations] == [
        ("settings.dim", "Input should be greater than 0"),
        ("kb[1].settings.learning_rate", "Input should be a valid number"),
    ]
    assert field_violations("/data/kb/train.tsv line 7: expected 3 tab-separated columns, found 2") == []


def test_invalid_arguments_carry_bad_request_details(stub, registered, nations_split, kb_names):
    with pytest.raises(grpc.RpcError) as raised:
        stub.RegisterKB(pb.RegisterKBRequest(name="details", data_dir=str(nations_split.out_dir / kb_names[0]), settings=to_struct({"dim": -1, "batch_size": 0})))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = dict(_bad_request(raised.value))
    assert set(fields) == {"settings.dim", "settings.batch_size"} and "greater than 0" in fields["settings.dim"]

    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(pb.PredictRequest(kb=kb_names[0], head="usa", tail="uk", relation="embassy"))
    assert _bad_request(raised.value) == [("tail", "give a head (to predict tails) or a tail (to predict heads), not both")]

    with pytest.raises(grpc.RpcError) as raised:  # NOT_FOUND: the message only
        stub.GetJob(pb.GetJobRequest(job_id="nope"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and rpc_status.from_call(raised.value) is None

"""Every RPC of the coordinator, found through gRPC reflection, answers an empty and random requests with a specific status.

The requests are built from the descriptors the server reflects (not from the generated stubs), so
an RPC added to the proto is fuzzed without touching this file, and fails here until its empty
request has an expected answer in ``EMPTY``. No answer may be UNKNOWN or INTERNAL (an error the
servicer did not map), and the server must still report SERVING afterwards.
"""

from __future__ import annotations

import math
import random

import grpc
import pytest
from google.protobuf import descriptor, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from kdmkb.coordinator.auth import SERVICE_NAME
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.services.wire import to_struct as struct

TIMEOUT = 60.0
RANDOM_REQUESTS = 6  # per RPC, beside the empty one
OK, INVALID, NOT_FOUND, PRECONDITION = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION
# What a random request may legitimately get; UNKNOWN, INTERNAL, UNAVAILABLE and DEADLINE_EXCEEDED never.
SPECIFIC = {OK, INVALID, NOT_FOUND, PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}

# The answer to each RPC's empty request.
EMPTY = {
    "RegisterKB": INVALID,
    "ListKBs": OK,
    "RegisterAlignment": INVALID,
    "CreateJob": INVALID,
    "StartJob": INVALID,
    "GetJob": INVALID,
    "ListJobs": OK,
    "WatchJob": INVALID,
    "StopJob": INVALID,
    "Evaluate": INVALID,
    "Predict": INVALID,
    "ExportEmbeddings": INVALID,
}

SETTING_NAMES = (
    "dim", "batch_size", "eval_batch_size", "negatives", "learning_rate", "threads", "device", "norm", "rounds", "steps_per_round",
    "eval_every", "checkpoint_every", "seed", "alpha", "top_k", "temperature", "score_dtype", "combination", "teacher", "exchange",
)  # fmt: skip
NASTY_STRINGS = ("", " ", "\x00", "\ufeffleft", "a\x1b[31mb", "\x7f", "../../etc/passwd", "/proc/self/status", "é" * 40, "x" * 5000, "usa\tembassy")


@pytest.fixture(scope="module")
def fuzz_kb(stub, nations_split, worker_settings, job_settings) -> dict:
    """A KB of its own ("fuzz", trained by a one-round job) so that random writes cannot touch the shared ones."""
    data_dir = str(nations_split.out_dir / "left")
    stub.RegisterKB(pb.RegisterKBRequest(name="fuzz", data_dir=data_dir, settings=struct(worker_settings)), timeout=TIMEOUT)
    job = stub.CreateJob(pb.CreateJobRequest(strategy="none", kbs=["fuzz"], settings=struct({**job_settings, "rounds": 1, "eval_every": 0})), timeout=TIMEOUT).job
    stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=TIMEOUT)
    assert list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT))[-1].state == pb.JOB_STATE_SUCCEEDED
    return {"name": "fuzz", "data_dir": data_dir, "job_id": job.job_id}


@pytest.fixture(scope="module")
def reflected(channel) -> list[descriptor.MethodDescriptor]:
    """The coordinator's methods as the server describes them."""
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    return list(pool.FindServiceByName(SERVICE_NAME).methods)


def random_string(rng: random.Random, known: tuple[str, ...]) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(known)
    if kind == 1:
        return rng.choice(NASTY_STRINGS)
    return "".join(chr(rng.choice((rng.randrange(0, 32), rng.randrange(32, 127), rng.randrange(127, 0x2FFF)))) for _ in range(rng.randrange(1, 40)))


def random_value(rng: random.Random, depth: int = 0):
    """A JSON-like value as a Struct holds one: numbers huge, negative, fractional or not finite, strings, lists, objects."""
    kind = rng.randrange(7 if depth < 2 else 5)
    if kind == 0:
        return rng.choice((0, -1, 1, 2**31, 2**63, -(2**63), 1e300, -1e300, 0.5, math.inf, -math.inf, math.nan))
    if kind == 1:
        return rng.randrange(-5, 5000)
    if kind == 2:
        return rng.choice((True, False, None))
    if kind in (3, 4):
        return random_string(rng, ("cpu", "cuda", "float16", "fuzz", "mean-kl"))
    if kind == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return random_settings(rng, depth + 1)


def random_settings(rng: random.Random, depth: int = 0) -> dict:
    names = SETTING_NAMES + ("", "\x00", "dimension")
    return {rng.choice(names): random_value(rng, depth) for _ in range(rng.randrange(1, 5))}


def random_request(message_class, rng: random.Random, known: tuple[str, ...]):
    """Every field of the request set at random; a Struct field gets random settings."""
    request = message_class()
    for field in message_class.DESCRIPTOR.fields:
        if rng.random() < 0.2:
            continue  # left unset
        if field.message_type is not None and field.message_type.full_name == "google.protobuf.Struct":
            getattr(request, field.name).update(random_settings(rng))
        elif field.type == field.TYPE_STRING:
            values = [random_string(rng, known) for _ in range(rng.randrange(4) if field.is_repeated else 1)]
            if field.is_repeated:
                getattr(request, field.name).extend(values)
            else:
                setattr(request, field.name, values[0])
        elif field.type == field.TYPE_BOOL:
            setattr(request, field.name, rng.random() < 0.5)
        elif field.type in (field.TYPE_INT32, field.TYPE_INT64, field.TYPE_SINT32, field.TYPE_SINT64):
            bits = 31 if field.type in (field.TYPE_INT32, field.TYPE_SINT32) else 63
            setattr(request, field.name, rng.choice((0, -1, 1, 10, 1001, 2**bits - 1, -(2**bits), rng.randrange(-(2**bits), 2**bits))))
        else:
            raise AssertionError(f"{message_class.DESCRIPTOR.name}.{field.name}: no generator for field type {field.type}; add one")
    return request


def call(channel, method: descriptor.MethodDescriptor, request) -> tuple[grpc.StatusCode, str]:
    """The status code and details of one call (a stream is read to its end)."""
    path = f"/{SERVICE_NAME}/{method.name}"
    response_class = message_factory.GetMessageClass(method.output_type)
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    callable_ = kind(path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_class.FromString)
    try:
        answer = callable_(request, timeout=TIMEOUT)
        if method.server_streaming:
            list(answer)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return OK, ""


def serving(channel) -> bool:
    health = health_pb2_grpc.HealthStub(channel)
    return health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10).status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_exactly_the_rpcs_with_an_expected_empty_answer(reflected):
    assert {method.name for method in reflected} == set(EMPTY)


def test_an_empty_request_gets_its_status(channel, reflected, fuzz_kb):
    for method in reflected:
        code, details = call(channel, method, message_factory.GetMessageClass(method.input_type)())
        assert code == EMPTY[method.name], (method.name, code, details)
        if code != OK:
            assert "empty" in details or "must" in details, (method.name, details)  # names what is missing
    assert serving(channel)


@pytest.mark.parametrize("seed", range(RANDOM_REQUESTS))
def test_random_requests_get_a_specific_status(channel, reflected, fuzz_kb, finished_job, seed):
    rng = random.Random(1300 + seed)
    known = ("fuzz", "nope", fuzz_kb["data_dir"], fuzz_kb["job_id"], finished_job.job_id, "usa", "embassy", "test", "valid", "none", "cooperative")
    for method in reflected:
        request = random_request(message_factory.GetMessageClass(method.input_type), rng, known)
        code, details = call(channel, method, request)
        assert code in SPECIFIC, (method.name, str(request)[:500], code, details)
        if code != OK:
            assert details and "Traceback" not in details, (method.name, code, details)
    assert serving(channel)

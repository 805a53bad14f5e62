"""Shared fixtures of the integration tests: one Ray, one coordinator behind a real gRPC server, tiny KBs.

Everything expensive is session-scoped: Ray starts once (about 10 s), the coordinator and its
gRPC server on 127.0.0.1:0 serve every test module, and the two nations KBs ("left", "right")
are registered and trained by one short cooperative job that the API tests inspect.

Run under ``scripts/loopback-only`` (``make test`` does): Ray must see only the loopback interface.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import ray

from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from kdmkb.services.wire import to_struct as struct
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.split import SplitSummary, split_dataset

RPC_TIMEOUT = 120.0

# Tiny but real: a nations KB trains a round of 5 steps in a few milliseconds.
WORKER_SETTINGS = {"dim": 16, "batch_size": 64, "negatives": 8, "learning_rate": 0.01}
JOB_SETTINGS = {"rounds": 3, "steps_per_round": 5, "eval_every": 1, "checkpoint_every": 0, "seed": 0, "top_k": 4}
KB_NAMES = ("left", "right")


@dataclass(frozen=True)
class FinishedJob:
    """The session's cooperative job: its id, every WatchJob event seen from StartJob on, and its final record."""

    job_id: str
    events: tuple
    job: pb.Job


def read_triples(folder: Path) -> set[tuple[str, str, str]]:
    """Every (head, relation, tail) a KB folder holds: train, valid, test and, if present, known.tsv (filter-only facts)."""
    triples = set()
    for name in ("train", "valid", "test", "known"):
        path = Path(folder) / f"{name}.tsv"
        if name == "known" and not path.is_file():
            continue
        with path.open(encoding="utf-8", newline="") as handle:
            triples.update(tuple(row) for row in csv.reader(handle, delimiter="\t") if row)
    return triples


def read_names(path: Path) -> list[str]:
    """The first column of a vocabulary file, in order."""
    return [line.split("\t")[0] for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="session")
def kb_triples():
    """:func:`read_triples`, as a fixture (test modules do not import conftest)."""
    return read_triples


@pytest.fixture(scope="session")
def vocabulary_names():
    """:func:`read_names`, as a fixture."""
    return read_names


@pytest.fixture(scope="session")
def kb_names() -> tuple[str, str]:
    return KB_NAMES


@pytest.fixture(scope="session")
def ray_session():
    """The one Ray of the test session (local, loopback only, no dashboard)."""
    from kdmkb.services.ray_runtime import ensure_ray

    ensure_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def worker_settings() -> dict:
    return dict(WORKER_SETTINGS)


@pytest.fixture(scope="session")
def job_settings() -> dict:
    return dict(JOB_SETTINGS)


@pytest.fixture(scope="session")
def nations_split(tmp_path_factory) -> SplitSummary:
    """The packaged nations dataset cut into two KBs, "left" and "right", with their alignment files."""
    out = tmp_path_factory.mktemp("nations") / "kbs"
    return split_dataset(dataset_dir("nations"), out, kbs=2, seed=0, names=list(KB_NAMES))


@pytest.fixture(scope="session")
def alignment_files(nations_split) -> tuple[Path, Path]:
    stem = nations_split.out_dir / "alignments" / f"{KB_NAMES[0]}__{KB_NAMES[1]}"
    return stem.with_name(stem.name + ".entities.tsv"), stem.with_name(stem.name + ".relations.tsv")


@pytest.fixture(scope="session")
def coordinator(ray_session):
    """An in-memory coordinator (no data directory) shared by every module."""
    from kdmkb.coordinator.service import Coordinator

    coordinator = Coordinator()
    yield coordinator
    coordinator.shutdown()


@pytest.fixture(scope="session")
def grpc_address(coordinator) -> str:
    from kdmkb.coordinator.server import start_server

    server, port = start_server(coordinator, "127.0.0.1:0")
    yield f"127.0.0.1:{port}"
    server.stop(grace=None).wait()


@pytest.fixture(scope="session")
def channel(grpc_address):
    channel = grpc.insecure_channel(grpc_address)
    grpc.channel_ready_future(channel).result(timeout=30)
    yield channel
    channel.close()


@pytest.fixture(scope="session")
def stub(channel) -> pb_grpc.CoordinatorStub:
    return pb_grpc.CoordinatorStub(channel)


@pytest.fixture(scope="session")
def registered(stub, nations_split, alignment_files, worker_settings) -> dict:
    """"left" and "right" registered over gRPC, with their alignment; returns the responses."""
    kbs = {}
    for name in KB_NAMES:
        request = pb.RegisterKBRequest(name=name, data_dir=str(nations_split.out_dir / name), worker_type="transe", settings=struct(worker_settings))
        kbs[name] = stub.RegisterKB(request, timeout=RPC_TIMEOUT).kb
    entities, relations = alignment_files
    alignment = stub.RegisterAlignment(
        pb.RegisterAlignmentRequest(kb_a=KB_NAMES[0], kb_b=KB_NAMES[1], entities_path=str(entities), relations_path=str(relations)), timeout=RPC_TIMEOUT
    ).alignment
    return {"kbs": kbs, "alignment": alignment}


@pytest.fixture(scope="session")
def finished_job(stub, registered, job_settings) -> FinishedJob:
    """A cooperative job on "left" and "right", created, started and watched to its end over gRPC."""
    job = stub.CreateJob(pb.CreateJobRequest(strategy="cooperative", kbs=list(KB_NAMES), settings=struct(job_settings)), timeout=RPC_TIMEOUT).job
    stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT)
    events = tuple(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT))
    final = stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=RPC_TIMEOUT).job
    return FinishedJob(job.job_id, events, final)

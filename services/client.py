"""A small gRPC client of the coordinator: what the CLI (and any Python user) drives jobs with."""

from __future__ import annotations

import itertools
from collections import namedtuple
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np

from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from kdmkb.services.config import JobFile
from kdmkb.services.tls import ClientTLS
from kdmkb.services.wire import to_struct

TERMINAL_STATES = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_STOPPED}
REPORT_KEYS = (("mrr", "mrr"), ("mr", "mr"), ("hits@1", "hits_at_1"), ("hits@3", "hits_at_3"), ("hits@10", "hits_at_10"))


def state_name(state: int) -> str:
    return pb.JobState.Name(state).removeprefix("JOB_STATE_")


def metrics_dict(message: pb.Metrics) -> dict:
    """The report's metrics; a retrieve-then-rerank ranking also names itself and its retriever's recall."""
    values = {key: getattr(message, field) for key, field in REPORT_KEYS}
    if message.ranking and message.ranking != "exact":
        values.update(ranking=message.ranking, retriever_recall=message.retriever_recall)
    if message.by_degree:
        values["by_degree"] = {b.degrees: {"num_queries": b.num_queries, "mrr": b.mrr, "hits@10": b.hits_at_10} for b in message.by_degree}
    return values


class _CallDetails(namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Sends ``authorization: Bearer <token>`` with every call (over TLS or plain loopback alike)."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = (*(details.metadata or ()), self.header)
        return _CallDetails(details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


def open_channel(address: str, token: str | None = None, tls: ClientTLS | None = None) -> grpc.Channel:
    """A channel to the coordinator: TLS when ``tls`` is given, with the token on every call when one is."""
    channel = grpc.secure_channel(address, tls.credentials()) if tls else grpc.insecure_channel(address)
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel


class CoordinatorClient:
    def __init__(self, address: str, timeout: float = 600.0, token: str | None = None, tls: ClientTLS | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.channel = open_channel(address, token, tls)
        self.stub = pb_grpc.CoordinatorStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def submit(self, job_file: JobFile, strategy: str | None = None, resume_unfinished: bool = False) -> pb.Job:
        """Registers the job file's KBs and alignments and creates its job (not started), or finds its unfinished one."""
        self.register(job_file)
        return self.create_job(job_file, strategy, resume_unfinished)

    def register(self, job_file: JobFile) -> None:
        """Registers the job file's KBs (one worker each) and alignments."""
        for kb in job_file.kb:
            self.stub.RegisterKB(
                pb.RegisterKBRequest(name=kb.name, data_dir=str(kb.data), worker_type=kb.worker_type, settings=to_struct(kb.settings), resource=kb.resource),
                timeout=self.timeout,
            )
        for alignment in job_file.alignment:
            self.stub.RegisterAlignment(
                pb.RegisterAlignmentRequest(
                    kb_a=alignment.kbs[0], kb_b=alignment.kbs[1], entities_path=str(alignment.entities or ""), relations_path=str(alignment.relations or "")
                ),
                timeout=self.timeout,
            )

    def create_job(self, job_file: JobFile, strategy: str | None = None, resume_unfinished: bool = False) -> pb.Job:
        """Creates the job file's job over its already registered KBs (not started).

        ``strategy`` overrides the file's; the file's strategy settings go with its own strategy only.
        ``resume_unfinished`` returns the same job's unfinished record instead, where there is one.
        """
        own = strategy in (None, job_file.strategy)
        request = pb.CreateJobRequest(
            strategy=job_file.strategy if own else strategy,
            kbs=[kb.name for kb in job_file.kb],
            settings=to_struct(job_file.job),
            strategy_settings=to_struct(job_file.strategy_settings if own else {}),
            resume_unfinished=resume_unfinished,
        )
        return self.stub.CreateJob(request, timeout=self.timeout).job

    def run(self, job_id: str, on_event: Callable[[pb.JobEvent], None] | None = None) -> pb.Job:
        """Starts the job and follows its progress stream until it ends.

        The stream opens first: once its first event (where the job stands) has arrived, the
        coordinator forwards every later one, the first rounds of a quick job included.
        """
        events = self.stub.WatchJob(pb.WatchJobRequest(job_id=job_id))
        first = next(events)
        self.stub.StartJob(pb.StartJobRequest(job_id=job_id), timeout=self.timeout)
        if first.state in TERMINAL_STATES:  # a stopped or failed job that StartJob resumes: follow it anew
            events = self.stub.WatchJob(pb.WatchJobRequest(job_id=job_id))
        else:
            events = itertools.chain([first], events)
        for event in events:
            if on_event:
                on_event(event)
            if event.state in TERMINAL_STATES:
                break
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=self.timeout).job

    def embeddings(self, kb: str) -> dict[str, tuple[list[str], np.ndarray]]:
        """The KB's embeddings by kind ("entity", "relation"): names and float32 vectors, row for row."""
        parts: dict[str, tuple[list, list]] = {}
        for chunk in self.stub.ExportEmbeddings(pb.ExportEmbeddingsRequest(kb=kb), timeout=self.timeout):
            names, vectors = parts.setdefault(chunk.kind, ([], []))
            names.extend(chunk.names)
            vectors.append(np.frombuffer(chunk.vectors, dtype="<f4").reshape(len(chunk.names), chunk.dim))
        return {kind: (names, np.concatenate(vectors)) for kind, (names, vectors) in parts.items()}

    def export(self, kb: str, path: Path) -> dict[str, int]:
        """Writes the KB's embeddings and names to an ``.npz`` file; returns the row counts."""
        parts = self.embeddings(kb)
        arrays = {}
        for kind, (names, vectors) in parts.items():
            arrays[f"{kind}_names"] = np.asarray(names)
            arrays[f"{kind}_vectors"] = vectors
        np.savez(path, **arrays)
        return {kind: len(names) for kind, (names, _) in parts.items()}


def job_report(job: pb.Job) -> dict:
    """The report's JSON: strategy, per KB the filtered test metrics, and for KBs whose teacher combination chose subsets of
    their teachers (dsom), the queries per subset (KBProgress.teacher_subsets)."""
    chosen = {kb: dict(sorted(job.progress[kb].teacher_subsets.items())) for kb in job.kbs if kb in job.progress and job.progress[kb].teacher_subsets}
    return {
        "job_id": job.job_id,
        "strategy": job.strategy,
        "state": state_name(job.state),
        "rounds": job.round,
        "kbs": {kb: metrics_dict(job.test_metrics[kb]) for kb in job.kbs if kb in job.test_metrics},
        **({"teacher_subsets": chosen} if chosen else {}),
    }


@contextmanager
def embedded_coordinator(data_dir: str | None = None, ray_address: str | None = None, data_roots: list[Path] | None = None):
    """A local Ray (or the cluster at ``ray_address``) and an in-process coordinator, reached over its own gRPC API on 127.0.0.1.

    ``data_roots``: where it may read KB folders and alignment files (default: anywhere).
    """
    from kdmkb.coordinator.server import start_server
    from kdmkb.coordinator.service import Coordinator
    from kdmkb.services.data_roots import DataRoots

    coordinator = Coordinator(data_dir, ray_address=ray_address, data_roots=DataRoots(data_roots))
    server, port = start_server(coordinator, "127.0.0.1:0")
    client = CoordinatorClient(f"127.0.0.1:{port}")
    try:
        yield client
    finally:
        coordinator.interrupt_jobs()
        client.close()
        server.stop(grace=1).wait()
        coordinator.shutdown()

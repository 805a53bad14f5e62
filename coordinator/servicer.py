"""The gRPC servicer: validate, call :class:`Coordinator`, map domain errors to status codes."""

from __future__ import annotations

import functools
import logging
import re
import time

import grpc
import numpy as np
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from kdmkb.coordinator.jobs import Job, JobEvent
from kdmkb.coordinator.service import Coordinator
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from kdmkb.services import metrics
from kdmkb.services.errors import ConfigError, DataError, LimitError, NotFoundError, PreconditionError, UnavailableError
from kdmkb.services.limits import StreamSlots
from kdmkb.services.wire import from_struct, to_struct

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # default size of an ExportEmbeddings chunk's vectors

STATUS = (
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (DataError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (LimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def _status(error: Exception) -> grpc.StatusCode:
    for kind, code in STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


# A message in the form every kdmkb error takes, "field.path: problem; other[0].field: problem".
FIELD = re.compile(r"([A-Za-z_][\w.\[\]-]*): ")


def field_violations(message: str) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The fields a message names, for the ``google.rpc.BadRequest`` detail that non-Python clients read."""
    return [
        error_details_pb2.BadRequest.FieldViolation(field=match.group(1), description=part[match.end() :])
        for part in message.split("; ")
        if (match := FIELD.match(part))
    ]


def _abort_naming_fields(context, code: grpc.StatusCode, message: str) -> None:
    """Aborts with the message and, where it names fields, a ``google.rpc.BadRequest`` of them in the status details."""
    violations = field_violations(message) if code == grpc.StatusCode.INVALID_ARGUMENT else []
    if not violations:
        context.abort(code, message)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=violations))
    context.abort_with_status(rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[detail])))


METRIC_FIELDS = ("mrr", "mr", "hits_at_1", "hits_at_3", "hits_at_10", "num_queries", "seconds", "ranking", "retriever_recall")


def metrics_message(values: dict | None) -> pb.Metrics:
    values = values or {}
    buckets = [pb.DegreeBucket(degrees=name, **bucket) for name, bucket in (values.get("by_degree") or {}).items()]
    return pb.Metrics(**{k: values[k] for k in METRIC_FIELDS if values.get(k) is not None}, by_degree=buckets)


def progress_message(values: dict) -> pb.KBProgress:
    return pb.KBProgress(
        loss=values.get("loss", 0.0),
        kd_loss=values.get("kd_loss", 0.0),
        steps=values.get("steps", 0),
        valid=metrics_message(values.get("valid")),
        soft_label_bytes_sent=values.get("soft_label_bytes_sent", 0),
        soft_label_bytes_received=values.get("soft_label_bytes_received", 0),
        query_bytes_sent=values.get("query_bytes_sent", 0),
        query_bytes_received=values.get("query_bytes_received", 0),
        train_triples=values.get("train_triples", 0),
        train_sequences=values.get("train_sequences", 0),
        train_seconds=values.get("train_seconds", 0.0),
        teacher_subsets=values.get("teacher_subsets", {}),
    )


def job_message(job: Job) -> pb.Job:
    return pb.Job(
        job_id=job.job_id,
        strategy=job.strategy,
        kbs=job.kbs,
        settings=to_struct(job.settings),
        strategy_settings=to_struct(job.strategy_settings),
        state=pb.JobState.Value(f"JOB_STATE_{job.state}"),
        round=job.round,
        total_rounds=job.total_rounds,
        error=job.error,
        progress={kb: progress_message(p) for kb, p in job.progress.items()},
        test_metrics={kb: metrics_message(m) for kb, m in job.test_metrics.items()},
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


def event_message(event: JobEvent) -> pb.JobEvent:
    return pb.JobEvent(
        job_id=event.job_id,
        state=pb.JobState.Value(f"JOB_STATE_{event.state}"),
        round=event.round,
        total_rounds=event.total_rounds,
        kind=event.kind,
        progress={kb: progress_message(p) for kb, p in event.progress.items()},
        round_seconds=event.round_seconds,
        message=event.message,
    )


def kb_message(values: dict) -> pb.KB:
    fields = {k: v for k, v in values.items() if k in pb.KB.DESCRIPTOR.fields_by_name and k != "settings"}
    return pb.KB(settings=to_struct(values.get("settings", {})), **fields)


def rpc(method):
    """Maps kdmkb errors to status codes (never a stack trace to the client) and records RPC metrics."""

    name = method.__name__

    def finish(code: grpc.StatusCode, started: float) -> None:
        metrics.RPC_REQUESTS.labels(name, code.name).inc()
        metrics.RPC_SECONDS.labels(name, code.name).observe(time.perf_counter() - started)

    def abort(context, error: Exception, started: float):
        code = _status(error)
        finish(code, started)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("%s failed", name)
            context.abort(code, f"internal error in {name}: {type(error).__name__}: {error}")
        _abort_naming_fields(context, code, str(error))

    if name in ("WatchJob", "ExportEmbeddings"):

        @functools.wraps(method)
        def streaming(self, request, context):
            started = time.perf_counter()
            try:
                yield from method(self, request, context)
            except Exception as error:  # noqa: BLE001
                abort(context, error, started)
            finish(grpc.StatusCode.OK, started)

        return streaming

    @functools.wraps(method)
    def unary(self, request, context):
        started = time.perf_counter()
        try:
            response = method(self, request, context)
        except Exception as error:  # noqa: BLE001
            abort(context, error, started)
        finish(grpc.StatusCode.OK, started)
        return response

    return unary


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.streams = StreamSlots(coordinator.limits.max_streams)  # WatchJob streams hold a server thread each

    @rpc
    def RegisterKB(self, request, context):
        kb = self.coordinator.register_kb(request.name, request.data_dir, request.worker_type, from_struct(request.settings), request.resource, request.force)
        return pb.RegisterKBResponse(kb=kb_message(kb))

    @rpc
    def ListKBs(self, request, context):
        return pb.ListKBsResponse(kbs=[kb_message(kb) for kb in self.coordinator.list_kbs()])

    @rpc
    def RegisterAlignment(self, request, context):
        result = self.coordinator.register_alignment(request.kb_a, request.kb_b, request.entities_path, request.relations_path)
        return pb.RegisterAlignmentResponse(alignment=pb.Alignment(**result))

    @rpc
    def CreateJob(self, request, context):
        job = self.coordinator.create_job(
            request.strategy, list(request.kbs), from_struct(request.settings), from_struct(request.strategy_settings, "strategy_settings"), request.resume_unfinished
        )
        return pb.CreateJobResponse(job=job_message(job))

    @rpc
    def StartJob(self, request, context):
        return pb.StartJobResponse(job=job_message(self.coordinator.start_job(request.job_id)))

    @rpc
    def GetJob(self, request, context):
        return pb.GetJobResponse(job=job_message(self.coordinator.job(request.job_id)))

    @rpc
    def ListJobs(self, request, context):
        return pb.ListJobsResponse(jobs=[job_message(job) for job in self.coordinator.list_jobs()])

    @rpc
    def WatchJob(self, request, context):
        with self.streams.open("WatchJob"):
            for event in self.coordinator.watch_job(request.job_id, is_active=context.is_active):
                yield event_message(event)

    @rpc
    def StopJob(self, request, context):
        return pb.StopJobResponse(job=job_message(self.coordinator.stop_job(request.job_id)))

    @rpc
    def Evaluate(self, request, context):
        return pb.EvaluateResponse(metrics=metrics_message(self.coordinator.evaluate(request.kb, request.split or "test")))

    @rpc
    def Predict(self, request, context):
        predictions = self.coordinator.predict(request.kb, request.head, request.relation, request.k or 10, tail=request.tail)
        return pb.PredictResponse(predictions=[pb.Prediction(**p) for p in predictions])

    @rpc
    def ExportEmbeddings(self, request, context):
        if request.chunk_rows < 0:
            raise ConfigError(f"chunk_rows: must be positive, got {request.chunk_rows}")
        for kind, (names, vectors) in self.coordinator.export(request.kb).items():
            vectors = np.ascontiguousarray(vectors, dtype="<f4")
            # By default a chunk stays near CHUNK_BYTES whatever the width: 4096 rows of wide
            # embeddings would exceed the 4 MB a gRPC client accepts by default.
            rows = request.chunk_rows or max(1, min(4096, CHUNK_BYTES // (4 * max(1, vectors.shape[1]))))
            for start in range(0, len(names), rows):
                yield pb.ExportEmbeddingsResponse(kind=kind, names=names[start : start + rows], vectors=vectors[start : start + rows].tobytes(), dim=vectors.shape[1])

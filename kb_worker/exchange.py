"""Encoding and decoding of the two messages that cross a KB boundary (``protos/kdmkb/exchange/v1``).

``SoftLabels``: a teacher's scores over candidates for queries (pushed from its own batches, or
answering a student). ``Queries``: a student's own training queries, asked of one teacher (pull).
Both speak alignment ids only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from kdmkb.kb_worker.shared_lists import is_shared, shared
from kdmkb.kb_worker.worker_types.base import QueryKind
from kdmkb.protos.kdmkb.exchange.v1 import queries_pb2, soft_labels_pb2 as pb
from kdmkb.services.errors import LimitError

_DTYPES = {
    pb.Tensor.DTYPE_INT32: np.dtype("<i4"),
    pb.Tensor.DTYPE_INT64: np.dtype("<i8"),
    pb.Tensor.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.Tensor.DTYPE_FLOAT32: np.dtype("<f4"),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}

# How a teacher picks the candidates it scores for a student's queries (queries.proto).
TEACHER_TOP_K = queries_pb2.CANDIDATE_RULE_TEACHER_TOP_K
LISTED = queries_pb2.CANDIDATE_RULE_LISTED
ALL_ALIGNED = queries_pb2.CANDIDATE_RULE_ALL_ALIGNED
LISTED_WITH_TAIL = queries_pb2.CANDIDATE_RULE_LISTED_WITH_TAIL
CANDIDATE_RULES = {"top-k": TEACHER_TOP_K, "listed": LISTED, "all": ALL_ALIGNED, "shared": LISTED_WITH_TAIL}


def fill_tensor(tensor: pb.Tensor, array: np.ndarray) -> None:
    """Writes ``array`` into a message's ``Tensor`` field in place: building a submessage and
    assigning it copies its bytes again (protobuf's upb), three copies of a full answer's 116 MB."""
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<")
    if dtype not in _CODES:
        raise TypeError(f"unsupported dtype {array.dtype} in an exchange tensor")
    tensor.dtype = _CODES[dtype]
    tensor.shape[:] = array.shape
    tensor.data = array.astype(dtype, copy=False).tobytes()


def from_tensor(tensor: pb.Tensor) -> np.ndarray:
    if tensor.dtype not in _DTYPES:
        raise ValueError(f"exchange tensor has unknown dtype code {tensor.dtype}")
    array = np.frombuffer(tensor.data, dtype=_DTYPES[tensor.dtype])
    return array.reshape(tuple(tensor.shape))


def _ids(array: np.ndarray) -> np.ndarray:
    """Alignment ids as int32 when they fit (every realistic KB): a third fewer bytes per candidate than int64."""
    small = np.iinfo(np.int32)
    fits = array.size == 0 or (int(array.min()) >= small.min and int(array.max()) <= small.max)
    return array.astype(np.int32 if fits else np.int64, copy=False)


def _shared_row(candidates: np.ndarray) -> np.ndarray:
    """One row when every query has the same candidates (relation queries rank every relation), else all rows."""
    if is_shared(candidates) or (len(candidates) > 1 and bool((candidates == candidates[:1]).all())):
        return candidates[:1]
    return candidates


def _broadcast_shared(candidates: np.ndarray, rows: int) -> np.ndarray:
    """A shared candidate row as every query's (read-only)."""
    if candidates.ndim == 2 and candidates.shape[0] == 1 and rows != 1:
        return shared(candidates, rows)
    return candidates


# -- SoftLabels ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SoftLabelBlock:
    """One kind of query at one step: alignment-id queries, candidates and the teacher's logits."""

    kind: QueryKind
    step: int
    queries: np.ndarray  # int [q, 2]
    candidates: np.ndarray  # int [q, c]
    scores: np.ndarray  # float [q, c], or [q, c + 1] with a tail bucket
    tail: bool = False  # the last score column is the log of the mass of every other shared entity


@dataclass(frozen=True)
class SoftLabels:
    """A decoded ``SoftLabels`` message."""

    job_id: str
    round: int
    teacher: str
    student: str
    blocks: tuple[SoftLabelBlock, ...]


def _header(labels: SoftLabels) -> bytes:
    return pb.SoftLabels(job_id=labels.job_id, round=labels.round, teacher=labels.teacher, student=labels.student).SerializeToString()


def _steps(labels: SoftLabels) -> dict[int, bytes]:
    """Each step's blocks, in step order, as serialised ``blocks`` fields.

    A header followed by any of them is a ``SoftLabels`` message (protobuf appends repeated
    fields when serialised messages are concatenated), so a message's size is their sum.
    """
    by_step: dict[int, pb.SoftLabels] = defaultdict(pb.SoftLabels)
    for block in labels.blocks:
        added = by_step[block.step].blocks.add(kind=int(block.kind), step=block.step, tail_bucket=block.tail)
        fill_tensor(added.queries, _ids(block.queries))
        fill_tensor(added.candidates, _ids(_shared_row(block.candidates)))
        fill_tensor(added.scores, block.scores)
    return {step: message.SerializeToString() for step, message in sorted(by_step.items())}


def encode(labels: SoftLabels) -> bytes:
    """One message, whatever its size."""
    return _header(labels) + b"".join(_steps(labels).values())


def encode_messages(labels: SoftLabels, max_bytes: int) -> list[bytes]:
    """The labels as the fewest messages of at most ``max_bytes`` each that cut them between steps, in step order.

    Each message is self-contained (the header, then whole steps), so that none is larger than
    what a Ray object may be; one step over ``max_bytes`` alone raises :class:`LimitError`.
    """
    header = _header(labels)
    messages: list[list[bytes]] = [[header]]
    size = len(header)
    for part in _steps(labels).values():
        if len(header) + len(part) > max_bytes:
            raise LimitError(
                f"one step's soft labels from KB {labels.teacher!r} for {labels.student!r} are {len(header) + len(part)} bytes, over the server's limit "
                f"max_label_bytes = {max_bytes} (a step's labels travel as one message: raise the limit, or make a step's labels smaller with batch_size or top_k)"
            )
        if size + len(part) > max_bytes:
            messages.append([header])
            size = len(header)
        messages[-1].append(part)
        size += len(part)
    return [b"".join(parts) for parts in messages]


def decode(payload: bytes) -> SoftLabels:
    """The soft labels, with a shared candidate row broadcast to every query (read-only)."""
    message = pb.SoftLabels.FromString(payload)
    blocks = []
    for block in message.blocks:
        queries, candidates, scores = (from_tensor(t) for t in (block.queries, block.candidates, block.scores))
        if scores.ndim == 2:
            candidates = _broadcast_shared(candidates, scores.shape[0])
        listed = scores.shape[:1] + (scores.shape[1] - 1,) if block.tail_bucket and scores.ndim == 2 else scores.shape
        if queries.ndim != 2 or queries.shape[1] != 2 or candidates.shape != listed or candidates.shape[:1] != queries.shape[:1]:
            raise ValueError(f"malformed SoftLabels block from {message.teacher!r}: shapes {queries.shape}, {candidates.shape}, {scores.shape}")
        blocks.append(SoftLabelBlock(QueryKind(block.kind), block.step, queries, candidates, scores, block.tail_bucket))
    return SoftLabels(message.job_id, message.round, message.teacher, message.student, tuple(blocks))


# -- Queries -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueryBlock:
    """One kind of a student's queries at one of its steps, in alignment ids; ``candidates`` only for the LISTED rules."""

    kind: QueryKind
    step: int
    queries: np.ndarray  # int [q, 2]
    candidates: np.ndarray | None = None  # int [q, c]


@dataclass(frozen=True)
class Queries:
    """A decoded ``Queries`` message."""

    job_id: str
    round: int
    student: str
    teacher: str
    rule: int
    top_k: int
    blocks: tuple[QueryBlock, ...]


def encode_queries(queries: Queries) -> bytes:
    message = queries_pb2.Queries(
        job_id=queries.job_id, round=queries.round, student=queries.student, teacher=queries.teacher, rule=queries.rule, top_k=queries.top_k
    )
    for block in queries.blocks:
        added = message.blocks.add(kind=int(block.kind), step=block.step)
        fill_tensor(added.queries, _ids(block.queries))
        if block.candidates is not None:
            fill_tensor(added.candidates, _ids(_shared_row(block.candidates)))
    return message.SerializeToString()


def decode_queries(payload: bytes) -> Queries:
    """The queries; a malformed message raises ``ValueError`` naming the student."""
    message = queries_pb2.Queries.FromString(payload)
    if message.rule not in (TEACHER_TOP_K, LISTED, ALL_ALIGNED, LISTED_WITH_TAIL):
        raise ValueError(f"Queries from {message.student!r} name no candidate rule")
    if message.rule == TEACHER_TOP_K and message.top_k <= 0:
        raise ValueError(f"Queries from {message.student!r} ask for a top-k of {message.top_k}")
    blocks = []
    for block in message.blocks:
        queries = from_tensor(block.queries)
        if queries.ndim != 2 or queries.shape[1] != 2:
            raise ValueError(f"malformed Queries block from {message.student!r}: queries of shape {queries.shape}")
        candidates = None
        if message.rule in (LISTED, LISTED_WITH_TAIL):
            candidates = _broadcast_shared(from_tensor(block.candidates), queries.shape[0])
            if candidates.ndim != 2 or candidates.shape[0] != queries.shape[0] or candidates.shape[1] < 1:
                raise ValueError(f"malformed Queries block from {message.student!r}: candidates of shape {candidates.shape} for {queries.shape[0]} queries")
        blocks.append(QueryBlock(QueryKind(block.kind), block.step, queries, candidates))
    return Queries(message.job_id, message.round, message.student, message.teacher, message.rule, message.top_k, tuple(blocks))

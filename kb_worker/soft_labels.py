"""Encoding and decoding the ``SoftLabels`` message: the only payload that leaves a KB worker."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdmkb.protos.kdmkb.exchange.v1 import soft_labels_pb2 as pb
from kdmkb.kb_worker.worker_types.base import QueryKind

_DTYPES = {
    pb.Tensor.DTYPE_INT32: np.dtype("<i4"),
    pb.Tensor.DTYPE_INT64: np.dtype("<i8"),
    pb.Tensor.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.Tensor.DTYPE_FLOAT32: np.dtype("<f4"),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


def to_tensor(array: np.ndarray) -> pb.Tensor:
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<")
    if dtype not in _CODES:
        raise TypeError(f"unsupported dtype {array.dtype} in a SoftLabels tensor")
    return pb.Tensor(dtype=_CODES[dtype], shape=list(array.shape), data=array.astype(dtype, copy=False).tobytes())


def from_tensor(tensor: pb.Tensor) -> np.ndarray:
    if tensor.dtype not in _DTYPES:
        raise ValueError(f"SoftLabels tensor has unknown dtype code {tensor.dtype}")
    array = np.frombuffer(tensor.data, dtype=_DTYPES[tensor.dtype])
    return array.reshape(tuple(tensor.shape))


@dataclass(frozen=True)
class Block:
    """One kind of query at one step: alignment-id queries, candidates and teacher scores."""

    kind: QueryKind
    step: int
    queries: np.ndarray  # int [q, 2]
    candidates: np.ndarray  # int [q, c]
    scores: np.ndarray  # float [q, c]


@dataclass(frozen=True)
class Lesson:
    """A decoded ``SoftLabels`` message."""

    job_id: str
    round: int
    teacher: str
    student: str
    blocks: tuple[Block, ...]


def _ids(array: np.ndarray) -> np.ndarray:
    """Alignment ids as int32 when they fit (every realistic KB): a third fewer bytes per candidate than int64."""
    small = np.iinfo(np.int32)
    fits = array.size == 0 or (int(array.min()) >= small.min and int(array.max()) <= small.max)
    return array.astype(np.int32 if fits else np.int64, copy=False)


def _shared_row(candidates: np.ndarray) -> np.ndarray:
    """One row when every query has the same candidates (relation queries rank every relation), else all rows."""
    if len(candidates) > 1 and bool((candidates == candidates[:1]).all()):
        return candidates[:1]
    return candidates


def encode(lesson: Lesson) -> bytes:
    message = pb.SoftLabels(job_id=lesson.job_id, round=lesson.round, teacher=lesson.teacher, student=lesson.student)
    for block in lesson.blocks:
        message.blocks.add(
            kind=int(block.kind),
            step=block.step,
            queries=to_tensor(_ids(block.queries)),
            candidates=to_tensor(_ids(_shared_row(block.candidates))),
            scores=to_tensor(block.scores),
        )
    return message.SerializeToString()


def decode(payload: bytes) -> Lesson:
    """The lesson, with a shared candidate row broadcast to every query (read-only)."""
    message = pb.SoftLabels.FromString(payload)
    blocks = []
    for block in message.blocks:
        queries, candidates, scores = (from_tensor(t) for t in (block.queries, block.candidates, block.scores))
        shared = candidates.ndim == 2 and scores.ndim == 2 and candidates.shape == (1, scores.shape[1])
        if shared:
            candidates = np.broadcast_to(candidates, scores.shape)
        if queries.ndim != 2 or queries.shape[1] != 2 or candidates.shape != scores.shape or candidates.shape[:1] != queries.shape[:1]:
            raise ValueError(f"malformed SoftLabels block from {message.teacher!r}: shapes {queries.shape}, {candidates.shape}, {scores.shape}")
        blocks.append(Block(QueryKind(block.kind), block.step, queries, candidates, scores))
    return Lesson(message.job_id, message.round, message.teacher, message.student, tuple(blocks))

from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUERY_KIND_UNSPECIFIED: _ClassVar[QueryKind]
    QUERY_KIND_TAIL: _ClassVar[QueryKind]
    QUERY_KIND_HEAD: _ClassVar[QueryKind]
    QUERY_KIND_RELATION: _ClassVar[QueryKind]
QUERY_KIND_UNSPECIFIED: QueryKind
QUERY_KIND_TAIL: QueryKind
QUERY_KIND_HEAD: QueryKind
QUERY_KIND_RELATION: QueryKind

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DTYPE_UNSPECIFIED: _ClassVar[Tensor.DType]
        DTYPE_INT32: _ClassVar[Tensor.DType]
        DTYPE_INT64: _ClassVar[Tensor.DType]
        DTYPE_FLOAT16: _ClassVar[Tensor.DType]
        DTYPE_FLOAT32: _ClassVar[Tensor.DType]
    DTYPE_UNSPECIFIED: Tensor.DType
    DTYPE_INT32: Tensor.DType
    DTYPE_INT64: Tensor.DType
    DTYPE_FLOAT16: Tensor.DType
    DTYPE_FLOAT32: Tensor.DType
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: Tensor.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[Tensor.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SoftLabelBlock(_message.Message):
    __slots__ = ("kind", "step", "queries", "candidates", "scores", "tail_bucket")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TAIL_BUCKET_FIELD_NUMBER: _ClassVar[int]
    kind: QueryKind
    step: int
    queries: Tensor
    candidates: Tensor
    scores: Tensor
    tail_bucket: bool
    def __init__(self, kind: _Optional[_Union[QueryKind, str]] = ..., step: _Optional[int] = ..., queries: _Optional[_Union[Tensor, _Mapping]] = ..., candidates: _Optional[_Union[Tensor, _Mapping]] = ..., scores: _Optional[_Union[Tensor, _Mapping]] = ..., tail_bucket: _Optional[bool] = ...) -> None: ...

class SoftLabels(_message.Message):
    __slots__ = ("job_id", "round", "teacher", "student", "blocks")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    teacher: str
    student: str
    blocks: _containers.RepeatedCompositeFieldContainer[SoftLabelBlock]
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., teacher: _Optional[str] = ..., student: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[SoftLabelBlock, _Mapping]]] = ...) -> None: ...

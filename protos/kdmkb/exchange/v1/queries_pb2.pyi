from kdmkb.protos.kdmkb.exchange.v1 import soft_labels_pb2 as _soft_labels_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CandidateRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANDIDATE_RULE_UNSPECIFIED: _ClassVar[CandidateRule]
    CANDIDATE_RULE_TEACHER_TOP_K: _ClassVar[CandidateRule]
    CANDIDATE_RULE_LISTED: _ClassVar[CandidateRule]
    CANDIDATE_RULE_ALL_ALIGNED: _ClassVar[CandidateRule]
    CANDIDATE_RULE_LISTED_WITH_TAIL: _ClassVar[CandidateRule]
CANDIDATE_RULE_UNSPECIFIED: CandidateRule
CANDIDATE_RULE_TEACHER_TOP_K: CandidateRule
CANDIDATE_RULE_LISTED: CandidateRule
CANDIDATE_RULE_ALL_ALIGNED: CandidateRule
CANDIDATE_RULE_LISTED_WITH_TAIL: CandidateRule

class QueryBlock(_message.Message):
    __slots__ = ("kind", "step", "queries", "candidates")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    kind: _soft_labels_pb2.QueryKind
    step: int
    queries: _soft_labels_pb2.Tensor
    candidates: _soft_labels_pb2.Tensor
    def __init__(self, kind: _Optional[_Union[_soft_labels_pb2.QueryKind, str]] = ..., step: _Optional[int] = ..., queries: _Optional[_Union[_soft_labels_pb2.Tensor, _Mapping]] = ..., candidates: _Optional[_Union[_soft_labels_pb2.Tensor, _Mapping]] = ...) -> None: ...

class Queries(_message.Message):
    __slots__ = ("job_id", "round", "student", "teacher", "rule", "top_k", "blocks")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    student: str
    teacher: str
    rule: CandidateRule
    top_k: int
    blocks: _containers.RepeatedCompositeFieldContainer[QueryBlock]
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., student: _Optional[str] = ..., teacher: _Optional[str] = ..., rule: _Optional[_Union[CandidateRule, str]] = ..., top_k: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[QueryBlock, _Mapping]]] = ...) -> None: ...

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_CREATED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_STOPPED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_CREATED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_STOPPED: JobState

class KB(_message.Message):
    __slots__ = ("name", "data_dir", "worker_type", "settings", "resource", "num_entities", "num_relations", "num_train", "num_valid", "num_test", "busy_with_job", "metrics_address", "healthy", "unhealthy_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_DIR_FIELD_NUMBER: _ClassVar[int]
    WORKER_TYPE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    NUM_ENTITIES_FIELD_NUMBER: _ClassVar[int]
    NUM_RELATIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_TRAIN_FIELD_NUMBER: _ClassVar[int]
    NUM_VALID_FIELD_NUMBER: _ClassVar[int]
    NUM_TEST_FIELD_NUMBER: _ClassVar[int]
    BUSY_WITH_JOB_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    data_dir: str
    worker_type: str
    settings: _struct_pb2.Struct
    resource: str
    num_entities: int
    num_relations: int
    num_train: int
    num_valid: int
    num_test: int
    busy_with_job: str
    metrics_address: str
    healthy: bool
    unhealthy_reason: str
    def __init__(self, name: _Optional[str] = ..., data_dir: _Optional[str] = ..., worker_type: _Optional[str] = ..., settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., resource: _Optional[str] = ..., num_entities: _Optional[int] = ..., num_relations: _Optional[int] = ..., num_train: _Optional[int] = ..., num_valid: _Optional[int] = ..., num_test: _Optional[int] = ..., busy_with_job: _Optional[str] = ..., metrics_address: _Optional[str] = ..., healthy: _Optional[bool] = ..., unhealthy_reason: _Optional[str] = ...) -> None: ...

class RegisterKBRequest(_message.Message):
    __slots__ = ("name", "data_dir", "worker_type", "settings", "resource", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_DIR_FIELD_NUMBER: _ClassVar[int]
    WORKER_TYPE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    data_dir: str
    worker_type: str
    settings: _struct_pb2.Struct
    resource: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., data_dir: _Optional[str] = ..., worker_type: _Optional[str] = ..., settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., resource: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RegisterKBResponse(_message.Message):
    __slots__ = ("kb",)
    KB_FIELD_NUMBER: _ClassVar[int]
    kb: KB
    def __init__(self, kb: _Optional[_Union[KB, _Mapping]] = ...) -> None: ...

class ListKBsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKBsResponse(_message.Message):
    __slots__ = ("kbs",)
    KBS_FIELD_NUMBER: _ClassVar[int]
    kbs: _containers.RepeatedCompositeFieldContainer[KB]
    def __init__(self, kbs: _Optional[_Iterable[_Union[KB, _Mapping]]] = ...) -> None: ...

class Alignment(_message.Message):
    __slots__ = ("kb_a", "kb_b", "entities_path", "relations_path", "num_entity_pairs", "num_relation_pairs")
    KB_A_FIELD_NUMBER: _ClassVar[int]
    KB_B_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_PATH_FIELD_NUMBER: _ClassVar[int]
    RELATIONS_PATH_FIELD_NUMBER: _ClassVar[int]
    NUM_ENTITY_PAIRS_FIELD_NUMBER: _ClassVar[int]
    NUM_RELATION_PAIRS_FIELD_NUMBER: _ClassVar[int]
    kb_a: str
    kb_b: str
    entities_path: str
    relations_path: str
    num_entity_pairs: int
    num_relation_pairs: int
    def __init__(self, kb_a: _Optional[str] = ..., kb_b: _Optional[str] = ..., entities_path: _Optional[str] = ..., relations_path: _Optional[str] = ..., num_entity_pairs: _Optional[int] = ..., num_relation_pairs: _Optional[int] = ...) -> None: ...

class RegisterAlignmentRequest(_message.Message):
    __slots__ = ("kb_a", "kb_b", "entities_path", "relations_path")
    KB_A_FIELD_NUMBER: _ClassVar[int]
    KB_B_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_PATH_FIELD_NUMBER: _ClassVar[int]
    RELATIONS_PATH_FIELD_NUMBER: _ClassVar[int]
    kb_a: str
    kb_b: str
    entities_path: str
    relations_path: str
    def __init__(self, kb_a: _Optional[str] = ..., kb_b: _Optional[str] = ..., entities_path: _Optional[str] = ..., relations_path: _Optional[str] = ...) -> None: ...

class RegisterAlignmentResponse(_message.Message):
    __slots__ = ("alignment",)
    ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    alignment: Alignment
    def __init__(self, alignment: _Optional[_Union[Alignment, _Mapping]] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("mrr", "mr", "hits_at_1", "hits_at_3", "hits_at_10", "num_queries", "seconds", "ranking", "retriever_recall", "by_degree")
    MRR_FIELD_NUMBER: _ClassVar[int]
    MR_FIELD_NUMBER: _ClassVar[int]
    HITS_AT_1_FIELD_NUMBER: _ClassVar[int]
    HITS_AT_3_FIELD_NUMBER: _ClassVar[int]
    HITS_AT_10_FIELD_NUMBER: _ClassVar[int]
    NUM_QUERIES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    RETRIEVER_RECALL_FIELD_NUMBER: _ClassVar[int]
    BY_DEGREE_FIELD_NUMBER: _ClassVar[int]
    mrr: float
    mr: float
    hits_at_1: float
    hits_at_3: float
    hits_at_10: float
    num_queries: int
    seconds: float
    ranking: str
    retriever_recall: float
    by_degree: _containers.RepeatedCompositeFieldContainer[DegreeBucket]
    def __init__(self, mrr: _Optional[float] = ..., mr: _Optional[float] = ..., hits_at_1: _Optional[float] = ..., hits_at_3: _Optional[float] = ..., hits_at_10: _Optional[float] = ..., num_queries: _Optional[int] = ..., seconds: _Optional[float] = ..., ranking: _Optional[str] = ..., retriever_recall: _Optional[float] = ..., by_degree: _Optional[_Iterable[_Union[DegreeBucket, _Mapping]]] = ...) -> None: ...

class DegreeBucket(_message.Message):
    __slots__ = ("degrees", "num_queries", "mrr", "hits_at_10")
    DEGREES_FIELD_NUMBER: _ClassVar[int]
    NUM_QUERIES_FIELD_NUMBER: _ClassVar[int]
    MRR_FIELD_NUMBER: _ClassVar[int]
    HITS_AT_10_FIELD_NUMBER: _ClassVar[int]
    degrees: str
    num_queries: int
    mrr: float
    hits_at_10: float
    def __init__(self, degrees: _Optional[str] = ..., num_queries: _Optional[int] = ..., mrr: _Optional[float] = ..., hits_at_10: _Optional[float] = ...) -> None: ...

class KBProgress(_message.Message):
    __slots__ = ("loss", "kd_loss", "steps", "valid", "soft_label_bytes_sent", "soft_label_bytes_received", "query_bytes_sent", "query_bytes_received", "train_triples", "train_sequences", "train_seconds", "teacher_subsets")
    class TeacherSubsetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LOSS_FIELD_NUMBER: _ClassVar[int]
    KD_LOSS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    SOFT_LABEL_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    SOFT_LABEL_BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    QUERY_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    QUERY_BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TRIPLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TEACHER_SUBSETS_FIELD_NUMBER: _ClassVar[int]
    loss: float
    kd_loss: float
    steps: int
    valid: Metrics
    soft_label_bytes_sent: int
    soft_label_bytes_received: int
    query_bytes_sent: int
    query_bytes_received: int
    train_triples: int
    train_sequences: int
    train_seconds: float
    teacher_subsets: _containers.ScalarMap[str, int]
    def __init__(self, loss: _Optional[float] = ..., kd_loss: _Optional[float] = ..., steps: _Optional[int] = ..., valid: _Optional[_Union[Metrics, _Mapping]] = ..., soft_label_bytes_sent: _Optional[int] = ..., soft_label_bytes_received: _Optional[int] = ..., query_bytes_sent: _Optional[int] = ..., query_bytes_received: _Optional[int] = ..., train_triples: _Optional[int] = ..., train_sequences: _Optional[int] = ..., train_seconds: _Optional[float] = ..., teacher_subsets: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "strategy", "kbs", "settings", "state", "round", "total_rounds", "error", "progress", "test_metrics", "created_at", "updated_at", "strategy_settings")
    class ProgressEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: KBProgress
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[KBProgress, _Mapping]] = ...) -> None: ...
    class TestMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Metrics
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Metrics, _Mapping]] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    KBS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    strategy: str
    kbs: _containers.RepeatedScalarFieldContainer[str]
    settings: _struct_pb2.Struct
    state: JobState
    round: int
    total_rounds: int
    error: str
    progress: _containers.MessageMap[str, KBProgress]
    test_metrics: _containers.MessageMap[str, Metrics]
    created_at: float
    updated_at: float
    strategy_settings: _struct_pb2.Struct
    def __init__(self, job_id: _Optional[str] = ..., strategy: _Optional[str] = ..., kbs: _Optional[_Iterable[str]] = ..., settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., round: _Optional[int] = ..., total_rounds: _Optional[int] = ..., error: _Optional[str] = ..., progress: _Optional[_Mapping[str, KBProgress]] = ..., test_metrics: _Optional[_Mapping[str, Metrics]] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., strategy_settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("strategy", "kbs", "settings", "strategy_settings", "resume_unfinished")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    KBS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    RESUME_UNFINISHED_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    kbs: _containers.RepeatedScalarFieldContainer[str]
    settings: _struct_pb2.Struct
    strategy_settings: _struct_pb2.Struct
    resume_unfinished: bool
    def __init__(self, strategy: _Optional[str] = ..., kbs: _Optional[_Iterable[str]] = ..., settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., strategy_settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., resume_unfinished: _Optional[bool] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class StartJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class StartJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "state", "round", "total_rounds", "kind", "progress", "round_seconds", "message")
    class ProgressEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: KBProgress
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[KBProgress, _Mapping]] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ROUND_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    round: int
    total_rounds: int
    kind: str
    progress: _containers.MessageMap[str, KBProgress]
    round_seconds: float
    message: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., round: _Optional[int] = ..., total_rounds: _Optional[int] = ..., kind: _Optional[str] = ..., progress: _Optional[_Mapping[str, KBProgress]] = ..., round_seconds: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class StopJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class StopJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("kb", "split")
    KB_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    kb: str
    split: str
    def __init__(self, kb: _Optional[str] = ..., split: _Optional[str] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: Metrics
    def __init__(self, metrics: _Optional[_Union[Metrics, _Mapping]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("kb", "head", "relation", "k", "tail")
    KB_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    kb: str
    head: str
    relation: str
    k: int
    tail: str
    def __init__(self, kb: _Optional[str] = ..., head: _Optional[str] = ..., relation: _Optional[str] = ..., k: _Optional[int] = ..., tail: _Optional[str] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("entity", "score", "known")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    entity: str
    score: float
    known: bool
    def __init__(self, entity: _Optional[str] = ..., score: _Optional[float] = ..., known: _Optional[bool] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("predictions",)
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class ExportEmbeddingsRequest(_message.Message):
    __slots__ = ("kb", "chunk_rows")
    KB_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ROWS_FIELD_NUMBER: _ClassVar[int]
    kb: str
    chunk_rows: int
    def __init__(self, kb: _Optional[str] = ..., chunk_rows: _Optional[int] = ...) -> None: ...

class ExportEmbeddingsResponse(_message.Message):
    __slots__ = ("kind", "names", "vectors", "dim")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    kind: str
    names: _containers.RepeatedScalarFieldContainer[str]
    vectors: bytes
    dim: int
    def __init__(self, kind: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., vectors: _Optional[bytes] = ..., dim: _Optional[int] = ...) -> None: ...

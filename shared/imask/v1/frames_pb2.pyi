from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_JPEG: _ClassVar[Encoding]
    ENCODING_PNG: _ClassVar[Encoding]

class DropReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DROP_REASON_UNSPECIFIED: _ClassVar[DropReason]
    DROP_REASON_UNDECODABLE_ENVELOPE: _ClassVar[DropReason]
    DROP_REASON_SCHEMA_VERSION: _ClassVar[DropReason]
    DROP_REASON_INVALID_FIELDS: _ClassVar[DropReason]
    DROP_REASON_OVERSIZE: _ClassVar[DropReason]
    DROP_REASON_CORRUPT_IMAGE: _ClassVar[DropReason]
    DROP_REASON_DIMENSION_MISMATCH: _ClassVar[DropReason]
    DROP_REASON_INGEST_STALE: _ClassVar[DropReason]
    DROP_REASON_INTERNAL_ERROR: _ClassVar[DropReason]
ENCODING_UNSPECIFIED: Encoding
ENCODING_JPEG: Encoding
ENCODING_PNG: Encoding
DROP_REASON_UNSPECIFIED: DropReason
DROP_REASON_UNDECODABLE_ENVELOPE: DropReason
DROP_REASON_SCHEMA_VERSION: DropReason
DROP_REASON_INVALID_FIELDS: DropReason
DROP_REASON_OVERSIZE: DropReason
DROP_REASON_CORRUPT_IMAGE: DropReason
DROP_REASON_DIMENSION_MISMATCH: DropReason
DROP_REASON_INGEST_STALE: DropReason
DROP_REASON_INTERNAL_ERROR: DropReason

class Frame(_message.Message):
    __slots__ = ("schema_version", "camera_id", "seq", "capture_ts_us", "ingest_ts_us", "encoding", "width", "height", "data", "trace_id", "end_of_stream", "source_fps", "rotation")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TS_US_FIELD_NUMBER: _ClassVar[int]
    INGEST_TS_US_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FPS_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    camera_id: str
    seq: int
    capture_ts_us: int
    ingest_ts_us: int
    encoding: Encoding
    width: int
    height: int
    data: bytes
    trace_id: str
    end_of_stream: bool
    source_fps: float
    rotation: int
    def __init__(self, schema_version: _Optional[int] = ..., camera_id: _Optional[str] = ..., seq: _Optional[int] = ..., capture_ts_us: _Optional[int] = ..., ingest_ts_us: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., data: _Optional[bytes] = ..., trace_id: _Optional[str] = ..., end_of_stream: _Optional[bool] = ..., source_fps: _Optional[float] = ..., rotation: _Optional[int] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2", "score", "landmarks", "track_id", "held")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    landmarks: _containers.RepeatedCompositeFieldContainer[Point]
    track_id: int
    held: bool
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ..., score: _Optional[float] = ..., landmarks: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., track_id: _Optional[int] = ..., held: _Optional[bool] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("decode_ms", "queue_wait_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "mask_ms", "encode_ms", "publish_ms", "end_to_end_ms", "batch_size")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    MASK_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_MS_FIELD_NUMBER: _ClassVar[int]
    END_TO_END_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    queue_wait_ms: float
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    mask_ms: float
    encode_ms: float
    publish_ms: float
    end_to_end_ms: float
    batch_size: int
    def __init__(self, decode_ms: _Optional[float] = ..., queue_wait_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., postprocess_ms: _Optional[float] = ..., mask_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., publish_ms: _Optional[float] = ..., end_to_end_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class MaskedFrame(_message.Message):
    __slots__ = ("frame", "variant", "model_version", "faces_masked", "fail_closed", "fail_closed_reason", "masked_ts_us", "worker_id", "experiment", "arm")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FACES_MASKED_FIELD_NUMBER: _ClassVar[int]
    FAIL_CLOSED_FIELD_NUMBER: _ClassVar[int]
    FAIL_CLOSED_REASON_FIELD_NUMBER: _ClassVar[int]
    MASKED_TS_US_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    frame: Frame
    variant: str
    model_version: str
    faces_masked: int
    fail_closed: bool
    fail_closed_reason: str
    masked_ts_us: int
    worker_id: str
    experiment: str
    arm: str
    def __init__(self, frame: _Optional[_Union[Frame, _Mapping]] = ..., variant: _Optional[str] = ..., model_version: _Optional[str] = ..., faces_masked: _Optional[int] = ..., fail_closed: _Optional[bool] = ..., fail_closed_reason: _Optional[str] = ..., masked_ts_us: _Optional[int] = ..., worker_id: _Optional[str] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ...) -> None: ...

class FrameMeta(_message.Message):
    __slots__ = ("camera_id", "seq", "capture_ts_us", "ingest_ts_us", "masked_ts_us", "width", "height", "variant", "model_version", "worker_id", "execution_provider", "detections", "timings", "fail_closed", "fail_closed_reason", "faces_masked", "brightness", "trace_id", "end_of_stream", "experiment", "arm", "shadow", "orientation", "picture")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TS_US_FIELD_NUMBER: _ClassVar[int]
    INGEST_TS_US_FIELD_NUMBER: _ClassVar[int]
    MASKED_TS_US_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    FAIL_CLOSED_FIELD_NUMBER: _ClassVar[int]
    FAIL_CLOSED_REASON_FIELD_NUMBER: _ClassVar[int]
    FACES_MASKED_FIELD_NUMBER: _ClassVar[int]
    BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    PICTURE_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    seq: int
    capture_ts_us: int
    ingest_ts_us: int
    masked_ts_us: int
    width: int
    height: int
    variant: str
    model_version: str
    worker_id: str
    execution_provider: str
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    timings: StageTimings
    fail_closed: bool
    fail_closed_reason: str
    faces_masked: int
    brightness: float
    trace_id: str
    end_of_stream: bool
    experiment: str
    arm: str
    shadow: ShadowResult
    orientation: int
    picture: PictureStats
    def __init__(self, camera_id: _Optional[str] = ..., seq: _Optional[int] = ..., capture_ts_us: _Optional[int] = ..., ingest_ts_us: _Optional[int] = ..., masked_ts_us: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., variant: _Optional[str] = ..., model_version: _Optional[str] = ..., worker_id: _Optional[str] = ..., execution_provider: _Optional[str] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., fail_closed: _Optional[bool] = ..., fail_closed_reason: _Optional[str] = ..., faces_masked: _Optional[int] = ..., brightness: _Optional[float] = ..., trace_id: _Optional[str] = ..., end_of_stream: _Optional[bool] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ..., shadow: _Optional[_Union[ShadowResult, _Mapping]] = ..., orientation: _Optional[int] = ..., picture: _Optional[_Union[PictureStats, _Mapping]] = ...) -> None: ...

class PictureStats(_message.Message):
    __slots__ = ("luma_mean", "luma_std", "sharpness", "dark_fraction", "bright_fraction", "scene_change", "scene_offset")
    LUMA_MEAN_FIELD_NUMBER: _ClassVar[int]
    LUMA_STD_FIELD_NUMBER: _ClassVar[int]
    SHARPNESS_FIELD_NUMBER: _ClassVar[int]
    DARK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    BRIGHT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SCENE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    SCENE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    luma_mean: float
    luma_std: float
    sharpness: float
    dark_fraction: float
    bright_fraction: float
    scene_change: float
    scene_offset: float
    def __init__(self, luma_mean: _Optional[float] = ..., luma_std: _Optional[float] = ..., sharpness: _Optional[float] = ..., dark_fraction: _Optional[float] = ..., bright_fraction: _Optional[float] = ..., scene_change: _Optional[float] = ..., scene_offset: _Optional[float] = ...) -> None: ...

class ShadowResult(_message.Message):
    __slots__ = ("arm", "model_version", "faces", "matched", "only_served", "only_shadow", "inference_ms")
    ARM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    ONLY_SERVED_FIELD_NUMBER: _ClassVar[int]
    ONLY_SHADOW_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    arm: str
    model_version: str
    faces: int
    matched: int
    only_served: int
    only_shadow: int
    inference_ms: float
    def __init__(self, arm: _Optional[str] = ..., model_version: _Optional[str] = ..., faces: _Optional[int] = ..., matched: _Optional[int] = ..., only_served: _Optional[int] = ..., only_shadow: _Optional[int] = ..., inference_ms: _Optional[float] = ...) -> None: ...

class DropRecord(_message.Message):
    __slots__ = ("camera_id", "seq", "reason", "detail", "stage", "ts_us", "worker_id", "source_topic", "source_partition", "source_offset", "raw_size", "raw", "seq_unknown")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TS_US_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    RAW_SIZE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    SEQ_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    seq: int
    reason: DropReason
    detail: str
    stage: str
    ts_us: int
    worker_id: str
    source_topic: str
    source_partition: int
    source_offset: int
    raw_size: int
    raw: bytes
    seq_unknown: bool
    def __init__(self, camera_id: _Optional[str] = ..., seq: _Optional[int] = ..., reason: _Optional[_Union[DropReason, str]] = ..., detail: _Optional[str] = ..., stage: _Optional[str] = ..., ts_us: _Optional[int] = ..., worker_id: _Optional[str] = ..., source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., raw_size: _Optional[int] = ..., raw: _Optional[bytes] = ..., seq_unknown: _Optional[bool] = ...) -> None: ...

class RecordedMessage(_message.Message):
    __slots__ = ("timestamp_us", "key", "value", "topic", "partition", "offset")
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    timestamp_us: int
    key: bytes
    value: bytes
    topic: str
    partition: int
    offset: int
    def __init__(self, timestamp_us: _Optional[int] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PublishRequest(_message.Message):
    __slots__ = ("camera_id", "image", "capture_ts_us", "source_fps", "end_of_stream")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TS_US_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FPS_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    image: bytes
    capture_ts_us: int
    source_fps: float
    end_of_stream: bool
    def __init__(self, camera_id: _Optional[str] = ..., image: _Optional[bytes] = ..., capture_ts_us: _Optional[int] = ..., source_fps: _Optional[float] = ..., end_of_stream: _Optional[bool] = ...) -> None: ...

class PublishReply(_message.Message):
    __slots__ = ("accepted", "rejected", "errors", "next_seq")
    class NextSeqEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    next_seq: _containers.ScalarMap[str, int]
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ..., next_seq: _Optional[_Mapping[str, int]] = ...) -> None: ...

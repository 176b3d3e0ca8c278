from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetFeaturesRequest(_message.Message):
    __slots__ = ("cameras", "variant", "feature_service")
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    cameras: _containers.RepeatedScalarFieldContainer[str]
    variant: str
    feature_service: str
    def __init__(self, cameras: _Optional[_Iterable[str]] = ..., variant: _Optional[str] = ..., feature_service: _Optional[str] = ...) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("edges", "counts")
    EDGES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    edges: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, edges: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class FeatureValue(_message.Message):
    __slots__ = ("number", "text", "histogram")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    number: float
    text: str
    histogram: Histogram
    def __init__(self, number: _Optional[float] = ..., text: _Optional[str] = ..., histogram: _Optional[_Union[Histogram, _Mapping]] = ...) -> None: ...

class ViewFeatures(_message.Message):
    __slots__ = ("name", "version", "found", "window_end_ms", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureValue, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_MS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    found: bool
    window_end_ms: int
    values: _containers.MessageMap[str, FeatureValue]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., found: _Optional[bool] = ..., window_end_ms: _Optional[int] = ..., values: _Optional[_Mapping[str, FeatureValue]] = ...) -> None: ...

class CameraFeatures(_message.Message):
    __slots__ = ("camera_id", "variant", "found", "window_end_ms", "age_s", "fresh", "views")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_MS_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    variant: str
    found: bool
    window_end_ms: int
    age_s: float
    fresh: bool
    views: _containers.RepeatedCompositeFieldContainer[ViewFeatures]
    def __init__(self, camera_id: _Optional[str] = ..., variant: _Optional[str] = ..., found: _Optional[bool] = ..., window_end_ms: _Optional[int] = ..., age_s: _Optional[float] = ..., fresh: _Optional[bool] = ..., views: _Optional[_Iterable[_Union[ViewFeatures, _Mapping]]] = ...) -> None: ...

class GetFeaturesReply(_message.Message):
    __slots__ = ("feature_service", "stale_after_s", "now_ms", "cameras")
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    STALE_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    feature_service: str
    stale_after_s: float
    now_ms: int
    cameras: _containers.RepeatedCompositeFieldContainer[CameraFeatures]
    def __init__(self, feature_service: _Optional[str] = ..., stale_after_s: _Optional[float] = ..., now_ms: _Optional[int] = ..., cameras: _Optional[_Iterable[_Union[CameraFeatures, _Mapping]]] = ...) -> None: ...

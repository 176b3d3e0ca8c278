from imask.v1 import frames_pb2 as _frames_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MaskStyle(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_STYLE_UNSPECIFIED: _ClassVar[MaskStyle]
    MASK_STYLE_BLUR: _ClassVar[MaskStyle]
    MASK_STYLE_PIXELATE: _ClassVar[MaskStyle]
    MASK_STYLE_SOLID: _ClassVar[MaskStyle]

class MaskShape(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_SHAPE_UNSPECIFIED: _ClassVar[MaskShape]
    MASK_SHAPE_ELLIPSE: _ClassVar[MaskShape]
    MASK_SHAPE_BOX: _ClassVar[MaskShape]
MASK_STYLE_UNSPECIFIED: MaskStyle
MASK_STYLE_BLUR: MaskStyle
MASK_STYLE_PIXELATE: MaskStyle
MASK_STYLE_SOLID: MaskStyle
MASK_SHAPE_UNSPECIFIED: MaskShape
MASK_SHAPE_ELLIPSE: MaskShape
MASK_SHAPE_BOX: MaskShape

class MaskOptions(_message.Message):
    __slots__ = ("style", "shape", "mask_scale", "threshold", "detections_only")
    STYLE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    MASK_SCALE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_ONLY_FIELD_NUMBER: _ClassVar[int]
    style: MaskStyle
    shape: MaskShape
    mask_scale: float
    threshold: float
    detections_only: bool
    def __init__(self, style: _Optional[_Union[MaskStyle, str]] = ..., shape: _Optional[_Union[MaskShape, str]] = ..., mask_scale: _Optional[float] = ..., threshold: _Optional[float] = ..., detections_only: _Optional[bool] = ...) -> None: ...

class MaskRequest(_message.Message):
    __slots__ = ("image", "camera_id", "seq", "capture_ts_us", "options")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TS_US_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    camera_id: str
    seq: int
    capture_ts_us: int
    options: MaskOptions
    def __init__(self, image: _Optional[bytes] = ..., camera_id: _Optional[str] = ..., seq: _Optional[int] = ..., capture_ts_us: _Optional[int] = ..., options: _Optional[_Union[MaskOptions, _Mapping]] = ...) -> None: ...

class MaskReply(_message.Message):
    __slots__ = ("image", "detections", "timings", "variant", "model_version", "fail_closed", "fail_closed_reason", "seq", "width", "height")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FAIL_CLOSED_FIELD_NUMBER: _ClassVar[int]
    FAIL_CLOSED_REASON_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    detections: _containers.RepeatedCompositeFieldContainer[_frames_pb2.Detection]
    timings: _frames_pb2.StageTimings
    variant: str
    model_version: str
    fail_closed: bool
    fail_closed_reason: str
    seq: int
    width: int
    height: int
    def __init__(self, image: _Optional[bytes] = ..., detections: _Optional[_Iterable[_Union[_frames_pb2.Detection, _Mapping]]] = ..., timings: _Optional[_Union[_frames_pb2.StageTimings, _Mapping]] = ..., variant: _Optional[str] = ..., model_version: _Optional[str] = ..., fail_closed: _Optional[bool] = ..., fail_closed_reason: _Optional[str] = ..., seq: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

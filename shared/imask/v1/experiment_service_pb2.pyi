from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    STRATEGY_CANARY: _ClassVar[Strategy]
    STRATEGY_BLUE_GREEN: _ClassVar[Strategy]
    STRATEGY_ROLLING: _ClassVar[Strategy]

class ExperimentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENT_STATE_UNSPECIFIED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_RUNNING: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_PROMOTED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_ROLLED_BACK: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_STOPPED: _ClassVar[ExperimentState]
STRATEGY_UNSPECIFIED: Strategy
STRATEGY_CANARY: Strategy
STRATEGY_BLUE_GREEN: Strategy
STRATEGY_ROLLING: Strategy
EXPERIMENT_STATE_UNSPECIFIED: ExperimentState
EXPERIMENT_STATE_RUNNING: ExperimentState
EXPERIMENT_STATE_PROMOTED: ExperimentState
EXPERIMENT_STATE_ROLLED_BACK: ExperimentState
EXPERIMENT_STATE_STOPPED: ExperimentState

class Arm(_message.Message):
    __slots__ = ("name", "variant", "weight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    variant: str
    weight: float
    def __init__(self, name: _Optional[str] = ..., variant: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class RampStep(_message.Message):
    __slots__ = ("at_s", "weight")
    AT_S_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    at_s: float
    weight: float
    def __init__(self, at_s: _Optional[float] = ..., weight: _Optional[float] = ...) -> None: ...

class Guardrail(_message.Message):
    __slots__ = ("metric", "tolerance")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    tolerance: float
    def __init__(self, metric: _Optional[str] = ..., tolerance: _Optional[float] = ...) -> None: ...

class ExperimentSpec(_message.Message):
    __slots__ = ("name", "salt", "arms", "strategy", "ramp", "guardrails", "interval_s", "max_failed_checks", "shadow_sample", "min_cameras", "min_frames", "target")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    RAMP_FIELD_NUMBER: _ClassVar[int]
    GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILED_CHECKS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    MIN_CAMERAS_FIELD_NUMBER: _ClassVar[int]
    MIN_FRAMES_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    salt: str
    arms: _containers.RepeatedCompositeFieldContainer[Arm]
    strategy: Strategy
    ramp: _containers.RepeatedCompositeFieldContainer[RampStep]
    guardrails: _containers.RepeatedCompositeFieldContainer[Guardrail]
    interval_s: float
    max_failed_checks: int
    shadow_sample: float
    min_cameras: int
    min_frames: int
    target: str
    def __init__(self, name: _Optional[str] = ..., salt: _Optional[str] = ..., arms: _Optional[_Iterable[_Union[Arm, _Mapping]]] = ..., strategy: _Optional[_Union[Strategy, str]] = ..., ramp: _Optional[_Iterable[_Union[RampStep, _Mapping]]] = ..., guardrails: _Optional[_Iterable[_Union[Guardrail, _Mapping]]] = ..., interval_s: _Optional[float] = ..., max_failed_checks: _Optional[int] = ..., shadow_sample: _Optional[float] = ..., min_cameras: _Optional[int] = ..., min_frames: _Optional[int] = ..., target: _Optional[str] = ...) -> None: ...

class ExperimentStatus(_message.Message):
    __slots__ = ("spec", "state", "config_version", "effective_ts_us", "arms", "last_change")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TS_US_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    LAST_CHANGE_FIELD_NUMBER: _ClassVar[int]
    spec: ExperimentSpec
    state: ExperimentState
    config_version: int
    effective_ts_us: int
    arms: _containers.RepeatedCompositeFieldContainer[Arm]
    last_change: str
    def __init__(self, spec: _Optional[_Union[ExperimentSpec, _Mapping]] = ..., state: _Optional[_Union[ExperimentState, str]] = ..., config_version: _Optional[int] = ..., effective_ts_us: _Optional[int] = ..., arms: _Optional[_Iterable[_Union[Arm, _Mapping]]] = ..., last_change: _Optional[str] = ...) -> None: ...

class ArmResult(_message.Message):
    __slots__ = ("arm", "cameras", "frames", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ARM_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    arm: str
    cameras: int
    frames: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, arm: _Optional[str] = ..., cameras: _Optional[int] = ..., frames: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GuardrailResult(_message.Message):
    __slots__ = ("metric", "outcome", "estimate", "ci_low", "ci_high", "p_value")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    outcome: str
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    def __init__(self, metric: _Optional[str] = ..., outcome: _Optional[str] = ..., estimate: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., p_value: _Optional[float] = ...) -> None: ...

class ExperimentResults(_message.Message):
    __slots__ = ("status", "arms", "guardrails", "srm_cameras", "srm_frames", "srm_cameras_p", "srm_frames_p", "recommendation", "reasons", "failed_checks", "shadow")
    class ShadowEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    SRM_CAMERAS_FIELD_NUMBER: _ClassVar[int]
    SRM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    SRM_CAMERAS_P_FIELD_NUMBER: _ClassVar[int]
    SRM_FRAMES_P_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    FAILED_CHECKS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    status: ExperimentStatus
    arms: _containers.RepeatedCompositeFieldContainer[ArmResult]
    guardrails: _containers.RepeatedCompositeFieldContainer[GuardrailResult]
    srm_cameras: bool
    srm_frames: bool
    srm_cameras_p: float
    srm_frames_p: float
    recommendation: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    failed_checks: int
    shadow: _containers.ScalarMap[str, float]
    def __init__(self, status: _Optional[_Union[ExperimentStatus, _Mapping]] = ..., arms: _Optional[_Iterable[_Union[ArmResult, _Mapping]]] = ..., guardrails: _Optional[_Iterable[_Union[GuardrailResult, _Mapping]]] = ..., srm_cameras: _Optional[bool] = ..., srm_frames: _Optional[bool] = ..., srm_cameras_p: _Optional[float] = ..., srm_frames_p: _Optional[float] = ..., recommendation: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., failed_checks: _Optional[int] = ..., shadow: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ExperimentRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RampRequest(_message.Message):
    __slots__ = ("name", "weight", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    reason: str
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class ChangeRequest(_message.Message):
    __slots__ = ("name", "reason", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class AssignRequest(_message.Message):
    __slots__ = ("name", "camera_ids")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAMERA_IDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    camera_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., camera_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AssignReply(_message.Message):
    __slots__ = ("arms",)
    class ArmsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARMS_FIELD_NUMBER: _ClassVar[int]
    arms: _containers.ScalarMap[str, str]
    def __init__(self, arms: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ExperimentList(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentStatus]
    def __init__(self, experiments: _Optional[_Iterable[_Union[ExperimentStatus, _Mapping]]] = ...) -> None: ...

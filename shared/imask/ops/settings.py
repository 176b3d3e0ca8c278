"""Settings from the environment, one class per service, strict and self-describing.

Two namespaces, so that one .env file or ConfigMap can configure every service without collisions:

- IMASK_<FIELD>: settings every service that has them shares with the same meaning (the groups in SHARED_GROUPS:
  logging, the Kafka connection and topics, frame limits, the engine of worker and mask-api, gRPC security);
- IMASK_<SERVICE>_<FIELD>: a service's own settings (IMASK_WORKER_*, IMASK_INGEST_*, IMASK_RECORDER_*,
  IMASK_MASK_API_*), including its ops endpoint and its instance id, since every service has its own.

One name per idea: `instance_id` names a process in logs, records and alerts; `registry_uri` is the MLflow server of
the model registry; `redis_url` the fleet's Redis. Ports: 0 picks a free one; an optional listener is off at -1.
Counts, rates and sizes are off at 0. Relative paths are relative to the working directory: no default depends on
where the package is installed.

`env_name` is the one place that decides a field's variable. Every field has a description that `--help`
prints. Unknown IMASK_ variables are refused: a typo in a deployment must fail at start, not silently fall back
to a default; an old flat name of a per-service setting (IMASK_JPEG_QUALITY) is refused with its new names.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import socket
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class ConfigError(ValueError):
    """A setting has a bad value; the message names the environment variable."""


class ImaskSettings(BaseSettings):
    """Base of every settings class: each field is read from exactly one variable, `env_name(cls, field)`."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, case_sensitive=True)
    # The service whose own settings this class holds ("worker", "ingest", "recorder", "mask-api"); its fields
    # outside SHARED_GROUPS are read from IMASK_<SERVICE>_<FIELD>. Empty for classes of shared settings only.
    service: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _NamespacedEnvSource(settings_cls)


class _NamespacedEnvSource(EnvSettingsSource):
    """The environment, one variable per field as `env_name` says (no prefix-plus-field-name guessing, so an old
    flat name or a bare FIELD variable is never read by accident)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.env_vars.get(env_name(self.settings_cls, field_name)), field_name, False


class LoggingSettings(ImaskSettings):
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    log_json: bool = Field(True, description="JSON logs (false: plain text for humans)")


class BaseServiceSettings(LoggingSettings):
    """What every service process has: logging (shared) and its own ops endpoint (per service)."""

    ops_host: str = Field("127.0.0.1", description="Address of the /metrics, /healthz, /readyz endpoint")
    ops_port: int = Field(0, ge=0, le=65535, description="Port of the ops endpoint (0: pick a free one)")
    instance_id: str = Field("", description="Name of this process in logs, records and alerts (default: "
                             "SERVICE-HOST-PID)")

    @model_validator(mode="after")
    def _default_instance_id(self) -> BaseServiceSettings:
        if not self.instance_id:
            service = getattr(type(self), "service", "") or "imask"
            object.__setattr__(self, "instance_id", f"{service}-{socket.gethostname()}-{os.getpid()}")
        return self


class KafkaSettings(ImaskSettings):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    topic_raw: str = Field("frames.raw", description="Topic of raw frames (short retention)")
    topic_masked: str = Field("frames.masked", description="Topic of masked frames")
    topic_meta: str = Field("frames.meta", description="Topic of per-frame metadata (no pixels)")
    topic_dlq: str = Field("frames.dlq", description="Topic of drop / dead-letter records")
    topic_alerts: str = Field("alerts", description="Topic of alert events")
    partitions: int = Field(4, ge=1, le=1024, description="Partitions of the frame topics when created")
    replication_factor: int = Field(1, ge=1, description="Replication factor when topics are created")
    raw_retention_ms: int = Field(10 * 60 * 1000, ge=1000,
                                  description="Retention of the raw topic: raw faces must not linger")
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=1024,
                                   description="Largest Kafka message (broker, producer and consumer agree)")
    kafka_extra: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka settings as JSON, e.g. SASL/SSL: "
        '{"security.protocol":"SASL_SSL","sasl.mechanisms":"PLAIN",...}',
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value


class RegistrySettings(ImaskSettings):
    registry_uri: str = Field("http://127.0.0.1:5590", description="MLflow tracking server holding the model "
                              "registry (imask stack up starts one)")


class RedisSettings(ImaskSettings):
    redis_url: str = Field("redis://127.0.0.1:6390/0", description="Redis the fleet shares: A/B experiments (router "
                           "and workers), rate limits (mask-api)")


class EngineSettings(RegistrySettings):
    """The masking engine; worker and mask-api share these (one variant, one provider per deployment)."""

    variant: str = Field("default", description="Model variant (detector, input size, threshold, mask style)")
    model: str = Field("", description="Registered version to run instead of a built-in variant: NAME@ALIAS or "
                       "NAME/VERSION from the model registry (e.g. imask-masker@champion); run as registered, so "
                       "the variant overrides below are refused with it")
    model_cache_dir: Path | None = Field(None, description="Where registered model files are kept once downloaded "
                                         "and checked, and the int8 CenterFace once made (default: a folder in "
                                         "the temp dir)")
    provider: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="ONNX Runtime execution provider: auto takes CUDA when present")
    detector_timeout_ms: int = Field(2000, ge=1, description="Detector call timeout; past it the frame fails closed")
    intra_op_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime threads per inference")
    mask_style: Literal["blur", "pixelate", "solid"] | None = Field(None, description="Override the variant's style")
    mask_shape: Literal["ellipse", "box"] | None = Field(None, description="Override the variant's mask shape")
    mask_scale: float | None = Field(None, ge=1.0, le=4.0, description="Override the variant's mask scale "
                                     "(1.0..4.0: smaller masks leave faces recognisable)")
    threshold: float | None = Field(None, gt=0.0, lt=1.0, description="Override the variant's detection threshold")
    detector_width: int | None = Field(None, ge=32, le=4096, description="Override the detector input width")
    detector_height: int | None = Field(None, ge=32, le=4096, description="Override the detector input height")


class FrameLimits(ImaskSettings):
    max_frame_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest encoded frame accepted")
    max_width: int = Field(4096, ge=16, description="Widest frame accepted")
    max_height: int = Field(4096, ge=16, description="Tallest frame accepted")


class WorkerSettings(BaseServiceSettings, KafkaSettings, EngineSettings, FrameLimits, RedisSettings):
    service: ClassVar[str] = "worker"

    group_id: str = Field("imask-workers", description="Consumer group; one per variant")
    batch_max: int = Field(1, ge=1, le=64, description="Frames per detector call (batching pays on GPU)")
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of masked frames")
    dlq_include_raw: bool = Field(False, description="Copy raw bytes into DLQ records (privacy: off)")
    max_inflight: int = Field(64, ge=1, description="Frames produced but not yet acknowledged before pausing")
    intake_kbytes: int = Field(4096, ge=0, le=1_048_576, description="Frames are taken oldest first across "
                               "partitions (a camera of large frames is not starved under backlog); a partition "
                               "is paused once this many KB of its frames wait here, resumed at half (0: off, "
                               "Kafka's fetch order)")
    exactly_once: bool = Field(False, description="Kafka transactions: outputs and input offsets commit together, "
                               "read_committed readers see each frame once (costs throughput and adds up to "
                               "transaction_ms of latency); off: at least once, duplicates after a crash")
    transaction_ms: float = Field(100.0, gt=0, le=60_000, description="Exactly once: how often a transaction "
                                  "commits (readers see frames only after it)")
    experiments: bool = Field(False, description="Follow the fleet's A/B experiments in Redis (imask router): each "
                              "camera's frames get its arm's variant; off: every frame gets this worker's own")
    experiment_fleet: str = Field("", description="Which fleet's experiments to follow (default: the group id)")


class GrpcServerSettings(ImaskSettings):
    """Security and limits of a gRPC server (mask-api, and ingest's Publish stream)."""

    auth: Literal["api-key", "none"] = Field("api-key", description="Require a per-client API key")
    api_keys_file: Path | None = Field(None, description="JSON file of hashed API keys (imask api-key new)")
    tls_cert_file: Path | None = Field(None, description="Server certificate (PEM): TLS on when set")
    tls_key_file: Path | None = Field(None, description="Server private key (PEM)")
    tls_client_ca_file: Path | None = Field(None, description="CA of client certificates: mTLS when set")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted")


class CameraDefaults(ImaskSettings):
    """Per-camera settings; these are the defaults, a cameras file or the admin API can set them per camera."""

    service: ClassVar[str] = "ingest"

    fps: float = Field(0.0, ge=0, le=240, description="Frames per second published per camera (0: the source's)")
    cap_width: int = Field(0, ge=0, le=8192, description="Downscale wider frames to this width (0: no cap)")
    cap_height: int = Field(0, ge=0, le=8192, description="Downscale taller frames to this height (0: no cap)")
    jpeg_quality: int = Field(90, ge=10, le=100, description="JPEG quality of published frames")
    drop_policy: Literal["realtime", "complete"] = Field(
        "realtime", description="realtime: always publish the newest frame, skip (and count) older ones; "
        "complete: publish every frame, slowing the source when Kafka is slow (state blocked)")
    pace: Literal["source", "max"] = Field(
        "source", description="Files: read at the source fps like a live camera, or as fast as possible")
    loop: bool = Field(False, description="Files: start again at the end, forever")
    max_frames: int = Field(0, ge=0, description="Stop a camera after this many frames (0: no limit)")
    max_inflight: int = Field(8, ge=1, le=10000,
                              description="Frames of one camera sent to Kafka but not yet acknowledged")
    queue_frames: int = Field(50, ge=1, le=10000,
                              description="complete policy: decoded frames waiting to be published")
    open_timeout_s: float = Field(5.0, gt=0, le=120, description="Streams: give up opening after this long")
    read_timeout_s: float = Field(5.0, gt=0, le=120, description="Streams: a read waiting this long fails")
    stall_after_s: float = Field(3.0, gt=0, le=3600, description="No frame for this long: state stalled")
    min_fps: float = Field(0.0, ge=0, description="Under this fps (over 5 s) a running camera is stalled (0: off)")
    backoff_initial_s: float = Field(0.5, gt=0, le=60, description="First wait before reconnecting")
    backoff_max_s: float = Field(30.0, gt=0, le=3600, description="Longest wait between reconnect attempts")
    rotation: int = Field(-1, description="Clockwise degrees (0, 90, 180, 270) that turn the camera's pictures "
                          "upright, for cameras known to be mounted so; -1: not configured (the workers estimate it)")

    @field_validator("rotation")
    @classmethod
    def _rotation(cls, value: int) -> int:
        if value not in (-1, 0, 90, 180, 270):
            raise ValueError(f"must be -1, 0, 90, 180 or 270, got {value}")
        return value


class IngestSettings(BaseServiceSettings, KafkaSettings, FrameLimits, CameraDefaults, GrpcServerSettings):
    service: ClassVar[str] = "ingest"

    sources: list[str] = Field(default_factory=list,
                               description="CAMERA_ID=URL_OR_PATH entries (JSON list in the environment)")
    cameras_file: Path | None = Field(None, description="YAML or JSON file of cameras with per-camera settings")
    keep_running: bool = Field(False, description="Keep serving when every camera has ended (cameras can be "
                               "added through the admin API); otherwise exit once all have ended")
    admin_host: str = Field("127.0.0.1", description="Address of the camera admin API (/cameras), a listener of "
                            "its own apart from the ops endpoint; anything but loopback needs an admin token")
    admin_port: int = Field(0, ge=-1, le=65535,
                            description="Port of the camera admin API (-1: off, 0: pick a free one)")
    admin_token: str = Field("", description="Bearer token every admin API call (/cameras) requires; needed "
                             "whenever the admin listener is not bound to loopback")
    admin_url_schemes: list[str] = Field(["rtsp", "rtsps", "http", "https"],
                                         description="URL schemes cameras added through the admin API may use")
    admin_allowed_hosts: list[str] = Field(default_factory=list,
                                           description="Hosts or CIDRs the admin API may point cameras at (empty: "
                                           "any but loopback, link-local and reserved addresses)")
    publish_port: int = Field(-1, ge=-1, le=65535,
                              description="Port of the gRPC Publish stream (-1: off, 0: pick a free one)")
    publish_host: str = Field("127.0.0.1", description="Address the gRPC Publish server binds")


class RecorderSettings(BaseServiceSettings, KafkaSettings):
    service: ClassVar[str] = "recorder"

    group_id: str = Field("imask-recorder", description="Consumer group of the recorder")
    output_dir: Path = Field(Path("recordings"), description="Where MP4s per camera are written")
    snapshot_every: int = Field(0, ge=0, description="Also write every Nth masked frame as JPEG (0: none)")
    idle_close_s: float = Field(30.0, gt=0, description="Close a camera's file after this long without frames")
    segment_s: float = Field(600.0, gt=0, description="Start a new file per camera after this long (bounds what a "
                             "crash makes the recorder re-read: offsets move only past closed files)")
    default_fps: float = Field(25.0, gt=0, description="Fps of recordings when the source does not say")
    resume_free_bytes: int = Field(64 * 1024 * 1024, ge=0, description="After a write failed (disk full) the "
                                   "recorder pauses (not ready, offsets held) and resumes once this much is free "
                                   "(or a quarter of a smaller filesystem)")


class MaskApiSettings(BaseServiceSettings, KafkaSettings, EngineSettings, FrameLimits, GrpcServerSettings,
                      RedisSettings):
    service: ClassVar[str] = "mask-api"

    host: str = Field("127.0.0.1", description="Address the gRPC server binds")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: pick a free one)")
    rate_limit: int = Field(0, ge=0, description="Requests (or stream frames) per client per rate-limit window, "
                            "counted across replicas in Redis; 0: off")
    rate_limit_window_s: int = Field(1, ge=1, le=3600, description="Length of the rate-limit window")
    queue_max: int = Field(32, ge=1, description="Requests waiting for the engine before RESOURCE_EXHAUSTED")
    batch_max: int = Field(1, ge=1, le=64, description="Frames per detector batch across concurrent requests")
    batch_wait_ms: float = Field(0.0, ge=0, le=50, description="How long to wait to fill a batch")
    threshold_min: float = Field(0.05, gt=0, lt=1, description="Lowest threshold a request may ask for")
    threshold_max: float | None = Field(None, gt=0, lt=1, description="Highest threshold a request may ask for "
                                        "(default: the variant's own: clients may ask for more masking, not less; "
                                        "a higher bound lets clients leave faces unmasked)")
    publish_meta: bool = Field(True, description="Publish per-request metadata to frames.meta")
    grace_s: float = Field(20.0, ge=0, description="On SIGTERM, time in-flight calls get to finish")
    drain_delay_s: float = Field(1.0, ge=0, description="On SIGTERM, time serving NOT_SERVING before refusing calls")
    http_host: str = Field("127.0.0.1", description="Address the HTTP API binds")
    http_port: int = Field(-1, ge=-1, le=65535, description="Port of the HTTP API (POST /v1/mask, /v1/detect; one "
                           "engine and queue shared with gRPC; 8051 in the examples) (-1: off, 0: pick a free one)")
    redis_prefix: str = Field("imask", min_length=1, description="Prefix of mask-api's Redis keys: PREFIX:rl (rate "
                              "limits) and PREFIX:cache (the result cache)")
    cache_ttl_s: int = Field(300, ge=0, le=86400, description="Result cache: seconds a masked result is served again "
                             "for the same image, options, model version and API key (0: off)")
    cache_max_entry_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Result cache: larger results are not "
                                       "stored")


class RouterSettings(BaseServiceSettings, KafkaSettings, GrpcServerSettings, RegistrySettings, RedisSettings):
    service: ClassVar[str] = "router"

    host: str = Field("127.0.0.1", description="Address the ExperimentService gRPC server binds")
    port: int = Field(50061, ge=0, le=65535, description="gRPC port (0: pick a free one)")
    fleet: str = Field("imask-workers", description="The worker consumer group whose experiments this router runs")
    group_id: str = Field("imask-router", description="Consumer group name of the router's frames.meta reader")
    tick_s: float = Field(1.0, gt=0, le=60, description="How often the router looks at the active experiment (each "
                          "experiment's own interval_s says how often its guardrails are judged)")
    change_delay_s: float = Field(2.0, ge=0, le=60, description="A change of weights takes effect this long after "
                                  "it is written, by frame ingest time (workers must have read it by then)")
    promote_aliases: bool = Field(False, description="Promoting a registered challenger also moves its champion "
                                  "alias in the model registry, through the registry's gate (off: aliases untouched)")
    drift_prefix: str = Field("imask:drift", description="Redis prefix of the drift service's variant_regression "
                              "flags: one on the challenger is a failed guardrail check and rolls back at once (the "
                              "drift service's IMASK_DRIFT_PREFIX; empty: not read)")
    feast_dir: Path = Field(Path(".stack/feast"), description="The Feast registry file: experiments targeted by a "
                            "feature rule read camera features there (FeatureReader)")
    feast_project: str = Field("imask", pattern=r"^[A-Za-z0-9_]+$", description="Feast project of those features")
    features_stale_after_s: float = Field(35.0, gt=0, le=86400, description="A camera whose newest features window "
                                          "ended longer ago never matches a feature rule")



class FeaturesStreamSettings(BaseServiceSettings, KafkaSettings, RedisSettings):
    service: ClassVar[str] = "features-stream"

    group_id: str = Field("imask-features", description="Consumer group (its state changelog topics carry the name)")
    state_dir: Path = Field(Path("features-state"), description="Local window state (RocksDB); rebuilt from the "
                            "changelog topics when lost")
    feast_dir: Path = Field(Path(".stack/feast"), description="The Feast registry file and offline parquet files "
                            "(imask stack up applies the repository there)")
    feast_project: str = Field("imask", pattern=r"^[A-Za-z0-9_]+$", description="Feast project (Redis keys carry it)")
    window_s: int = Field(10, ge=1, le=3600, description="Tumbling window, and the step of the hopping window")
    hop_s: int = Field(60, ge=1, le=86400, description="Hopping window (a multiple of window_s, every window_s)")
    grace_ms: int = Field(1000, ge=0, le=600_000, description="Records this late (event time: capture time) still "
                          "count in their window; later ones are counted as late_frames")
    max_future_ms: int = Field(5000, ge=0, description="Event times further ahead of the wall clock are clamped to it "
                               "(one future timestamp would hold a partition's windows open)")
    idle_tick_s: float = Field(5.0, ge=0, description="A partition with no record for this long gets ticks that move "
                               "its clock on with the wall clock, so a quiet camera's last window closes (0: off)")
    ticks_topic: str = Field("features.ticks", description="Topic of those ticks (this service's own)")
    commit_interval_s: float = Field(1.0, gt=0, le=60, description="How often state, offsets and Feast pushes are "
                                     "committed (what a crash redoes)")
    auto_offset_reset: Literal["latest", "earliest"] = Field("latest", description="Where a new consumer group "
                                                             "starts reading")

    @model_validator(mode="after")
    def _hop_of_windows(self) -> FeaturesStreamSettings:
        if self.hop_s % self.window_s:
            raise ValueError(f"hop_s ({self.hop_s}) must be a multiple of window_s ({self.window_s})")
        return self


class FeaturesSettings(BaseServiceSettings, GrpcServerSettings, RedisSettings):
    service: ClassVar[str] = "features"

    host: str = Field("127.0.0.1", description="Address the FeatureService gRPC server binds")
    port: int = Field(50071, ge=0, le=65535, description="gRPC port (0: pick a free one)")
    feast_dir: Path = Field(Path(".stack/feast"), description="The Feast registry file (imask stack up applies the "
                            "repository there; the features stream writes the same project)")
    feast_project: str = Field("imask", pattern=r"^[A-Za-z0-9_]+$", description="Feast project (Redis keys carry it)")
    stale_after_s: float = Field(35.0, gt=0, le=86400, description="A camera whose newest window ended longer ago "
                                 "is reported stale (fresh=false; its values still returned, marked so)")
    max_cameras: int = Field(1000, ge=1, le=100_000, description="Most cameras one GetFeatures call may ask for")
    read_path: Literal["redis", "feast"] = Field("redis", description="redis: read Feast's Redis layout directly "
                                                 "(one pipelined round trip); feast: through Feast's SDK "
                                                 "(get_online_features, slower for many cameras); same values")
    workers: int = Field(4, ge=1, le=64, description="Threads reading Feast (calls in parallel)")
    grace_s: float = Field(5.0, ge=0, description="On SIGTERM, time in-flight calls get to finish")
    drain_delay_s: float = Field(1.0, ge=0, description="On SIGTERM, time serving NOT_SERVING before refusing calls")


class AlertingSettings(BaseServiceSettings, KafkaSettings):
    service: ClassVar[str] = "alerting"

    group_id: str = Field("imask-alerting", description="Consumer group of the alerts topic reader")
    alertmanager_url: str = Field("http://127.0.0.1:9493", description="Alertmanager receiving the alerts (API v2; "
                                  "imask stack up runs one on this port)")
    timeout_s: float = Field(5.0, gt=0, le=60, description="Timeout of one POST to Alertmanager")
    resend_s: float = Field(60.0, gt=0, le=3600, description="Firing alerts are posted again this often (they end "
                            "4 resends after the last post unless posted again)")
    oneshot_hold_s: float = Field(3600.0, gt=0, description="How long a one-off event's alert stays firing")
    episode_max_age_s: float = Field(86400.0, gt=0, description="An episode no event ends is resolved after this "
                                     "long (its emitter may have restarted)")
    retry_max_s: float = Field(30.0, gt=0, le=600, description="Longest wait between retries while Alertmanager "
                               "does not take alerts")
    max_pending: int = Field(10_000, ge=1, description="Events waiting for Alertmanager before the consumer pauses")
    runbook_base: str = Field("docs/OPERATIONS.md", description="Runbook the alerts' runbook_url annotations link "
                              "into (a URL of docs/OPERATIONS.md as your team reads it)")
    lag_groups: dict[str, str] = Field(default_factory=lambda: {"imask-workers": "frames.raw",
                                                                "imask-recorder": "frames.masked"},
                                       description="Consumer groups (and their topic) whose lag in seconds is "
                                       "exported as imask_consumer_lag_seconds, as JSON; {} for none")
    lag_interval_s: float = Field(15.0, ge=0, description="How often that lag is sampled (0: never)")



class DriftSettings(BaseServiceSettings, KafkaSettings, RedisSettings):
    service: ClassVar[str] = "drift"

    feast_dir: Path = Field(Path(".stack/feast"), description="The Feast registry file and offline parquet files "
                            "(the features stream's; new files tell which cameras closed a window)")
    feast_project: str = Field("imask", pattern=r"^[A-Za-z0-9_]+$", description="Feast project (Redis keys carry it)")
    prefix: str = Field("imask:drift", min_length=1, description="Redis key prefix of references and variant "
                        "regression flags (the router reads the flags under the same prefix)")
    poll_s: float = Field(2.0, gt=0, le=60, description="How often the offline files are read for closed windows")
    reference_windows: int = Field(18, ge=2, le=1000, description="Windows a reference holds (a new camera's first "
                                   "ones under a variant; `imask drift reference capture` takes the last ones)")
    breach_windows: int = Field(3, ge=1, le=100, description="Breaching windows in a row before an episode opens")
    recover_windows: int = Field(3, ge=1, le=100, description="Clean windows in a row before an episode ends")
    regression_windows: int = Field(12, ge=1, le=1000, description="Windows after a camera's variant switch that are "
                                    "compared with its own windows before")
    regression_breach_windows: int = Field(2, ge=1, le=100, description="Breaching windows in a row before "
                                           "variant_regression opens (the router then rolls back at once)")
    regression_tolerance: float = Field(0.3, gt=0, lt=1, description="A fall of faces per frame or detection-score "
                                        "mass beyond this share of the camera's own before is a regression")

class ConsoleSettings(BaseServiceSettings, KafkaSettings, RegistrySettings):
    service: ClassVar[str] = "console"

    host: str = Field("127.0.0.1", description="Address the web console listens on (loopback by default, like the "
                      "admin API; another address is reachable from other hosts: put TLS in front of it)")
    port: int = Field(8470, ge=0, le=65535, description="Port of the web console (0: pick a free one)")
    token: str = Field("", description="Operator token: signing in (or Authorization: Bearer) needs it or a key of "
                       "IMASK_CONSOLE_OPERATOR_KEYS_FILE with the operator role; one of the two is required")
    operator_keys_file: Path | None = Field(None, description="Keys file (imask api-key's format) whose entries "
                                            "with "
                                       "\"role\": \"operator\" may sign in (re-read when it changes)")
    session_ttl_s: float = Field(43200.0, gt=0, le=30 * 86400, description="How long a sign-in lasts")
    secure_cookie: bool = Field(False, description="Mark the session cookie Secure (set when served over HTTPS)")
    ingest_url: str = Field("http://127.0.0.1:9401", description="The ingest's admin API (its admin listener, "
                            "IMASK_INGEST_ADMIN_HOST/PORT; shown as admin_port in its /readyz)")
    ingest_token: str = Field("", description="The ingest's IMASK_INGEST_ADMIN_TOKEN, when it has one")
    router_address: str = Field("127.0.0.1:50061", description="The router's ExperimentService (empty: no "
                                "experiments page)")
    router_api_key: str = Field("", description="API key for the router (its keys file)")
    features_address: str = Field("127.0.0.1:50071", description="The FeatureService (`imask features`) whose "
                                  "features the camera pages show (empty: none)")
    features_api_key: str = Field("", description="API key for the FeatureService")
    alertmanager_url: str = Field("http://127.0.0.1:9493", description="Alertmanager whose alerts the alerts page "
                                  "shows (API v2; empty: only the alerts topic's recent events)")
    alert_inbox_dir: Path | None = Field(None, description="Folder of an alert inbox (the local stack's, "
                                         "imask.devstack.alert_inbox): the alerts page shows what each receiver "
                                         "confirmed getting")
    model_name: str = Field("imask-masker", description="Registered model whose versions the models page shows")
    group_id: str = Field("imask-console", description="Prefix of the consumer group of frames.masked, frames.meta "
                          "and alerts (one group per console process, from the topics' ends, never committed)")
    history_s: float = Field(600.0, ge=10, le=86400, description="How much per-frame history (latency, faces) a "
                             "camera's page keeps, in memory")
    refresh_ms: int = Field(1000, ge=100, le=60000, description="How often pages refresh their figures and the "
                            "preview its picture")


# Settings every service that has them shares, with one meaning: IMASK_<FIELD>. Anything else is one service's.
SHARED_GROUPS: tuple[type[ImaskSettings], ...] = (LoggingSettings, KafkaSettings, EngineSettings, FrameLimits,
                                                  GrpcServerSettings, RegistrySettings, RedisSettings)
SETTINGS_CLASSES: tuple[type[ImaskSettings], ...] = (WorkerSettings, IngestSettings, RecorderSettings,
                                                     MaskApiSettings, RouterSettings, FeaturesStreamSettings,
                                                     FeaturesSettings, AlertingSettings, DriftSettings,
                                                     ConsoleSettings)
OTHER_KNOWN_PREFIXES = ("IMASK_STACK_", "IMASK_RUN_", "IMASK_TEST_", "IMASK_CLIENT_")


# Variables that were renamed, with what replaces them: refused at start with this hint.
RENAMED_ENV: dict[str, str] = {
    "IMASK_WORKER_ID": "IMASK_WORKER_INSTANCE_ID",
    "IMASK_MASK_API_SERVER_ID": "IMASK_MASK_API_INSTANCE_ID",
    "IMASK_MLFLOW_TRACKING_URI": "IMASK_REGISTRY_URI",
    "IMASK_ROUTER_REGISTRY_URI": "IMASK_REGISTRY_URI with IMASK_ROUTER_PROMOTE_ALIASES=true",
    "IMASK_WORKER_REDIS_URL": "IMASK_REDIS_URL with IMASK_WORKER_EXPERIMENTS=true",
    "IMASK_MASK_API_REDIS_URL": "IMASK_REDIS_URL",
    "IMASK_ROUTER_REDIS_URL": "IMASK_REDIS_URL",
    "IMASK_MASK_API_RATE_LIMIT_PER_S": "IMASK_MASK_API_RATE_LIMIT (per IMASK_MASK_API_RATE_LIMIT_WINDOW_S, 1 s)",
}


def env_prefix(service: str) -> str:
    """IMASK_WORKER_ for "worker", IMASK_MASK_API_ for "mask-api"."""
    return f"IMASK_{service.upper().replace('-', '_')}_"


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable of `field` in settings class `cls`: IMASK_<FIELD> when the class declaring the
    field is one of SHARED_GROUPS, else IMASK_<SERVICE>_<FIELD> for the service of `cls`."""
    owner = next((k for k in cls.__mro__ if field in inspect.get_annotations(k)), None)
    if owner is None:
        raise KeyError(f"{cls.__name__} has no setting {field!r}")
    if owner in SHARED_GROUPS:
        return f"IMASK_{field.upper()}"
    service = getattr(cls, "service", "")
    if not service:
        raise TypeError(f"{cls.__name__}.{field} is a per-service setting but {cls.__name__} names no service")
    return env_prefix(service) + field.upper()


def known_env_names() -> set[str]:
    return {env_name(cls, name) for cls in SETTINGS_CLASSES for name in cls.model_fields}


def moved_env_names() -> dict[str, list[str]]:
    """Old flat names of settings that are now per service (IMASK_JPEG_QUALITY) -> their new names."""
    known = known_env_names()
    moved: dict[str, set[str]] = {}
    for cls in SETTINGS_CLASSES:
        for name in cls.model_fields:
            old, new = f"IMASK_{name.upper()}", env_name(cls, name)
            if old != new and old not in known:
                moved.setdefault(old, set()).add(new)
    return {old: sorted(new) for old, new in moved.items()}


def _hint(name: str, known: set[str], moved: dict[str, list[str]]) -> str:
    if name in RENAMED_ENV:
        return f"{name} (renamed: {RENAMED_ENV[name]})"
    if name in moved:
        return f"{name} (now per service: {' or '.join(moved[name])})"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
    return f"{name} (did you mean {close[0]}?)" if close else name


def check_environment(environ: dict[str, str] | None = None) -> None:
    environ = dict(os.environ) if environ is None else environ
    known = known_env_names()
    unknown = sorted(k for k in environ if k.startswith("IMASK_") and k not in known
                     and not k.startswith(OTHER_KNOWN_PREFIXES))
    if unknown:
        moved = moved_env_names()
        raise ConfigError(f"unknown setting(s) {', '.join(_hint(k, known, moved) for k in unknown)}; "
                          "see `imask <command> --help`")


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Build settings from environment plus explicit overrides (flags), with errors that name the variable."""
    check_environment()
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            name = env_name(cls, field) if field in cls.model_fields else f"IMASK_{field.upper()}"
            problems.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("bad configuration: " + "; ".join(problems)) from None
    except SettingsError as exc:  # a list or dict setting that is not JSON: name the variable, no traceback
        match = re.search(r'field "([a-z_]+)"', str(exc))
        name = env_name(cls, match.group(1)) if match and match.group(1) in cls.model_fields \
            else "an IMASK_* variable"
        raise ConfigError(f"bad configuration: {name} must be JSON (a list like [\"a\", \"b\"] or an object "
                          f"like {{\"key\": \"value\"}}): {exc.__cause__ or exc}") from None


def describe(cls: type[BaseSettings]) -> str:
    """Environment variables of a settings class with defaults, for --help epilogs."""
    names = {name: env_name(cls, name) for name in cls.model_fields}
    width = max(len(n) for n in names.values())
    lines = ["environment (flags override):"]
    for name, field in cls.model_fields.items():
        default = field.default if field.default_factory is None else "(computed)"
        lines.append(f"  {names[name]:<{width}}  {field.description or ''} [default: {default}]")
    return "\n".join(lines)

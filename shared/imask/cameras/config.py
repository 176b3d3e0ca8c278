"""What one camera is: an id, a URL and its per-camera settings, from flags, a cameras file or the admin API.

A cameras file (YAML or JSON) sets defaults and cameras; anything a camera leaves out comes from the file's
defaults, then from the ingest's IMASK_INGEST_* settings:

    defaults: {fps: 15, drop_policy: realtime, cap_width: 1280}
    cameras:
      - {camera_id: lobby, url: "rtsp://10.0.0.5:554/stream1"}
      - {camera_id: dock, url: "rtsp://10.0.0.6/h264", drop_policy: complete}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from imask.frames.ids import CAMERA_ID_PATTERN
from imask.ops.settings import CameraDefaults, ConfigError

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


class CameraConfig(CameraDefaults):
    """One camera: the defaults' fields plus identity. Built explicitly (never from the environment)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    camera_id: str = Field(..., pattern=CAMERA_ID_PATTERN, description="Kafka key and label of this camera")
    url: str = Field(..., min_length=1, description="rtsp://..., http(s)://..., a video file or a webcam index")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # a camera's fields come from its entry and the defaults, never from IMASK_INGEST_*

    @model_validator(mode="after")
    def _coherent(self) -> CameraConfig:
        if self.pace == "max" and self.drop_policy == "realtime" and not self.is_stream:
            raise ValueError("pace max reads a file as fast as possible: use it with drop_policy complete")
        return self

    @property
    def is_stream(self) -> bool:
        """Network streams reconnect forever; files and webcams end."""
        return self.url.lower().startswith(STREAM_SCHEMES)

    @property
    def redacted_url(self) -> str:
        """The URL without credentials (user:pass@, and any query string, where cameras also take them), for
        logs, status and alerts. Passwords may contain '/' or '@': everything up to the last '@' goes."""
        scheme, sep, rest = self.url.partition("://")
        if not sep:
            return self.url
        rest, query, _ = rest.partition("?")
        if "@" in rest:
            rest = "***@" + rest.rsplit("@", 1)[1]
        return f"{scheme}://{rest}{'?***' if query else ''}"


class CameraConfigError(ConfigError):
    """A camera entry that cannot be used; the message says which and why."""


def defaults_of(settings: CameraDefaults) -> dict[str, Any]:
    """The per-camera fields of a settings object (IngestSettings carries many others)."""
    return {name: getattr(settings, name) for name in CameraDefaults.model_fields}


def camera_config(defaults: CameraDefaults | dict[str, Any], fields: dict[str, Any]) -> CameraConfig:
    """A camera from defaults plus its own fields, with errors that name the field."""
    base = defaults_of(defaults) if isinstance(defaults, CameraDefaults) else dict(defaults)
    try:
        return CameraConfig.model_validate({**base, **fields})
    except ValidationError as exc:
        name = fields.get("camera_id", "?")
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'camera'}: {e['msg']}" for e in exc.errors())
        raise CameraConfigError(f"camera {name!r}: {problems}") from None


def parse_source(entry: str, defaults: CameraDefaults) -> CameraConfig:
    camera, sep, url = entry.partition("=")
    if not sep or not camera or not url:
        raise CameraConfigError(f"source {entry!r} must look like CAMERA_ID=URL_OR_PATH")
    return camera_config(defaults, {"camera_id": camera, "url": url})


def load_cameras_file(path: Path, defaults: CameraDefaults) -> list[CameraConfig]:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CameraConfigError(f"cameras file {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list):
        raise CameraConfigError(f"cameras file {path}: expected a mapping with a 'cameras' list")
    unknown = set(data) - {"defaults", "cameras"}
    if unknown:
        raise CameraConfigError(f"cameras file {path}: unknown keys {sorted(unknown)}")
    file_defaults = {**defaults_of(defaults), **(data.get("defaults") or {})}
    cameras = []
    for i, entry in enumerate(data["cameras"]):
        if not isinstance(entry, dict):
            raise CameraConfigError(f"cameras file {path}: entry {i} is not a mapping")
        cameras.append(camera_config(file_defaults, entry))
    ids = [c.camera_id for c in cameras]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CameraConfigError(f"cameras file {path}: duplicate camera ids {duplicates}")
    return cameras

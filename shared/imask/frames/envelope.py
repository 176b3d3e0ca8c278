"""Frame envelopes on the wire: building them and validating what arrives, with a reason for every refusal."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from imask.frames.clock import now_us
from imask.frames.ids import camera_id_error, check_camera_id, is_camera_id
from imask.media import ImageError, sniff_size
from imask.ops.settings import FrameLimits
from imask.v1 import frames_pb2 as pb

SCHEMA_VERSION = 1

@dataclass
class Rejected:
    """An input that becomes a DropRecord instead of a masked frame."""

    reason: pb.DropReason
    detail: str
    camera_id: str = ""
    seq: int = 0
    seq_unknown: bool = False


ROTATIONS = (0, 90, 180, 270)


def make_frame(camera_id: str, seq: int, data: bytes, width: int, height: int, capture_ts_us: int,
               source_fps: float = 0.0, encoding: pb.Encoding = pb.ENCODING_JPEG,
               rotation: int | None = None) -> pb.Frame:
    """An envelope; `rotation` (clockwise degrees that turn the camera's pictures upright) only when configured."""
    frame = pb.Frame(
        schema_version=SCHEMA_VERSION, camera_id=camera_id, seq=seq, capture_ts_us=capture_ts_us,
        ingest_ts_us=now_us(), encoding=encoding, width=width, height=height, data=data,
        trace_id=uuid.uuid4().hex, source_fps=source_fps,
    )
    if rotation is not None:
        frame.rotation = rotation
    return frame


def check_outgoing(camera_id: str, data: bytes, limits: FrameLimits) -> tuple[int, int]:
    """Check a producer's encoded frame before it is enveloped (SDK, gRPC Publish): the id, the size and the
    image header (no decoding). Returns (width, height); raises ValueError (ImageError for the image) saying why.
    Refusing here means a frame that would only be dead-lettered never gets a sequence number."""
    check_camera_id(camera_id)
    if len(data) > limits.max_frame_bytes:
        raise ImageError(f"{len(data)} image bytes exceed {limits.max_frame_bytes}")
    _, width, height = sniff_size(data)
    if not 0 < width <= limits.max_width or not 0 < height <= limits.max_height:
        raise ImageError(f"{width}x{height} is outside 1x1..{limits.max_width}x{limits.max_height}")
    return width, height


def end_of_stream(camera_id: str, seq: int, source_fps: float = 0.0) -> pb.Frame:
    """The marker after a finite source's last frame: recorders close files, collectors know the count."""
    return pb.Frame(schema_version=SCHEMA_VERSION, camera_id=camera_id, seq=seq, capture_ts_us=now_us(),
                    ingest_ts_us=now_us(), end_of_stream=True, source_fps=source_fps)


def parse_frame(key: bytes | None, value: bytes | None, limits: FrameLimits) -> pb.Frame | Rejected:
    """Decode and check an envelope. Pixels are not decoded here (the image check is the worker's)."""
    key_text = (key or b"").decode("utf-8", "replace")
    if not value:
        return Rejected(pb.DROP_REASON_UNDECODABLE_ENVELOPE, "empty message", key_text, seq_unknown=True)
    frame = pb.Frame()
    try:
        frame.ParseFromString(value)
    except DecodeError as exc:
        camera, seq = salvage_ids(value)
        return Rejected(pb.DROP_REASON_UNDECODABLE_ENVELOPE, f"not a Frame protobuf: {exc}",
                        camera or key_text, seq or 0, seq_unknown=seq is None)
    camera, seq = frame.camera_id or key_text, frame.seq
    if frame.schema_version != SCHEMA_VERSION:
        return Rejected(pb.DROP_REASON_SCHEMA_VERSION,
                        f"schema_version {frame.schema_version}, this worker speaks {SCHEMA_VERSION}", camera, seq)
    if not is_camera_id(frame.camera_id):
        # One pattern for every id in the system: ids become metric labels, file names and URL paths, so
        # `a/b` and `a_b` must not both exist and label sets must stay bounded in what they can hold.
        return Rejected(pb.DROP_REASON_INVALID_FIELDS, camera_id_error(frame.camera_id), camera[:128], seq)
    if key is not None and key_text != frame.camera_id:
        return Rejected(pb.DROP_REASON_INVALID_FIELDS,
                        f"key {key_text!r} differs from camera_id {frame.camera_id!r}", camera, seq)
    if frame.end_of_stream:
        # Markers carry no pixels; one that does would leave the worker unmasked if it were passed on.
        if frame.data:
            return Rejected(pb.DROP_REASON_INVALID_FIELDS,
                            f"end-of-stream marker carries {len(frame.data)} image bytes", camera, seq)
        return frame
    if frame.encoding not in (pb.ENCODING_JPEG, pb.ENCODING_PNG):
        return Rejected(pb.DROP_REASON_INVALID_FIELDS, f"unsupported encoding {frame.encoding}", camera, seq)
    if frame.HasField("rotation") and frame.rotation not in ROTATIONS:
        return Rejected(pb.DROP_REASON_INVALID_FIELDS, f"rotation {frame.rotation} is not one of {ROTATIONS}",
                        camera, seq)
    if len(frame.data) > limits.max_frame_bytes:
        return Rejected(pb.DROP_REASON_OVERSIZE,
                        f"{len(frame.data)} image bytes exceed {limits.max_frame_bytes}", camera, seq)
    if frame.width > limits.max_width or frame.height > limits.max_height:
        return Rejected(pb.DROP_REASON_OVERSIZE, f"declared {frame.width}x{frame.height} exceeds "
                        f"{limits.max_width}x{limits.max_height}", camera, seq)
    if not frame.data:
        return Rejected(pb.DROP_REASON_CORRUPT_IMAGE, "no image bytes", camera, seq)
    return frame


def salvage_ids(value: bytes) -> tuple[str | None, int | None]:
    """camera_id (field 2) and seq (field 3) from the readable head of a damaged envelope.

    A truncated message usually keeps its first fields; naming the frame in its drop record keeps the
    accounting exact (every sequence number ends somewhere) instead of losing it as "unknown".
    """
    camera: str | None = None
    seq: int | None = None
    pos = 0

    def varint() -> int:
        nonlocal pos
        result = shift = 0
        while True:
            if pos >= len(value) or shift > 63:
                raise ValueError("truncated varint")
            byte = value[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    try:
        while pos < len(value):
            tag = varint()
            field, wire_type = tag >> 3, tag & 7
            if wire_type == 0:
                number = varint()
                if field == 3:
                    seq = number
            elif wire_type == 2:
                length = varint()
                if pos + length > len(value):
                    break
                if field == 2:
                    camera = value[pos:pos + length].decode("utf-8")
                pos += length
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            else:
                break
    except (ValueError, UnicodeDecodeError):
        pass
    return camera, seq

"""Replaying recorded streams (video files or `imask record` dumps) into frames.raw as N cameras.

Frames are JPEG-encoded once up front, so the replayer measures the pipeline, not its own decoding. Each camera
plays one source from a phase offset (real cameras are not in lockstep), at the original pace times `speed`
(0: as fast as possible), with optional jitter and bursts, and ends with an end-of-stream marker carrying its
frame count, so a collector knows exactly what to account for.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2

from imask.frames.clock import now_us
from imask.frames.envelope import end_of_stream, make_frame
from imask.loadtest.recordfile import read_recording
from imask.media import encode_jpeg, iter_video, open_video
from imask.ops.settings import KafkaSettings
from imask.streaming.producer import Outbox
from imask.v1 import frames_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceFrame:
    data: bytes
    width: int
    height: int
    offset_s: float  # when this frame came, relative to the source's first frame


@dataclass(frozen=True)
class Source:
    name: str
    frames: list[SourceFrame]
    fps: float

    def at_fps(self, fps: float) -> Source:
        """The same frames re-timed as a steady stream of `fps` (e.g. a 25 fps clip replayed as a 15 fps camera)."""
        return replace(self, fps=fps, frames=[replace(f, offset_s=i / fps) for i, f in enumerate(self.frames)])

    @property
    def period_s(self) -> float:
        """Length of one pass, so a looped source keeps its pace across the seam."""
        return self.frames[-1].offset_s + 1.0 / self.fps if self.frames else 0.0


def video_source(path: Path, max_frames: int = 0, size: tuple[int, int] | None = None, quality: int = 90) -> Source:
    cap, info = open_video(path)
    frames = []
    try:
        for i, image in enumerate(iter_video(cap)):
            if max_frames and i >= max_frames:
                break
            if size is not None and (image.shape[1], image.shape[0]) != size:
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            frames.append(SourceFrame(encode_jpeg(image, quality), image.shape[1], image.shape[0], i / info.fps))
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"{path} has no readable frames")
    return Source(path.name, frames, info.fps)


def recording_source(path: Path) -> Source:
    frames = []
    first: int | None = None
    for message in read_recording(path):
        frame = pb.Frame.FromString(message.value)
        if frame.end_of_stream or not frame.data:
            continue
        first = message.timestamp_us if first is None else first
        frames.append(SourceFrame(frame.data, frame.width, frame.height, (message.timestamp_us - first) / 1e6))
    if not frames:
        raise ValueError(f"{path} holds no frames")
    span = frames[-1].offset_s
    fps = (len(frames) - 1) / span if span > 0 else 25.0
    return Source(path.name, frames, fps)


def load_source(path: Path, max_frames: int = 0, size: tuple[int, int] | None = None) -> Source:
    if path.suffix == ".imrec":
        return recording_source(path)
    return video_source(path, max_frames, size)


@dataclass(frozen=True)
class ReplayPlan:
    cameras: int = 1
    camera_prefix: str = "replay"
    speed: float = 1.0          # 1: original pace, 2: twice as fast, 0: as fast as possible
    duration_s: float = 0.0     # 0: one pass of each source; else loop until this long
    jitter_ms: float = 0.0      # each frame late by up to this much (network / camera jitter)
    burst_every_s: float = 0.0  # every so often ...
    burst_frames: int = 0       # ... this many frames of each camera go out at once (a camera catching up)
    seed: int = 1


@dataclass
class ReplayResult:
    frames: dict[str, int]      # camera -> frames sent (= its end-of-stream seq)
    started_us: int
    ended_us: int
    source_of: dict[str, str]   # camera -> source name


class Replayer:
    def __init__(self, settings: KafkaSettings, sources: list[Source], plan: ReplayPlan) -> None:
        if not sources:
            raise ValueError("nothing to replay")
        self.settings = settings
        self.sources = sources
        self.plan = plan
        self.outbox = Outbox(settings)

    def camera_ids(self) -> list[str]:
        return [f"{self.plan.camera_prefix}{i}" for i in range(self.plan.cameras)]

    def run(self, stop: threading.Event | None = None) -> ReplayResult:
        plan = self.plan
        rng = random.Random(plan.seed)
        cameras = self.camera_ids()
        source_of = {cam: self.sources[i % len(self.sources)] for i, cam in enumerate(cameras)}
        sent = dict.fromkeys(cameras, 0)
        start = time.monotonic()
        started_us = now_us()
        # Each camera's schedule in source seconds: its phase (cameras spread over one frame interval), then the
        # source's own frame times, pass after pass.
        phase = {cam: i / (source_of[cam].fps * max(1, plan.cameras)) for i, cam in enumerate(cameras)}

        def due_of(cam: str, n: int) -> float:
            source = source_of[cam]
            passes, index = divmod(n, len(source.frames))
            due = phase[cam] + passes * source.period_s + source.frames[index].offset_s
            if plan.burst_every_s > 0 and plan.burst_frames > 0:
                window_start = (due // plan.burst_every_s) * plan.burst_every_s
                if due - window_start < plan.burst_frames / source.fps:
                    due = window_start  # the first frames of each window go out back to back
            return due + (rng.uniform(0, plan.jitter_ms / 1e3) if plan.jitter_ms else 0.0)

        def finished(cam: str, n: int, due: float) -> bool:
            if plan.duration_s <= 0:
                return n >= len(source_of[cam].frames)
            if plan.speed > 0:
                return due / plan.speed > plan.duration_s
            return time.monotonic() - start > plan.duration_s

        events = [(due_of(cam, 0), cam) for cam in cameras]
        heapq.heapify(events)
        while events and not (stop is not None and stop.is_set()):
            due, cam = heapq.heappop(events)
            if plan.speed > 0:
                delay = start + due / plan.speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            source = source_of[cam]
            seq = sent[cam]
            frame = source.frames[seq % len(source.frames)]
            message = make_frame(cam, seq, frame.data, frame.width, frame.height, now_us(), source.fps)
            self._produce(cam, message.SerializeToString())
            sent[cam] = seq + 1
            next_due = due_of(cam, seq + 1)
            if not finished(cam, seq + 1, next_due):
                heapq.heappush(events, (next_due, cam))
        for cam in cameras:
            self._produce(cam, end_of_stream(cam, sent[cam], source_of[cam].fps).SerializeToString())
        remaining = self.outbox.flush(60)
        if remaining or self.outbox.failed:
            raise RuntimeError(f"{remaining} replayed messages were not acknowledged, {self.outbox.failed} failed")
        return ReplayResult(sent, started_us, now_us(), {cam: s.name for cam, s in source_of.items()})

    def _produce(self, camera: str, value: bytes) -> None:
        self.outbox.send(self.settings.topic_raw, camera, value)  # waits for room: the replay slows down
        self.outbox.poll(0)

"""Routing inside the worker: each frame is masked by the arm its camera is assigned to, with no extra broker hop.

Every worker of the fleet holds an engine per arm (loaded when an experiment names it, before its effective time)
and the fleet's experiment history (routing.follower). A frame's arm is a pure function of its camera and ingest
time, so the one worker that owns its partition picks the same arm whoever it is; order per camera is the
partition's order, as without routing. Frames no experiment covers go to the worker's own engine.

Shadow mode: a sample of control frames is also masked by the challenger (under a separate track key); its output
is discarded and only its disagreement with the served result is kept in the frame's metadata.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from google.protobuf.message import DecodeError

from imask.engine import FrameInput, MaskingEngine
from imask.engine.tracker import iou_matrix
from imask.frames.envelope import Rejected
from imask.media import ImageError, decode_image
from imask.ops import metrics
from imask.pipeline.processor import FrameProcessor, Outcome
from imask.routing.assign import ArmSpec, ExperimentConfig
from imask.routing.follower import ExperimentFollower
from imask.streaming.loop import Inbound
from imask.v1 import frames_pb2 as pb

log = logging.getLogger(__name__)

SHADOW_MATCH_IOU = 0.3
RETRY_LOAD_S = 30.0  # an arm engine that failed to load is tried again after this long
LOADER_JOIN_S = 60.0  # at close: how long a background arm load (int8 quantization: seconds) is waited for


def disagreement(served: list[tuple[float, float, float, float]],
                 shadow: list[tuple[float, float, float, float]]) -> tuple[int, int, int]:
    """(matched, only served, only shadow) by greedy IoU >= SHADOW_MATCH_IOU matching."""
    ious = iou_matrix(np.asarray(served, np.float64).reshape(-1, 4), np.asarray(shadow, np.float64).reshape(-1, 4))
    matched = 0
    for row in ious:  # each served box takes its best shadow box still free (the first of equals)
        if row.size and row.max() >= SHADOW_MATCH_IOU:
            ious[:, int(row.argmax())] = -1.0
            matched += 1
    return matched, len(served) - matched, len(shadow) - matched


def frame_head(inbound: Inbound) -> tuple[str, int, int] | None:
    """(camera, seq, routing time) of a frame, or None when it is not one (the processor will drop it)."""
    frame = pb.Frame()
    try:
        frame.ParseFromString(inbound.value or b"")
    except DecodeError:
        return None
    return frame.camera_id, frame.seq, frame.ingest_ts_us or frame.capture_ts_us


class RoutedProcessor:
    """Same contract as FrameProcessor.process (one outcome per message, in order, never raises)."""

    def __init__(self, base: FrameProcessor, base_ref: str, follower: ExperimentFollower,
                 make_processor: Callable[[str], FrameProcessor]) -> None:
        self.base = base
        self.follower = follower
        self.make_processor = make_processor
        self.processors: dict[str, FrameProcessor] = {base_ref: base}
        self._lock = threading.Lock()
        self._loading: set[str] = set()
        self._failed: dict[str, float] = {}  # arm engines that failed to load, and when
        self._loaders: list[threading.Thread] = []

    @property
    def engine(self) -> MaskingEngine:
        """The worker's own engine (the one frames outside any experiment get)."""
        return self.base.engine

    def drop(self, inbound: Inbound, rejected: Rejected, stage: str) -> Outcome:
        return self.base.drop(inbound, rejected, stage)

    def processor(self, ref: str) -> FrameProcessor:
        with self._lock:
            found = self.processors.get(ref)
            failed_at = self._failed.get(ref)
        if found is None:
            if failed_at is not None and time.monotonic() - failed_at < RETRY_LOAD_S:
                raise RuntimeError(f"arm engine {ref!r} failed to load {time.monotonic() - failed_at:.0f} s ago")
            # Needed before the background load finished: load now (frames wait, never unmasked).
            log.warning("loading an arm's engine on the hot path", extra={"variant": ref})
            found = self._load(ref)
        return found

    def _load(self, ref: str) -> FrameProcessor:
        try:
            processor = self.make_processor(ref)
        except Exception:
            with self._lock:
                self._failed[ref] = time.monotonic()
                self._loading.discard(ref)
            raise
        with self._lock:
            self._loading.discard(ref)
            self._failed.pop(ref, None)
            return self.processors.setdefault(ref, processor)

    def _load_quietly(self, ref: str) -> None:
        try:
            self._load(ref)
        except Exception:  # its frames go to the base engine (process), retried after RETRY_LOAD_S
            log.exception("arm engine failed to load", extra={"variant": ref})

    def preload(self) -> None:
        """Load engines the current experiment names, in the background (called after each config refresh)."""
        for ref in self.follower.variants():
            with self._lock:
                failed_at = self._failed.get(ref)
                if (ref in self.processors or ref in self._loading
                        or (failed_at is not None and time.monotonic() - failed_at < RETRY_LOAD_S)):
                    continue
                self._loading.add(ref)
            loader = threading.Thread(target=self._load_quietly, args=(ref,), name=f"load-{ref}", daemon=True)
            loader.start()
            self._loaders = [t for t in self._loaders if t.is_alive()] + [loader]

    def close(self) -> None:
        """Close every arm's engine but the base one (the worker closes that). A load still running is waited
        for first: a thread inside ONNX Runtime when the interpreter tears down aborts the process."""
        for loader in self._loaders:
            loader.join(LOADER_JOIN_S)
        with self._lock:
            others = [p for p in self.processors.values() if p is not self.base]
        for processor in others:
            processor.engine.close()

    def process(self, batch: list[Inbound]) -> list[Outcome]:
        self.preload()
        routes: list[tuple[FrameProcessor, ExperimentConfig | None, ArmSpec | None]] = []
        for inbound in batch:
            head = frame_head(inbound)
            config = self.follower.config_at(head[2]) if head else None
            if config is None or head is None:
                routes.append((self.base, None, None))
                continue
            arm = config.arm_for(head[0])
            try:
                routes.append((self.processor(arm.variant), config, arm))
            except Exception:  # an arm that cannot load: its frames still get masked, by the worker's own engine
                log.exception("arm engine failed to load; masking with the base engine", extra={"arm": arm.name})
                routes.append((self.base, config, None))
        outcomes: list[Outcome | None] = [None] * len(batch)
        groups: dict[int, list[int]] = {}
        for i, (processor, _, _) in enumerate(routes):
            groups.setdefault(id(processor), []).append(i)
        for indices in groups.values():
            processor = routes[indices[0]][0]
            for i, outcome in zip(indices, processor.process([batch[i] for i in indices]), strict=True):
                outcomes[i] = outcome
        for done, (_, config, served_by) in zip(outcomes, routes, strict=True):
            if done is not None and config is not None and served_by is not None:
                self._label(done, config, served_by)
        return [o for o in outcomes if o is not None]

    def _label(self, outcome: Outcome, config: ExperimentConfig, arm: ArmSpec) -> None:
        if outcome.masked is None or outcome.meta is None:
            return  # a drop record: accounted under its reason whichever arm it had
        outcome.masked.experiment = outcome.meta.experiment = config.experiment
        outcome.masked.arm = outcome.meta.arm = arm.name
        metrics.ROUTED_FRAMES.labels(config.experiment, arm.name, "served").inc()
        challenger = config.shadowed(outcome.camera_id, outcome.seq) if arm.name == config.control.name else None
        if challenger is not None and not outcome.meta.end_of_stream and not outcome.meta.fail_closed:
            self._shadow(outcome, config, challenger)

    def _shadow(self, outcome: Outcome, config: ExperimentConfig, challenger: ArmSpec) -> None:
        meta = outcome.meta
        assert meta is not None
        try:
            frame = pb.Frame.FromString(outcome.inbound.value or b"")
            limits = self.base.options.limits
            image = decode_image(frame.data, limits.max_width, limits.max_height)
            engine = self.processor(challenger.variant).engine
            t0 = time.perf_counter()
            result = engine.process([FrameInput(f"shadow:{frame.camera_id}", frame.seq, image)])[0]
            inference_ms = (time.perf_counter() - t0) * 1e3
        except (ImageError, DecodeError, Exception) as exc:  # shadow is best effort: the served frame stands
            log.warning("shadow masking failed", extra={"camera": outcome.camera_id, "error": repr(exc)})
            return
        served = [(d.x1, d.y1, d.x2, d.y2) for d in meta.detections]
        matched, only_served, only_shadow = disagreement(served, [f.box for f in result.faces])
        meta.shadow.CopyFrom(pb.ShadowResult(
            arm=challenger.name, model_version=engine.variant.model_version, faces=len(result.faces),
            matched=matched, only_served=only_served, only_shadow=only_shadow, inference_ms=inference_ms))
        metrics.ROUTED_FRAMES.labels(config.experiment, challenger.name, "shadow").inc()

"""MaskingEngine: detect, track and mask a batch of frames, failing closed on anything untrustworthy."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

from imask.engine.close_up import (
    CLOSE_UP_FLOOR,
    CLOSE_UP_SURE,
    close_up_faces,
    close_up_geometry,
    large_face_vouched,
    unsure_large,
    wants_close_up,
)
from imask.engine.context import is_crowd, small_boxes
from imask.engine.detectors import build_detector
from imask.engine.detectors.base import BatchTimings, Detections, FaceDetector, FloatArray
from imask.engine.detectors.geometry import concat, merge
from imask.engine.detectors.onet import FaceCheck
from imask.engine.masks import MaskSpec, apply_masks, masked_regions_changed, obscure_frame
from imask.engine.orientation import choose, turn, turn_back, upright_is_sure
from imask.engine.picture_range import UNREADABLE, detector_input, second_reading
from imask.engine.picture_stats import (
    PictureStats,
    baseline_offset,
    grey_sample,
    picture_stats,
    thumbnail,
    thumbnail_change,
)
from imask.engine.second_look import (
    RESCAN_FLOOR,
    SecondLook,
    candidates,
    mask_boxes,
    plan_look,
    remembered,
    rescan_geometry,
    second_look,
)
from imask.engine.tracker import FaceTracker, Tracks
from imask.engine.variants import Variant
from imask.ops import metrics
from imask.types import Image

log = logging.getLogger(__name__)
T = TypeVar("T")


MAX_TRACKED_CAMERAS = 4096


@dataclass
class FrameInput:
    camera_id: str
    seq: int
    image: Image  # BGR, HxWx3 uint8; the engine never modifies it
    # Clockwise quarter turns that make the camera's pictures upright, when configured; None: the engine estimates it
    # (variants with orientation "auto") or takes pictures as upright.
    rotation: int | None = None


@dataclass(slots=True)
class MaskedFace:
    box: tuple[float, float, float, float]
    score: float
    landmarks: list[tuple[float, float]]
    track_id: int
    held: bool


@dataclass
class EngineResult:
    image: Image  # masked pixels only, or the fully obscured frame when fail_closed
    faces: list[MaskedFace] = field(default_factory=list)
    fail_closed: bool = False
    fail_closed_reason: str = ""
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    mask_ms: float = 0.0
    batch_size: int = 1
    detected: bool = True  # False: a detect-every-k frame masked from moved tracks alone
    orientation: int = 0  # clockwise degrees the picture was also turned for detection (0: upright only)
    picture: PictureStats | None = None  # frames the detector was run on (or refused as unreadable)


def _at_least(dets: Detections, score: float) -> Detections:
    keep = dets.scores >= score
    if keep.all():
        return dets
    return dets.take(keep)


def _sure(close: Detections | None) -> Detections | None:
    """The close-up faces an orientation estimate weighs: those sure without the large-face check."""
    return None if close is None else _at_least(close, CLOSE_UP_SURE)


# Why the engine fails a frame closed (obscures it whole): imask_frames_fail_closed_total's reason and
# FrameMeta.fail_closed_reason. UNREADABLE: a picture out of the detector's range (picture_range).
DETECTOR_UNHEALTHY = "detector_unhealthy"  # a timed-out inference is still running
DETECTOR_TIMEOUT = "detector_timeout"
DETECTOR_ERROR = "detector_error"
MASK_ERROR = "mask_error"  # masking raised
MASK_GUARD = "mask_guard"  # the mask guard found a face region unchanged
FAIL_CLOSED_REASONS = (DETECTOR_UNHEALTHY, DETECTOR_TIMEOUT, DETECTOR_ERROR, UNREADABLE, MASK_ERROR, MASK_GUARD)


class FailClosed(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class MaskingEngine:
    """Masks frames with one variant. Not thread-safe: one engine per worker thread (they are cheap to share
    a model between, but trackers are per engine)."""

    def __init__(self, variant: Variant, detector: FaceDetector, execution_provider: str = "CPUExecutionProvider",
                 detector_timeout_s: float | None = 2.0) -> None:
        self.variant = variant
        self.detector = detector
        self.execution_provider = execution_provider
        self.detector_timeout_s = detector_timeout_s
        self._trackers: OrderedDict[str, tuple[int, FaceTracker]] = OrderedDict()
        # Per camera: the slow baseline thumbnail picture statistics measure a moved camera against. Apart from the
        # trackers, which restart with a camera's stream or after a fail-closed frame; the view does not.
        self._baselines: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        # Inference runs on its own thread so a hung or slow model can be abandoned after the timeout.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detector")
        self._inflight: Future[Any] | None = None
        self._lock = threading.Lock()
        metrics.EXECUTION_PROVIDER.labels(execution_provider).set(1)
        self._health_gauge = metrics.MODEL_HEALTHY.labels(variant.name)
        self._health_gauge.set(1)
        self._unhealthy_since: float | None = None
        # The second look's larger pass shares the loaded model (families that can re-read at another geometry).
        rescaled = getattr(detector, "with_geometry", None)
        geometry = getattr(detector, "geometry", None)
        self._rescan: FaceDetector | None = (rescaled(rescan_geometry(geometry))
                                             if variant.second_look and rescaled and geometry else None)
        self._close_up: FaceDetector | None = (rescaled(close_up_geometry(geometry))
                                               if variant.close_up and rescaled and geometry else None)
        # ONet (another family) judges each faint crowd candidate and new box the larger pass brings, and each large
        # box under the large-face bar (engine/close_up.py).
        self._face_check: FaceCheck | None = (FaceCheck.load() if self._rescan is not None or self._close_up is not None
                                              else None)

    @classmethod
    def load(cls, variant: Variant, provider: str = "auto", detector_timeout_s: float | None = 2.0,
             intra_op_threads: int = 1) -> MaskingEngine:
        # OpenCV's resizes and blurs get as many threads as inference: on CPU one single-threaded worker per core
        # is the efficient shape, and OpenCV's own thread pool cost 2 ms of CPU per crowd frame in masking alone.
        cv2.setNumThreads(intra_op_threads)
        built = build_detector(variant.detector_request, provider, intra_op_threads)
        return cls(variant, built.detector, built.execution_provider, detector_timeout_s)

    @property
    def healthy(self) -> bool:
        """False while an abandoned (timed-out) inference still occupies the detector."""
        return self._inflight is None or self._inflight.done()

    def wedged(self, longer_than_s: float) -> bool:
        """True when a timed-out inference has occupied the detector for longer than this."""
        since = self._unhealthy_since
        return since is not None and not self.healthy and time.monotonic() - since > longer_than_s

    def warm_up(self) -> bool:
        """One inference so the first real frame does not pay for lazy initialisation. Not a frame: no metrics,
        no tracker. Returns False when the detector failed or exceeded its timeout (frames will fail closed)."""
        future = self._executor.submit(self.detector.detect, [np.zeros((360, 640, 3), np.uint8)],
                                       self.variant.threshold, None)
        try:
            future.result(timeout=max(30.0, self.detector_timeout_s or 0))
        except Exception as exc:
            log.error("detector warm-up failed", extra={"error": repr(exc)})
            return False
        return True

    def forget(self, camera_id: str) -> None:
        """Drop a camera's or stream's tracks and baseline (the stream ended)."""
        self._trackers.pop(camera_id, None)
        self._baselines.pop(camera_id, None)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def process(self, frames: list[FrameInput], spec: MaskSpec | None = None,
                threshold: float | None = None) -> list[EngineResult]:
        """Mask a batch. Every input gets exactly one result; none ever carries unmasked face pixels."""
        if not frames:
            return []
        spec = spec or self.variant.mask
        timings = BatchTimings()
        threshold = threshold or self.variant.threshold
        track_threshold = min(threshold, self.variant.track_threshold)
        rule = self.variant.context
        context_threshold = min(rule.threshold, threshold) if rule.enabled else track_threshold
        trackers = [self._tracker(f.camera_id, f.seq) for f in frames]
        # Thumbnails tell scene cuts, which only detect-every-k variants plan by; every detected frame's picture
        # statistics take the grey sample and thumbnail too.
        greys: dict[int, Image] = {}
        if self.variant.detect_every > 1:
            greys = {i: grey_sample(f.image) for i, f in enumerate(frames)}
            detect = self._plan_detections(trackers, [thumbnail(greys[i]) for i in range(len(frames))])
        else:
            detect = list(range(len(frames)))
        pictures = {i: self._picture(frames[i].camera_id, trackers[i], greys.get(i, frames[i].image)) for i in detect}
        detections: dict[int, Detections] = {}
        in_context: set[int] = set()
        required: dict[int, npt.NDArray[np.float32]] = {}  # per crowd frame: what each box needs to start a track
        looks: dict[int, SecondLook] = {}
        # What the detector reads: the frame, or the frame brought back into range (dithered, halftone, noisy);
        # a frame that cannot be is obscured whole. Masks always go on the frame itself.
        readable: dict[int, FrameInput] = {}
        unreadable: dict[int, str] = {}
        restored: set[int] = set()  # read brought back into range: no second look (its faces are faint already)
        second_readings: dict[int, Image] = {}  # ...and read smoothed a second way too (error-diffused dots)
        for i in detect:
            picture, reason = detector_input(frames[i].image)
            if picture is None:
                unreadable[i] = reason
                continue
            if reason:
                metrics.FRAMES_RESTORED.labels(reason).inc()
                restored.add(i)
                second = second_reading(frames[i].image, reason)
                if second is not None:
                    second_readings[i] = second
            readable[i] = FrameInput(frames[i].camera_id, frames[i].seq, picture, frames[i].rotation)
        detect = list(readable)
        if detect:
            # A configured rotation turns the picture before the one pass; estimated ones add passes (_orient).
            images = [turn(readable[i].image, (readable[i].rotation or 0) // 90) for i in detect]
            floor = min(track_threshold, context_threshold)
            try:
                found = self._detect(images, floor, timings)
                found = self._read_again([readable[i] for i in detect], found,
                                         {k: second_readings[i] for k, i in enumerate(detect) if i in second_readings},
                                         floor, timings)
                found, evidence = self._orient([readable[i] for i in detect], [trackers[i] for i in detect], found,
                                               floor, timings)
                found = self._close_ups([readable[i] for i in detect], [trackers[i] for i in detect], found, floor,
                                        threshold, timings, evidence)
            except FailClosed as exc:
                return [self._fail_closed(f, exc.reason, len(frames)) for f in frames]
            detections = dict(zip(detect, found, strict=True))
            if rule.enabled:
                in_context = {i for i in detect if is_crowd(frames[i].image, detections[i], rule)}
            try:
                # Once per crowd frame (the large-face check asks ONet): the second look plans with it, masking uses it.
                required = {i: self._new_track_scores(frames[i].image, detections[i], context_threshold)
                            for i in in_context}
                looks = self._second_looks(readable, trackers, detections,
                                           {i: required[i] for i in in_context - restored}, threshold, timings)
            except FailClosed as exc:
                return [self._fail_closed(f, exc.reason, len(frames)) for f in frames]
            metrics.BATCH_SIZE.observe(len(detect))
        results = []
        for i, frame in enumerate(frames):
            try:
                if i in unreadable:
                    result = self._fail_closed(frame, unreadable[i], len(frames))
                elif i in detections:
                    dets = detections[i]
                    if i in in_context:
                        metrics.CROWD_CONTEXT_FRAMES.inc()
                        result = self._mask_one(frame, trackers[i], dets, spec, context_threshold, looks.get(i),
                                                required[i])
                    else:  # faint boxes read for the context rule count for nothing here
                        result = self._mask_one(frame, trackers[i], _at_least(dets, track_threshold), spec,
                                                threshold)
                else:
                    result = self._mask_tracks(frame, trackers[i].coast(), None, spec)
            except FailClosed as exc:
                result = self._fail_closed(frame, exc.reason, len(frames))
            except Exception:
                log.exception("masking failed", extra={"camera": frame.camera_id, "seq": frame.seq})
                result = self._fail_closed(frame, MASK_ERROR, len(frames))
            result.orientation = trackers[i].orientation * 90
            result.picture = pictures.get(i)
            # Detector stage costs are per batch; each frame in it waited for all of them.
            result.preprocess_ms = timings.preprocess_ms
            result.inference_ms = timings.inference_ms
            result.postprocess_ms = timings.postprocess_ms
            result.batch_size = len(frames)
            results.append(result)
        return results

    def _picture(self, camera_id: str, tracker: FaceTracker, image: Image) -> PictureStats:
        """A detected frame's picture statistics; its thumbnail becomes the camera's reference for the next and
        moves its baseline."""
        grey = image if image.ndim == 2 else grey_sample(image)
        thumb = thumbnail(grey)
        offset, baseline = baseline_offset(thumb, self._baselines.pop(camera_id, None))
        self._baselines[camera_id] = baseline
        while len(self._baselines) > MAX_TRACKED_CAMERAS:
            self._baselines.popitem(last=False)
        stats = picture_stats(grey, thumbnail_change(thumb, tracker.reference), offset)
        tracker.reference = thumb
        return stats

    def _plan_detections(self, trackers: list[FaceTracker], thumbs: list[Image]) -> list[int]:
        """Which frames of the batch a detect-every-k variant runs the detector on: a camera's first frame, the frame
        after k-1 coasted ones, and at once a scene cut (tracks from before it mean nothing). Frames of one camera
        in one batch are planned in order, as they will be processed."""
        k = self.variant.detect_every
        state: dict[int, tuple[int, Image | None]] = {}  # per tracker: (frames coasted, reference thumbnail)
        planned = []
        for i, (tracker, thumb) in enumerate(zip(trackers, thumbs, strict=True)):
            coasted, reference = state.get(id(tracker), (tracker.coasted, tracker.reference))
            cut = reference is not None and thumbnail_change(thumb, reference) > self.variant.scene_cut
            if reference is None or coasted + 1 >= k or cut:
                planned.append(i)
                state[id(tracker)] = (0, thumb)
            else:
                state[id(tracker)] = (coasted + 1, reference)
        return planned

    def _read_again(self, frames: list[FrameInput], found: list[Detections], second: dict[int, Image],
                    threshold: float, timings: BatchTimings) -> list[Detections]:
        """Frames with a second reading (picture_range.second_reading, by position in `frames`): the detector reads
        it too, and the first reading once more at 1.5x the scale where the variant has that pass (its second
        look's), each turned as the frame's configured rotation says; the faces of all readings are merged (NMS)."""
        if not second:
            return found
        jobs = list(second)
        quarter = {k: (frames[k].rotation or 0) // 90 for k in jobs}
        readings = [self._detect([turn(second[k], quarter[k]) for k in jobs], threshold, timings)]
        if self._rescan is not None:
            readings.append(self._detect([turn(frames[k].image, quarter[k]) for k in jobs], threshold, timings,
                                         self._rescan))
        out = list(found)
        for index, k in enumerate(jobs):
            out[k] = merge([found[k], *(reading[index] for reading in readings)], threshold)
        return out

    def _orient(self, frames: list[FrameInput], trackers: list[FaceTracker], upright: list[Detections],
                threshold: float, timings: BatchTimings
                ) -> tuple[list[Detections], dict[tuple[int, int], Detections]]:
        """The upright detections plus those of each camera's other orientation (configured, or estimated on its
        first frame and every `orientation_every` detected frames after), mapped back and merged by NMS; and the
        close-up passes the estimates ran, per (frame, turn), which the close-up step then need not run again."""
        auto = self.variant.orientation == "auto"
        close: dict[tuple[int, int], Detections] = {}
        if not auto and all(frame.rotation is None for frame in frames):
            return upright, close
        estimate = []
        out = list(upright)
        for i, (frame, tracker) in enumerate(zip(frames, trackers, strict=True)):
            if frame.rotation is not None:  # detected turned already: map back, nothing to estimate
                tracker.orientation, tracker.orientation_age = (frame.rotation // 90) % 4, 0
                height, width = frame.image.shape[:2]
                out[i] = turn_back(upright[i], tracker.orientation, height, width)
            elif auto:
                age = tracker.orientation_age
                tracker.orientation_age = None if age is None else age + 1
                due = age is None or age + 1 >= self.variant.orientation_every
                if due and not upright_is_sure(upright[i]):
                    estimate.append(i)
                elif due:
                    tracker.orientation, tracker.orientation_age = 0, 0
        turned: dict[tuple[int, int], Detections] = {}
        if estimate:
            # Turns of one picture share a shape two by two: one detector call per shape, not padded together.
            for group in ((2,), (1, 3)):
                jobs = [(i, t) for i in estimate for t in group]
                results = self._detect([turn(frames[i].image, t) for i, t in jobs], threshold, timings)
                turned.update(zip(jobs, results, strict=True))
            close = self._close_up_evidence(frames, estimate, timings)
            for i in estimate:
                passes = {0: upright[i], **{t: turned[(i, t)] for t in (1, 2, 3)}}
                passes = {t: concat(dets, _sure(close.get((i, t)))) for t, dets in passes.items()}
                trackers[i].orientation, trackers[i].orientation_age = choose(passes), 0
        pending = [i for i, (frame, tracker) in enumerate(zip(frames, trackers, strict=True))
                   if frame.rotation is None and tracker.orientation and (i, tracker.orientation) not in turned]
        if pending:
            results = self._detect([turn(frames[i].image, trackers[i].orientation) for i in pending], threshold,
                                   timings)
            turned.update(((i, trackers[i].orientation), r) for i, r in zip(pending, results, strict=True))
        for i, (frame, tracker) in enumerate(zip(frames, trackers, strict=True)):
            if frame.rotation is None and tracker.orientation:
                height, width = frame.image.shape[:2]
                back = turn_back(turned[(i, tracker.orientation)], tracker.orientation, height, width)
                out[i] = merge([upright[i], back], threshold)
        return out, close

    def _close_up_evidence(self, frames: list[FrameInput], estimate: list[int],
                           timings: BatchTimings) -> dict[tuple[int, int], Detections]:
        """For an orientation estimate: the close-up pass's faces at each of the four turns (in the turned
        picture's pixels), so that a face filling the frame upside down counts as evidence of its turn."""
        if self._close_up is None:
            return {}
        found: dict[tuple[int, int], Detections] = {}
        for group in ((0, 2), (1, 3)):
            jobs = [(i, t) for i in estimate for t in group]
            pictures = [turn(frames[i].image, t) for i, t in jobs]
            passes = self._detect(pictures, CLOSE_UP_FLOOR, timings, self._close_up)
            for job, picture, close in zip(jobs, pictures, passes, strict=True):
                found[job] = close_up_faces(picture, close, self.variant.large_face_fraction)
        return found

    def _close_ups(self, frames: list[FrameInput], trackers: list[FaceTracker], found: list[Detections],
                   floor: float, threshold: float, timings: BatchTimings,
                   known: dict[tuple[int, int], Detections]) -> list[Detections]:
        """Frames unsure of their large faces read once more at a small input (engine/close_up.py), turned as their
        camera's orientation says; the large faces that pass is sure of join the frame's detections. A pass the
        orientation estimate already ran at that turn (`known`) is not run again."""
        if self._close_up is None:
            return found
        variant = self.variant
        due = [k for k, frame in enumerate(frames)
               if wants_close_up(frame.image, found[k], threshold, variant.large_face_fraction,
                                 variant.large_face_threshold)]
        if not due:
            return found
        todo = [k for k in due if (k, trackers[k].orientation) not in known]
        pictures = [turn(frames[k].image, trackers[k].orientation) for k in todo]
        passes = self._detect(pictures, CLOSE_UP_FLOOR, timings, self._close_up) if todo else []
        ran = {k: close_up_faces(picture, close, variant.large_face_fraction)
               for k, picture, close in zip(todo, pictures, passes, strict=True)}
        out = list(found)
        for k in due:
            faces = ran[k] if k in ran else known[(k, trackers[k].orientation)]
            if len(faces):
                metrics.CLOSE_UP_FACES.inc(len(faces))
                height, width = frames[k].image.shape[:2]
                out[k] = merge([found[k], turn_back(faces, trackers[k].orientation, height, width)], floor)
        metrics.CLOSE_UP_PASSES.inc(len(due))
        return out

    def _second_looks(self, frames: dict[int, FrameInput], trackers: list[FaceTracker],
                      detections: dict[int, Detections], required_by_frame: dict[int, npt.NDArray[np.float32]],
                      threshold: float, timings: BatchTimings) -> dict[int, SecondLook]:
        """The second look's verdicts on the crowd frames of `required_by_frame` (each with what its boxes need to
        start a track) that have faint candidates (upright cameras: a turned camera's candidates are all kept, the
        safe side; the caller leaves out frames brought back into range, whose faces the two opinions cannot read
        either). Frames due a full look (a camera's first, then every
        LOOK_EVERY-th) get one batched pass of the larger-scale detector, then ONet on their candidates and new
        boxes; the others reuse their camera's last look (engine/second_look.py)."""
        if self._rescan is None or self._face_check is None:
            return {}
        due: dict[int, npt.NDArray[np.float32]] = {}
        looks: dict[int, SecondLook] = {}
        for i in sorted(required_by_frame):
            required = required_by_frame[i]
            tracker = trackers[i]
            if tracker.orientation != 0 or not candidates(detections[i], required, threshold).any():
                continue
            memory = tracker.look_memory
            if memory is None or memory.due:
                due[i] = required
            else:
                looks[i] = remembered(detections[i], required, threshold, memory)
                tracker.look_memory = memory.older()
        if not due:
            return looks
        rescans = self._detect([frames[i].image for i in due], RESCAN_FLOOR, timings, self._rescan)
        for (i, required), rescan in zip(due.items(), rescans, strict=True):
            plan = plan_look(detections[i], required, threshold, rescan)
            probability = self._face_probability(frames[i].image, plan.to_check)
            looks[i] = second_look(detections[i], plan, probability)
            trackers[i].look_memory = looks[i].memory()
        metrics.SECOND_LOOK_PASSES.inc(len(due))
        return looks

    def _face_probability(self, image: Image, boxes: FloatArray) -> FloatArray:
        """ONet's face probability for boxes of a frame, under the detector's timeout: a check that raises or
        overruns fails the batch closed (an unjudged frame is masked whole, never let through)."""
        check = self._face_check
        if check is None:
            raise FailClosed(DETECTOR_ERROR, "face check: not loaded")
        return self._guarded(lambda: check.face_probability(image, boxes), "face check")

    def _detect(self, images: list[Image], threshold: float, timings: BatchTimings,
                detector: FaceDetector | None = None) -> list[Detections]:
        model = detector or self.detector
        detections = self._guarded(lambda: model.detect(images, threshold, timings), "detector")
        if len(detections) != len(images):
            raise FailClosed(DETECTOR_ERROR, f"{len(detections)} results for {len(images)} frames")
        return detections

    def _guarded(self, call: Callable[[], T], what: str) -> T:
        """A model call on the inference thread, abandoned after the detector's timeout; its failures and overruns
        become FailClosed (DETECTOR_ERROR, DETECTOR_TIMEOUT), and no call starts while an abandoned one runs."""
        with self._lock:
            if not self.healthy:
                raise FailClosed(DETECTOR_UNHEALTHY, "a timed-out inference is still running")
            future = self._executor.submit(call)
            self._inflight = future
        try:
            return future.result(timeout=self.detector_timeout_s)
        except FutureTimeout:
            self._abandon(future)
            raise FailClosed(DETECTOR_TIMEOUT, what) from None
        except Exception as exc:
            log.warning("model call failed", extra={"call": what, "error": repr(exc)})
            raise FailClosed(DETECTOR_ERROR, f"{what}: {exc!r}") from exc

    def _abandon(self, future: Future[Any]) -> None:
        """Ask ONNX Runtime to stop the run; until it returns, the model is reported unhealthy."""
        self._health_gauge.set(0)
        self._unhealthy_since = time.monotonic()
        run_options = getattr(self.detector, "run_options", None)  # backends without one just run to the end
        if run_options is not None:
            run_options.terminate = True

        def reset(_: Future[Any]) -> None:
            if run_options is not None:
                run_options.terminate = False
            self._unhealthy_since = None
            self._health_gauge.set(1)

        future.add_done_callback(reset)
        log.warning("detector timed out", extra={"timeout_s": self.detector_timeout_s})

    def _tracker(self, camera_id: str, seq: int) -> FaceTracker:
        entry = self._trackers.get(camera_id)
        # A sequence going backwards means the camera restarted its stream: old tracks are meaningless.
        if entry is None or seq <= entry[0]:
            tracker = FaceTracker(max_missed=self.variant.max_missed)
        else:
            tracker = entry[1]
            self._trackers.move_to_end(camera_id)
        self._trackers[camera_id] = (seq, tracker)
        while len(self._trackers) > MAX_TRACKED_CAMERAS:
            self._trackers.popitem(last=False)
        return tracker

    def _mask_one(self, frame: FrameInput, tracker: FaceTracker, dets: Detections, spec: MaskSpec,
                  threshold: float, look: SecondLook | None = None,
                  required: npt.NDArray[np.float32] | None = None) -> EngineResult:
        """Track and mask one frame's detections; `required` (what each needs to start a track) when the caller has
        it already, `look` the frame's second-look verdict."""
        if look is not None:
            required = look.required
        elif required is None:
            required = self._new_track_scores(frame.image, dets, threshold)
        boxes = dets.boxes
        if look is not None:
            # A refused candidate may still continue a track a sure detection started; it cannot start one. Kept
            # ones and added boxes are masked at their own size: their boxes shrink so the mask's scale covers just
            # the box.
            refused = look.refused
            metrics.SECOND_LOOK_REFUSED.inc(int(refused.sum()))
            metrics.SECOND_LOOK_KEPT.inc(int((look.candidates & look.keep).sum()))
            metrics.SECOND_LOOK_ADDED.inc(look.added)
            dets = look.detections
            required = np.where(refused, np.float32(np.inf), required).astype(np.float32)
            boxes = mask_boxes(dets.boxes, look.mask_scale, spec.scale)
        return self._mask_tracks(frame, tracker.update(boxes, dets.scores, new_track_score=required), dets, spec)

    def _mask_tracks(self, frame: FrameInput, tracked: Tracks, dets: Detections | None,
                     spec: MaskSpec) -> EngineResult:
        t0 = time.perf_counter()
        out = frame.image.copy()
        regions = apply_masks(out, tracked.boxes, spec)
        if not masked_regions_changed(frame.image, out, regions):
            metrics.FRAMES_UNMASKED.inc()
            log.error("mask guard tripped: a face region was left unchanged", extra={"camera": frame.camera_id})
            return self._fail_closed(frame, MASK_GUARD, 1)
        # Plain Python values in one conversion per array: per-element numpy scalars cost ~10x more per face.
        landmarks = dets.landmarks.tolist() if dets is not None else []
        faces = [
            MaskedFace(box=(box[0], box[1], box[2], box[3]), score=score,
                       landmarks=[] if held or dets is None else [(x, y) for x, y in landmarks[index]],
                       track_id=track_id, held=held)
            for box, score, track_id, held, index in zip(
                tracked.boxes.tolist(), tracked.scores.tolist(), tracked.ids.tolist(), tracked.held.tolist(),
                tracked.detection_index.tolist(), strict=True)
        ]
        held_count = int(tracked.held.sum())
        metrics.FACES_MASKED.labels("false").inc(len(faces) - held_count)
        metrics.FACES_MASKED.labels("true").inc(held_count)
        return EngineResult(image=out, faces=faces, mask_ms=(time.perf_counter() - t0) * 1e3,
                            detected=dets is not None)

    def _new_track_scores(self, image: Image, dets: Detections, threshold: float) -> npt.NDArray[np.float32]:
        """The score each detection needs to start a track: `threshold`, or the large-face threshold for boxes
        large against the frame (see Variant.large_face_fraction), unless ONet and the landmarks vouch for a large
        box scoring at least the variant's threshold (engine/close_up.py)."""
        variant = self.variant
        large = ~small_boxes(image, dets, variant.large_face_fraction)
        required = np.where(large, max(threshold, variant.large_face_threshold), threshold).astype(np.float32)
        if self._face_check is None:
            return required
        floor = max(threshold, variant.threshold)
        unsure = np.flatnonzero(unsure_large(dets, large, floor, variant.large_face_threshold))
        if len(unsure):
            probability = self._face_probability(image, dets.boxes[unsure])
            vouched = large_face_vouched(dets.take(unsure), probability)
            required[unsure[vouched]] = threshold
            metrics.LARGE_FACE_CHECKS.labels("kept").inc(int(vouched.sum()))
            metrics.LARGE_FACE_CHECKS.labels("refused").inc(int((~vouched).sum()))
        return required

    def _fail_closed(self, frame: FrameInput, reason: str, batch_size: int) -> EngineResult:
        metrics.FRAMES_FAIL_CLOSED.labels(reason).inc()
        # Tracks cannot be trusted across a gap we did not see.
        self._trackers.pop(frame.camera_id, None)
        return EngineResult(image=obscure_frame(frame.image), fail_closed=True, fail_closed_reason=reason,
                            batch_size=batch_size)

"""Prometheus metrics shared by every service, and the small ops HTTP server (/metrics, /healthz, /readyz).

One naming scheme everywhere (`imask_*`) so dashboards and alert rules work for workers, ingest and mask-api.
Per-camera labels are deliberate: SREs need latency and lag per camera; one series per camera and stage is fine
for hundreds of cameras.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterable
from typing import Self

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from imask.ops.http import HttpListener, QuietHandler

log = logging.getLogger(__name__)

# 1 ms .. ~16 s, dense where the per-frame budget lives.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 4.0,
                   8.0, 16.0)

STAGE_LATENCY = Histogram(
    "imask_stage_latency_seconds", "Per-frame time spent in a pipeline stage",
    ["stage", "variant", "camera"], buckets=LATENCY_BUCKETS,
)
FRAMES_IN = Counter("imask_frames_in_total", "Frames received by this service", ["camera"])
FRAMES_OUT = Counter("imask_frames_out_total", "Frames emitted by this service (masked, or published by ingest)",
                     ["camera"])
FRAMES_DROPPED = Counter("imask_frames_dropped_total", "Frames dropped on purpose, by reason", ["reason"])
FRAMES_DEAD_LETTERED = Counter("imask_frames_dead_lettered_total", "Inputs sent to the DLQ, by reason", ["reason"])
FRAMES_FAIL_CLOSED = Counter(
    "imask_frames_fail_closed_total", "Frames fully obscured because detection could not be trusted", ["reason"]
)
FRAMES_UNMASKED = Counter(
    "imask_frames_unmasked_total",
    "Frames whose face regions the mask guard found unchanged after masking (each is then fail-closed); "
    "any non-zero value is a bug to page on",
)
FACES_MASKED = Counter("imask_faces_masked_total", "Face regions masked (detected or held by the tracker)", ["held"])
CROWD_CONTEXT_FRAMES = Counter("imask_crowd_context_frames_total",
                               "Detected frames seen as a crowd (engine/context.py), so new small faces needed "
                               "only the variant's context threshold")
FRAMES_RESTORED = Counter("imask_frames_restored_total", "Frames the detector read smoothed because they were out "
                          "of its range (dithered or halftone dots, noise); masks still go on the frame itself",
                          ["reason"])
SECOND_LOOK_REFUSED = Counter("imask_second_look_refused_total",
                              "Faint crowd boxes the second look refused (the 1.5x pass and ONet did not vouch for "
                              "them, or landmarks out of face order): not masked unless they continue a track")
SECOND_LOOK_KEPT = Counter("imask_second_look_kept_total", "Faint crowd boxes the second look confirmed")
SECOND_LOOK_PASSES = Counter("imask_second_look_passes_total",
                             "Crowd frames given the full second look (the 1.5x pass and ONet); a camera's frames in "
                             "between reuse its last one")
SECOND_LOOK_ADDED = Counter("imask_second_look_added_total",
                            "Faces the second look's 1.5x pass found where the main pass had no box, vouched for by "
                            "ONet and masked")
CLOSE_UP_PASSES = Counter("imask_close_up_passes_total",
                          "Frames unsure of their large faces, read again at a small input (the close-up pass)")
CLOSE_UP_FACES = Counter("imask_close_up_faces_total", "Large faces the close-up pass added to a frame's detections")
LARGE_FACE_CHECKS = Counter("imask_large_face_checks_total", "Large boxes under the large-face bar judged by their "
                            "landmarks and ONet: kept (masked) or refused", ["verdict"])
BATCH_SIZE = Histogram("imask_inference_batch_size", "Frames per detector call", buckets=(1, 2, 4, 8, 16, 32))
EXECUTION_PROVIDER = Gauge("imask_execution_provider_info", "ONNX Runtime provider in use (1 = active)",
                           ["provider"])
OUTPUTS_REFUSED = Counter("imask_outputs_refused_total",
                          "Outputs Kafka refused for the message itself (too large, invalid); the frame is then "
                          "dead-lettered", ["output"])
TRANSACTIONS = Counter("imask_kafka_transactions_total",
                       "Exactly-once windows (outputs and input offsets in one Kafka transaction) by result; an "
                       "aborted window is re-read from its start", ["result"])
META_DROPPED = Counter("imask_meta_dropped_total", "frames.meta records mask-api could not deliver (Kafka away "
                       "past the bound, queue full, shutdown)", ["reason"])
RATE_LIMIT_WITHOUT_REDIS = Counter("imask_rate_limit_decisions_without_redis_total", "mask-api rate-limit decisions "
                                   "made without Redis (fail open to a per-replica limit), by decision",
                                   ["decision"])
RATE_LIMIT_REDIS_UP = Gauge("imask_rate_limit_redis_up", "1 while the rate limiter's Redis answers (limits shared by "
                            "every replica), 0 while each replica limits on its own", ["prefix"])
RECORDING_ERRORS = Counter("imask_recording_errors_total", "Recordings that could not be opened, written or closed "
                           "completely (disk full, I/O error); their frames are read again", ["stage"])
ROUTED_FRAMES = Counter("imask_routed_frames_total", "Frames masked under an A/B experiment, by arm (shadow: "
                        "also masked by the challenger, output discarded)", ["experiment", "arm", "role"])
EXPERIMENT_CONFIG_AGE = Gauge("imask_experiment_config_age_seconds",
                              "Seconds since this worker last read its fleet's experiment config from Redis")
EXPERIMENT_ROLLBACKS = Counter("imask_experiment_rollbacks_total", "Experiments rolled back, by who (operator or "
                               "router: guardrails failed max_failed_checks times in a row)", ["experiment", "actor"])
EXPERIMENT_FAILED_CHECKS = Gauge("imask_experiment_failed_checks", "Consecutive guardrail checks an experiment "
                                 "failed (the router rolls back at its max_failed_checks)", ["experiment"])
RECORDER_PAUSED = Gauge("imask_recorder_paused", "1 while the recorder is paused after a failed write (disk full): "
                        "not ready, consumer paused, offsets held at the first frame it did not write")
MODEL_INFO = Gauge("imask_model_info", "1 for the variant and model version this process runs (a registered "
                   "version reads NAME/VERSION)", ["variant", "model_version", "sha256"])
MODEL_HEALTHY = Gauge("imask_model_healthy", "1 when the detector answers within its timeout; exported only by "
                      "processes that run an engine", ["variant"])
QUEUE_DEPTH = Gauge("imask_queue_depth", "Frames waiting inside this process", ["queue"])
GRPC_REQUESTS = Counter("imask_grpc_requests_total", "gRPC mask requests (stream frames count one each) by code",
                        ["method", "code"])
HTTP_REQUESTS = Counter("imask_http_requests_total", "mask-api HTTP API requests by route and status",
                        ["route", "status"])
RESULT_CACHE = Counter("imask_result_cache_total", "mask-api result cache lookups and stores by transport and result "
                       "(hit, miss, bypass, stored, not_stored_*, error: Redis away, off)", ["transport", "result"])


# Live cameras (ingest). One series per camera; removed cameras' series are removed with them.
CAMERA_STATE = Gauge("imask_camera_state", "1 for the camera's current state, 0 for the others",
                     ["camera", "state"])
CAMERA_FPS = Gauge("imask_camera_fps", "Frames per second over the last 5 s (in: decoded, out: published)",
                   ["camera", "direction"])
CAMERA_SECONDS_SINCE_FRAME = Gauge("imask_camera_seconds_since_frame", "Seconds since the last decoded frame",
                                   ["camera"])
CAMERA_FRAMES = Counter("imask_camera_frames_total", "Camera frames by outcome (decoded, published, decimated "
                        "to the target fps)", ["camera", "outcome"])
CAMERA_DROPPED = Counter("imask_camera_frames_dropped_total", "Camera frames dropped by reason (superseded, "
                         "backpressure, oversize); each also has a drop record on frames.dlq", ["camera", "reason"])
CAMERA_RECONNECTS = Counter("imask_camera_reconnects_total", "Reconnects after a lost or failed stream", ["camera"])
CAMERA_ERRORS = Counter("imask_camera_errors_total", "Open failures and read/decode errors", ["camera", "kind"])
CAMERA_GAP = Counter("imask_camera_gap_seconds_total", "Seconds without frames, counted when a camera recovers",
                     ["camera"])
CAMERA_SERIES = (CAMERA_STATE, CAMERA_FPS, CAMERA_SECONDS_SINCE_FRAME, CAMERA_FRAMES, CAMERA_DROPPED,
                 CAMERA_RECONNECTS, CAMERA_ERRORS, CAMERA_GAP)


def zero_series(metric: Counter, **values: Iterable[str]) -> None:
    """Export these label combinations (every combination of the values given per label name) at 0 from now on.

    A labelled counter has no series until a combination counts once, so a panel or alert over a fault counter would
    show nothing (not 0) until the first fault; services call this at start-up with the label values their code
    uses (a camera's series: when the camera starts). Only values from the code's own enumerations: a free-form
    value (an error text, a requested name) is never pre-created."""
    names = list(values)
    for combo in itertools.product(*(tuple(values[name]) for name in names)):
        metric.labels(**dict(zip(names, combo, strict=True)))


def forget_camera(camera: str) -> None:
    """Remove a camera's series from every per-camera metric (the camera was removed)."""
    for metric in (*CAMERA_SERIES, FRAMES_OUT, FRAMES_IN, STAGE_LATENCY):
        position = metric._labelnames.index("camera")  # prometheus_client has no public label listing
        for labels in list(metric._metrics):
            if labels[position] == camera:
                metric.remove(*labels)


def observe_stage(stage: str, variant: str, camera: str, ms: float) -> None:
    STAGE_LATENCY.labels(stage, variant, camera).observe(ms / 1e3)


class OpsServer(HttpListener):
    """Serves /metrics, /healthz (process alive) and /readyz (able to do its job) on one port, read-only: an admin
    API never shares this listener (ops.admin.AdminServer), so it can be exposed to Prometheus on any address."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool], details: Callable[[], dict[str, object]]
                 | None = None, alive: Callable[[], bool] | None = None) -> None:
        self._ready = ready
        self._alive = alive or (lambda: True)
        self._details = details or (lambda: {})
        super().__init__(host, port, self._handler(), "ops-http")

    def start(self) -> Self:
        super().start()
        log.info("ops endpoints listening", extra={"port": self.port})
        return self

    def _handler(self) -> type[QuietHandler]:
        ops = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    self.reply(200, generate_latest(), CONTENT_TYPE_LATEST)
                elif self.path.startswith("/healthz"):  # liveness: failing it gets the process restarted
                    alive = ops._alive()
                    self.reply(200 if alive else 503, b'{"status":"ok"}' if alive else b'{"status":"wedged"}',
                               "application/json")
                elif self.path.startswith("/readyz"):
                    ready = ops._ready()
                    body = json.dumps({"ready": ready, **ops._details()}, default=str).encode()
                    self.reply(200 if ready else 503, body, "application/json")
                else:
                    self.reply(404, b"not found\n", "text/plain")

        return Handler

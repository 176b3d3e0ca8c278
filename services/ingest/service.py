"""Ingest: cameras (RTSP and other streams, files, webcams) and gRPC producers onto frames.raw.

Wiring only; the camera logic lives in imask.cameras. Cameras come from --source flags, a cameras file and the
admin API on its own listener (IMASK_INGEST_ADMIN_HOST/PORT, loopback by default; GET/POST /cameras,
GET/DELETE /cameras/ID), never on the ops port, which can so be exposed for /metrics. The process ends when every
camera has ended (files), or on SIGTERM: cameras stop reading, publish what they decoded, end their streams, and
the producer flushes.
"""

from __future__ import annotations

import logging
import os
import time

from imask.cameras.admin_policy import check_admin_exposure
from imask.cameras.camera import DROP_REASONS
from imask.cameras.config import CameraConfig, load_cameras_file, parse_source
from imask.cameras.manager import CameraManager, KafkaOutbox
from imask.cameras.publish import PublishServer
from imask.ops import metrics
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import ConfigError, IngestSettings
from imask.streaming.kafka import ensure_topics

log = logging.getLogger(__name__)


def initial_cameras(settings: IngestSettings) -> list[CameraConfig]:
    cameras = [parse_source(entry, settings) for entry in settings.sources]
    if settings.cameras_file is not None:
        cameras += load_cameras_file(settings.cameras_file, settings)
    return cameras


def serve(settings: IngestSettings, runtime: ServiceRuntime) -> int:
    cameras = initial_cameras(settings)
    publishing = settings.publish_port >= 0
    if not cameras and not settings.keep_running and not publishing:
        raise ConfigError("no cameras: give --source CAMERA_ID=URL, --cameras-file, or --keep-running to add "
                         "cameras through the admin API")
    check_admin_exposure(settings)
    metrics.zero_series(metrics.FRAMES_DROPPED, reason=[f"ingest_{reason}" for reason in DROP_REASONS])
    ensure_topics(settings)
    outbox = KafkaOutbox(settings)
    manager = CameraManager(settings, outbox)
    for config in cameras:
        manager.add(config)
    server = None
    if publishing:
        server = PublishServer(settings, outbox, manager.claim_external, manager.release_external).start()
        runtime.details["publish_port"] = server.port
    if settings.admin_port >= 0:
        runtime.serve_admin(manager.admin, settings.admin_host, settings.admin_port)
    runtime.mark_ready()
    keep_running = settings.keep_running or publishing
    while not runtime.stopping.is_set() and not (manager.all_ended() and not keep_running):
        time.sleep(0.1)
        manager.tick()
        runtime.details["cameras"] = manager.list()
    if server is not None:
        server.stop()
    manager.stop_all(timeout=60.0)
    manager.tick()
    undelivered = outbox.close(30.0)
    stuck = manager.release_sources()
    statuses = {c.id: c.status(0.0) for c in [*manager.cameras.values(), *manager.retired]}
    summary = {cid: {"frames": s["next_seq"], "counts": s["counts"], "ended": s["ended_reason"]}
               for cid, s in statuses.items()}
    log.info("ingest finished", extra={"cameras": summary, "undelivered": undelivered + outbox.failed})
    unopened = [cid for cid, s in statuses.items() if s["ended_reason"] == "cannot open"]
    if unopened:
        log.error("source failed to open", extra={"cameras": unopened})
    code = 1 if undelivered or outbox.failed or unopened or stuck else 0
    if stuck:
        # A grabber still inside FFmpeg would abort the interpreter's teardown (see Camera.join_grabber); the
        # frames and the Kafka flush are done, so leave without it.
        runtime.close()
        logging.shutdown()
        os._exit(code)
    return code


def run(settings: IngestSettings) -> int:
    return run_service("ingest", settings, lambda runtime: serve(settings, runtime))

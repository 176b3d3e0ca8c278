"""Masking worker: frames.raw -> engine -> frames.masked + frames.meta (or frames.dlq).

Wiring only: the engine, the frame processor and its handler (imask.pipeline), and the library's one
consume -> process -> produce loop (imask.streaming.loop), at least once by default or exactly once with Kafka
transactions. On SIGTERM the loop stops polling, finishes and flushes what it holds, commits and leaves the group.
"""

from __future__ import annotations

import logging

from imask.engine import MaskingEngine
from imask.engine.engine import FAIL_CLOSED_REASONS
from imask.ops import metrics
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import WorkerSettings
from imask.pipeline.handler import MaskingHandler, Processor
from imask.pipeline.processor import DEAD_LETTER_REASONS, FrameProcessor, ProcessorOptions
from imask.pipeline.routed import RoutedProcessor
from imask.registry.resolve import build_engine
from imask.routing.follower import ExperimentFollower
from imask.routing.store import ExperimentStore
from imask.streaming.kafka import ensure_topics
from imask.streaming.loop import ConsumeProcessProduce, LoopOptions

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: WorkerSettings, runtime: ServiceRuntime, engine: MaskingEngine) -> None:
        self.settings = settings
        self.runtime = runtime
        self.engine = engine
        # Its fault counters at 0 from the start, so their panels and alerts read 0, not nothing.
        metrics.zero_series(metrics.FRAMES_FAIL_CLOSED, reason=FAIL_CLOSED_REASONS)
        metrics.zero_series(metrics.FRAMES_DEAD_LETTERED, reason=DEAD_LETTER_REASONS)
        options = ProcessorOptions(
            worker_id=settings.instance_id, limits=settings, jpeg_quality=settings.jpeg_quality,
            dlq_include_raw=settings.dlq_include_raw, max_message_bytes=settings.max_message_bytes)
        self.processor: Processor = FrameProcessor(engine, options)
        self.follower: ExperimentFollower | None = None
        if settings.experiments:  # A/B experiments: an engine per arm, routed in process by camera and ingest time
            self.follower = ExperimentFollower(ExperimentStore(
                settings.redis_url, settings.experiment_fleet or settings.group_id)).start()
            self.processor = RoutedProcessor(
                FrameProcessor(engine, options), settings.model or settings.variant, self.follower,
                lambda ref: FrameProcessor(build_engine(settings, ref), options))
            self.processor.preload()  # the arms of a running experiment load now, not on their first frame
        self.loop = ConsumeProcessProduce(settings, LoopOptions(
            group_id=settings.group_id, topics=[settings.topic_raw], client_id=settings.instance_id,
            batch_max=settings.batch_max, max_inflight=settings.max_inflight,
            exactly_once=settings.exactly_once, transaction_ms=settings.transaction_ms,
            intake_kbytes=settings.intake_kbytes),
            MaskingHandler(self.processor, settings), runtime.stopping, runtime.details)
        runtime.watch_engine(engine)

    def run(self) -> int:
        s = self.settings
        ensure_topics(s)
        details = {"group": s.group_id, "variant": self.engine.variant.name,
                   "provider": self.engine.execution_provider,
                   "delivery": "exactly-once" if s.exactly_once else "at-least-once"}

        def started() -> None:
            log.info("worker started", extra=details)
            self.runtime.details.update(details)
            self.runtime.mark_ready()  # model loaded and warm, subscribed; idle workers are ready too

        try:
            return self.loop.run(on_started=started)
        finally:
            if isinstance(self.processor, RoutedProcessor):
                self.processor.close()
            if self.follower is not None:
                self.follower.close()
            self.engine.close()
            log.info("worker stopped", extra={"fatal": self.loop.fatal})


def run(settings: WorkerSettings) -> int:
    return run_service("worker", settings, lambda runtime: Worker(settings, runtime, build_engine(settings)).run())

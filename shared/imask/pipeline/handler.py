"""The worker's handler for the consume -> process -> produce loop: frames in, masked frame + meta or a drop out.

`FrameProcessor` decides what each frame becomes; this maps its outcomes to Kafka outputs: the masked frame first,
its metadata once the frame was acknowledged (so publish time and end-to-end latency are known, and no metadata
claims a frame Kafka refused), or the drop record. A refused masked frame becomes a drop record; a refused drop
record stops the loop (the last resort).
"""

from __future__ import annotations

import time
from typing import Protocol

from imask.engine import MaskingEngine
from imask.frames.clock import now_us
from imask.frames.envelope import Rejected
from imask.ops import metrics
from imask.ops.settings import KafkaSettings
from imask.pipeline.processor import Outcome
from imask.streaming.loop import Emission, Inbound, Output
from imask.v1 import frames_pb2 as pb

STAGES = ("decode", "queue_wait", "preprocess", "inference", "postprocess", "mask", "encode", "publish",
          "end_to_end")


class Processor(Protocol):
    """FrameProcessor, or RoutedProcessor (an engine per experiment arm)."""

    @property
    def engine(self) -> MaskingEngine: ...

    def process(self, batch: list[Inbound]) -> list[Outcome]: ...

    def drop(self, inbound: Inbound, rejected: Rejected, stage: str) -> Outcome: ...


class MaskingHandler:
    def __init__(self, processor: Processor, topics: KafkaSettings) -> None:
        self.processor = processor
        self.topics = topics
        self.variant = processor.engine.variant.name

    def process(self, batch: list[Inbound]) -> list[Emission]:
        return [self._emission(outcome) for outcome in self.processor.process(batch)]

    def refused(self, emission: Emission, output: Output, error: str) -> list[Output]:
        if output.what == "frame meta":  # the masked frame itself went out; only its metadata is lost
            return []
        outcome = self.processor.drop(emission.inbound, Rejected(
            pb.DROP_REASON_INTERNAL_ERROR, f"{output.what} refused by Kafka: {error}", output.key,
            emission.context), "publish")
        return self._emission(outcome).outputs

    def _emission(self, outcome: Outcome) -> Emission:
        emission = Emission(outcome.inbound, context=outcome.seq)
        camera = outcome.camera_id
        if outcome.drop is not None:
            emission.outputs = [Output(self.topics.topic_dlq, camera, outcome.drop.SerializeToString(),
                                       "drop record", last_resort=True)]
            return emission
        assert outcome.masked is not None and outcome.meta is not None
        meta = outcome.meta
        sent = time.perf_counter()

        def on_masked() -> None:
            t = meta.timings
            t.publish_ms = (time.perf_counter() - sent) * 1e3
            if meta.capture_ts_us and not meta.end_of_stream:
                t.end_to_end_ms = (now_us() - meta.capture_ts_us) / 1e3
                for stage in STAGES:
                    metrics.observe_stage(stage, self.variant, camera, getattr(t, f"{stage}_ms"))
                metrics.FRAMES_OUT.labels(camera).inc()

        emission.outputs = [
            Output(self.topics.topic_masked, camera, outcome.masked.SerializeToString(), "masked frame",
                   on_ack=on_masked),
            # Built when sent, after the frame's ack filled in its publish and end-to-end times.
            Output(self.topics.topic_meta, camera, meta.SerializeToString, "frame meta"),
        ]
        return emission


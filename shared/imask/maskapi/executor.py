"""Runs the (single-threaded, non-thread-safe) engine for many concurrent gRPC calls.

Calls queue up (bounded: a full queue is RESOURCE_EXHAUSTED, not unbounded latency); one thread takes a request
and, when batching is on, whatever compatible requests arrive within `batch_wait` (same mask options), up to
`batch_max`, and runs them as one detector batch. Requests whose deadline passed or whose caller went away are
skipped before any work is done.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from imask.engine import EngineResult, FrameInput, MaskingEngine, MaskSpec
from imask.ops import metrics

log = logging.getLogger(__name__)

# imask_frames_fail_closed_total's reason for a batch whose engine call raised (mask-api's calls get an error):
# mask-api's one reason besides the engine's own (imask.engine.engine.FAIL_CLOSED_REASONS).
ENGINE_EXCEPTION = "engine_exception"


class QueueFull(Exception):
    pass


class DeadlineExpired(Exception):
    pass


class EngineFailed(Exception):
    """The engine raised for a batch; its callers get an error status, never an image."""


@dataclass
class _Job:
    frame: FrameInput
    spec: MaskSpec
    threshold: float | None
    deadline: float | None  # time.monotonic() value
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[EngineResult]
    enqueued: float = field(default_factory=time.monotonic)
    started: float = 0.0


class EngineExecutor:
    def __init__(self, engine: MaskingEngine, queue_max: int = 64, batch_max: int = 1,
                 batch_wait_s: float = 0.0) -> None:
        self.engine = engine
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_max)
        self._finished_streams: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    async def submit(self, frame: FrameInput, spec: MaskSpec, threshold: float | None,
                     deadline: float | None) -> tuple[EngineResult, float]:
        """Result and the time it waited in the queue (ms)."""
        loop = asyncio.get_running_loop()
        job = _Job(frame, spec, threshold, deadline, loop, loop.create_future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests already waiting") from None
        metrics.QUEUE_DEPTH.labels("mask_api").set(self._queue.qsize())
        result = await job.future
        return result, (job.started - job.enqueued) * 1e3

    def full(self) -> bool:
        return self._queue.full()

    def forget(self, camera_id: str) -> None:
        """A stream ended: its tracker is dropped on the engine thread, where the trackers live."""
        self._finished_streams.put(camera_id)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _take_batch(self, first: _Job) -> list[_Job]:
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.batch_max:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            if (job.spec, job.threshold) != (first.spec, first.threshold):
                self._queue.put(job)  # incompatible options: it goes into a later batch
                break
            batch.append(job)
        return batch

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            while not self._finished_streams.empty():
                self.engine.forget(self._finished_streams.get())
            batch = self._take_batch(job) if self.batch_max > 1 else [job]
            now = time.monotonic()
            live = []
            for item in batch:
                if item.future.cancelled():
                    continue
                if item.deadline is not None and now > item.deadline:
                    item.loop.call_soon_threadsafe(_set_exception, item.future, DeadlineExpired())
                    continue
                item.started = now
                live.append(item)
            if not live:
                continue
            try:
                results = self.engine.process([item.frame for item in live], live[0].spec, live[0].threshold)
            except Exception as exc:  # a bug outside the engine's own guards: fail these calls, keep serving
                log.exception("engine failed; the batch's calls get an error, no image")
                metrics.FRAMES_FAIL_CLOSED.labels(ENGINE_EXCEPTION).inc(len(live))
                for item in live:
                    item.loop.call_soon_threadsafe(_set_exception, item.future, EngineFailed(repr(exc)))
                continue
            for item, result in zip(live, results, strict=True):
                item.loop.call_soon_threadsafe(_set_result, item.future, result)
            metrics.QUEUE_DEPTH.labels("mask_api").set(self._queue.qsize())


def _set_result(future: asyncio.Future[EngineResult], result: EngineResult) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[EngineResult], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)

"""Recorder: frames.masked -> one MP4 per camera (and optional JPEG snapshots).

Files close on the end-of-stream marker, after `idle_close_s` without frames, after `segment_s`, when the
camera's stream restarts, or on SIGTERM. Offsets are committed only up to the first frame of a file still open,
so a crash re-reads (and rewrites) the file it lost. Only masked frames exist on this topic; the recorder never
sees raw pixels.

A file that cannot be written (disk full, I/O error: RecordingError) pauses the recorder instead of crashing it:
every open file is discarded, each partition is rewound to the first frame not safely on disk, the consumer is
paused (it stays in its group), readiness goes down and `imask_recorder_paused` is 1; once `resume_free_bytes`
are free again it resumes and re-reads what it had not written.

Wiring only: the recorder's logic (imask.recording.recorder) as the sink of the library's sink consumer
(imask.streaming.sink), which owns Kafka. On SIGTERM the files are closed, offsets committed and the group left.
"""

from __future__ import annotations

from imask.ops import metrics
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import RecorderSettings
from imask.recording.recorder import DROP_REASONS, Recorder
from imask.streaming.kafka import ensure_topics
from imask.streaming.sink import SinkConsumer, run_sink


def record(settings: RecorderSettings, runtime: ServiceRuntime) -> int:
    metrics.zero_series(metrics.FRAMES_DROPPED, reason=DROP_REASONS)
    consumer = SinkConsumer(settings, settings.group_id, [settings.topic_masked], runtime.details)
    recorder = Recorder(settings, consumer, runtime.details)
    runtime.ready_checks.append(lambda: not recorder.paused)
    ensure_topics(settings)
    run_sink(consumer, recorder, runtime.stopping, on_started=runtime.mark_ready)
    return 0


def run(settings: RecorderSettings) -> int:
    return run_service("recorder", settings, lambda runtime: record(settings, runtime))

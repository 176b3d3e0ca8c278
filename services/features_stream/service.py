"""Features stream: frames.meta + frames.dlq -> per-camera windows (10 s tumbling, 60 s hopping every 10 s) ->
Feast (Redis online, parquet offline), one push per view and window end.

Wiring only: the Quix Streams application and its Feast sink live in imask.features.stream, the window arithmetic
in imask.features.windows. Readiness follows the sink: while Feast cannot be written (Redis away) the service is
not ready and redoes its windows from the last checkpoint until a push succeeds. On SIGTERM it commits state,
offsets and pending pushes and leaves the group.
"""

from __future__ import annotations

from imask.features.stream import SKIPPED, build
from imask.ops.metrics import zero_series
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import FeaturesStreamSettings

# imask_features_records_skipped_total's reasons per topic (imask.features.stream's `keep`): a key that is no camera
# id, a key that differs from the record's camera id. An undecodable record is counted without a topic.
SKIP_REASONS = ("unknown_camera", "key_mismatch")


def stream(settings: FeaturesStreamSettings, runtime: ServiceRuntime) -> int:
    zero_series(SKIPPED, topic=[""], reason=["undecodable"])
    zero_series(SKIPPED, topic=[settings.topic_meta, settings.topic_dlq], reason=SKIP_REASONS)
    app = build(settings)
    runtime.ready_checks.append(lambda: app.sink.healthy)
    runtime.details.update(group_id=settings.group_id, feast_project=settings.feast_project,
                           window_s=settings.window_s, hop_s=settings.hop_s)
    app.run(runtime.stopping, on_started=runtime.mark_ready)
    return 0


def run(settings: FeaturesStreamSettings) -> int:
    return run_service("features-stream", settings, lambda runtime: stream(settings, runtime))

"""Alerting: the alerts topic -> Alertmanager (API v2).

Camera events from ingest, drift and tamper events, experiment events: each becomes an Alertmanager alert with
labels (alertname, severity, kind, camera, variant...), annotations (summary, runbook_url into docs/OPERATIONS.md)
and endsAt once its episode is resolved. At least once from the topic: an offset is committed only when every event
before it was delivered and no open episode needs it again, so a restart posts again what may not have been taken
(Alertmanager merges a repeated alert). Alertmanager down: alerts wait and are retried with backoff, the consumer
pauses above IMASK_ALERTING_MAX_PENDING events; nothing is dropped.

Wiring only: the logic is imask.alerting.sink.AlertSink, the consumer imask.streaming.sink. It also samples
consumer-group lag in seconds for the lag alerts (IMASK_ALERTING_LAG_GROUPS).
"""

from __future__ import annotations

from imask.alerting.client import AlertmanagerClient
from imask.alerting.lag import start_lag_sampler
from imask.alerting.sink import AlertSink, DeliveryPolicy, zero_event_series
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import AlertingSettings
from imask.streaming.kafka import ensure_topics
from imask.streaming.sink import SinkConsumer, run_sink


def alerting(settings: AlertingSettings, runtime: ServiceRuntime) -> int:
    policy = DeliveryPolicy(runbook_base=settings.runbook_base, resend_s=settings.resend_s,
                            oneshot_hold_s=settings.oneshot_hold_s, max_age_s=settings.episode_max_age_s,
                            retry_max_s=settings.retry_max_s, max_pending=settings.max_pending)
    consumer = SinkConsumer(settings, settings.group_id, [settings.topic_alerts], runtime.details)
    sink = AlertSink(AlertmanagerClient(settings.alertmanager_url, settings.timeout_s), consumer, policy,
                     runtime.details)
    runtime.details["alertmanager_url"] = settings.alertmanager_url
    zero_event_series()
    ensure_topics(settings)
    start_lag_sampler(settings, settings.lag_groups, settings.lag_interval_s, runtime.stopping)
    run_sink(consumer, sink, runtime.stopping, on_started=runtime.mark_ready)
    return 0


def run(settings: AlertingSettings) -> int:
    return run_service("alerting", settings, lambda runtime: alerting(settings, runtime))

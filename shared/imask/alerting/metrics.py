"""Metrics of `imask alerting` (imask_alerting_*) and the consumer lag it samples (imask_consumer_lag_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("imask_alerting_events_total", "Events read from the alerts topic, by kind and what they did "
                 "(opened, resolved, oneshot, nothing_to_resolve, malformed)", ["kind", "outcome"])
POSTS = Counter("imask_alerting_posts_total", "POSTs to Alertmanager by result (ok, unavailable, refused)",
                ["result"])
ALERTS_REFUSED = Counter("imask_alerting_alerts_refused_total", "Alerts Alertmanager refused one by one (dropped)")
PENDING = Gauge("imask_alerting_pending_alerts", "Alerts waiting for Alertmanager to take them")
PENDING_EVENTS = Gauge("imask_alerting_pending_events", "Events read and not yet delivered (their offsets held)")
OLDEST_PENDING = Gauge("imask_alerting_oldest_pending_seconds", "How long the oldest waiting alert has waited")
OPEN_EPISODES = Gauge("imask_alerting_open_episodes", "Alerts firing from events, not yet resolved")
DELIVERY = Histogram("imask_alerting_delivery_seconds", "From an event's time to Alertmanager taking its alert",
                     buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900))
CONSUMER_LAG_SECONDS = Gauge("imask_consumer_lag_seconds", "Age of the oldest record a consumer group has not "
                             "consumed (0: none waiting)", ["group", "topic", "partition"])
CONSUMER_LAG_MESSAGES = Gauge("imask_consumer_lag_messages", "Records a consumer group has not consumed",
                              ["group", "topic", "partition"])

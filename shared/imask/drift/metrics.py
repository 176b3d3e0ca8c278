"""The drift service's metrics (the Prometheus rule DriftBreach reads imask_drift_breach)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DRIFT_SCORE = Gauge("imask_drift_score", "The latest window's drift statistic of a camera's feature against its "
                    "reference (p-value for ks, distance for wasserstein/psi, sigmas for zscore, the rule's value "
                    "for tamper rules, relative change for before_after)", ["camera", "variant", "feature", "test"])
DRIFT_BREACH = Gauge("imask_drift_breach", "1 while a drift, tamper or variant regression episode of the camera's "
                     "feature is open (after its persistence period)", ["camera", "variant", "feature", "test"])
DRIFT_WINDOWS = Counter("imask_drift_windows_total", "Camera windows the drift monitor judged", ["camera"])
DRIFT_EVENTS = Counter("imask_drift_events_total", "Alert events sent, by kind and action", ["kind", "action"])
DRIFT_REFERENCES = Counter("imask_drift_references_total", "References taken, by source", ["source"])

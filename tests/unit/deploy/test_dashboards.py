"""Grafana dashboards and Prometheus rules against the code, without a server: every metric they name is one a
service defines, every panel query's data comes from some test that has Prometheus scrape its services (or is
allowed empty, with its reason), the datasource is the provisioned one, and the provisioning files point where the
dashboards are. The queries against a real Prometheus: tests/integration (promql.check_queries)."""

from __future__ import annotations

import re

import yaml
from promql import (
    ALLOWED_EMPTY,
    DASHBOARDS,
    PRODUCED_BY,
    SUBSTITUTIONS,
    dashboard_queries,
    dashboards,
    defined_metrics,
    expected_data,
    known_metrics,
    metric_names,
    rule_queries,
)

from imask.devstack.settings import REPO_ROOT

PROVISIONING = REPO_ROOT / "deploy" / "grafana" / "provisioning"


def test_metric_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, stage) (rate(imask_stage_latency_seconds_bucket{stage="a b", '
            'camera=~"$camera"}[1m]))) / on (x) group_left time() - max without (y) (imask_x_total offset 5m) > 0.2 '
            'and up{job="imask"} == 0 or vector(1) unless imask:e2e_slow_ratio:rate5m')
    assert metric_names(expr) == {"imask_stage_latency_seconds", "imask_x_total", "up", "imask:e2e_slow_ratio:rate5m"}


def test_the_code_defines_the_metrics_the_docs_and_rules_rely_on() -> None:
    defined = defined_metrics()
    assert {"imask_frames_unmasked_total", "imask_stage_latency_seconds", "imask_consumer_lag_seconds",
            "imask_drift_breach", "imask_features_last_window_end_seconds", "imask_feature_read_seconds"} <= defined
    assert not {name for name in defined if not re.fullmatch(r"imask_[a-z0-9_]+", name)}


def test_every_dashboard_and_rule_query_names_only_exported_metrics() -> None:
    known = known_metrics()
    queries = dashboard_queries() + rule_queries()
    assert len([q for q in queries if q.panel]) >= 50
    unknown = {q.source: sorted(q.metrics - known) for q in queries if q.metrics - known}
    assert not unknown, unknown
    assert all(q.metrics for q in queries if q.source != "rules.yml: alert Watchdog"), "a query selects no metric"
    assert all("$" not in q.promql for q in queries), [q.promql for q in queries if "$" in q.promql]


def test_every_panel_has_data_somewhere_in_the_suite_or_a_reason_to_be_empty() -> None:
    orphans = [q.source for q in dashboard_queries() if q.panel and not q.metrics & set(ALLOWED_EMPTY)
               and not any(expected_data(q, producer) for producer in PRODUCED_BY)]
    assert not orphans, orphans
    used = set().union(*(q.metrics for q in dashboard_queries() + rule_queries()))
    assert set(ALLOWED_EMPTY) <= used, "an allowed-empty metric no query names: drop it from the list"
    assert set(ALLOWED_EMPTY) <= defined_metrics()


def test_dashboards_use_the_provisioned_datasource_and_substitutable_variables() -> None:
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    docs = dashboards()
    assert set(docs) == {"pipeline.json", "cameras.json", "experiments.json", "features-drift.json"}
    uids = [doc["uid"] for doc in docs.values()]
    assert len(set(uids)) == len(uids)
    for name, doc in docs.items():
        assert doc["schemaVersion"] >= 39, name
        text = str(doc)
        assert set(re.findall(r"'uid': '([^']+)'", text)) - {doc["uid"]} <= {datasource["uid"], "-- Grafana --"}, name
        variables = {"$" + v["name"] for v in doc["templating"]["list"]}
        used = set(re.findall(r"\$\{?(\w+)", text)) - {"__all"}
        assert {"$" + v for v in used} <= variables | set(SUBSTITUTIONS), (name, used)
        ids = [p["id"] for p in doc["panels"]]
        assert len(set(ids)) == len(ids), name
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "imask.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert DASHBOARDS.is_dir()

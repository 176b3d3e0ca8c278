"""The PromQL of the Grafana dashboards (deploy/grafana/dashboards) and of the Prometheus rules
(deploy/prometheus/rules.yml), the metrics the code defines, and a check of every query against a real Prometheus.

A dashboard query names Grafana's template variables; they are substituted before it goes to Prometheus
(`SUBSTITUTIONS`). Metric names are read from the queries without a PromQL parser (the stack's Prometheus, 2.42, has
no parse endpoint): strings, label matchers, ranges and grouping clauses are removed, and what remains that is not a
function, keyword or number is a metric. The code's metrics are read from its source (every `Counter(`, `Gauge(`,
`Histogram(`, `Summary(` with a literal name under shared/imask and services), so no service module needs importing.

Which panels return data after a run depends on what the run's services did: `PRODUCED_BY` lists, per test that has
Prometheus scrape its services, the metrics those services export during it; `ALLOWED_EMPTY` the few metrics that
no test of the suite produces while Prometheus scrapes, each with its reason. A fault counter's known label values
are exported at 0 from its service's start (imask.ops.metrics.zero_series), so its panels read 0 after a clean run
rather than nothing; a label value that is free-form (an error text, a requested name) appears at its first count."""

from __future__ import annotations

import ast
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import yaml

from imask.devstack.procs import ServiceProcess
from imask.devstack.prometheus import register_target, unregister_target
from imask.devstack.settings import REPO_ROOT, StackSettings

DASHBOARDS = REPO_ROOT / "deploy" / "grafana" / "dashboards"
RULES = REPO_ROOT / "deploy" / "prometheus" / "rules.yml"
CODE = (REPO_ROOT / "shared" / "imask", REPO_ROOT / "services")

# Grafana's variables as a dashboard over the last hours would fill them in: every camera and experiment.
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "10m", "$camera": ".*",
                 "$experiment": ".*"}
# Series Prometheus makes itself.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"}

# Metrics no test of the suite produces while Prometheus scrapes, each with its reason: a panel over one of them may
# return nothing. (The fault counters' known label values are exported at 0 from each service's start, or a
# camera's, by imask.ops.metrics.zero_series, so their panels read 0 after a clean run: they are in PRODUCED_BY.)
ALLOWED_EMPTY = {
    "imask_meta_dropped_total": "mask-api's, at 0 from its start only when it publishes frames.meta: imask run has "
                                "no mask-api, and the smoke test (the one that has Prometheus scrape mask-api) "
                                "runs it with IMASK_MASK_API_PUBLISH_META=false",
}

# What each test that has Prometheus scrape its services produces (its panels must return data there).
PRODUCED_BY: dict[str, set[str]] = {
    # tests/integration/test_imask_run.py: imask run (ingest of two file cameras, a worker, recorder, imask alerting,
    # features stream and FeatureService).
    "imask run": {
        "up", "imask:e2e_slow_ratio:rate5m", "imask_stage_latency_seconds", "imask_frames_out_total",
        "imask_frames_unmasked_total", "imask_camera_fps", "imask_camera_state", "imask_camera_seconds_since_frame",
        "imask_camera_frames_total", "imask_faces_masked_total", "imask_queue_depth", "imask_consumer_lag_seconds",
        "imask_consumer_lag_messages", "imask_model_healthy", "imask_model_info", "imask_features_records_total",
        "imask_features_late_records_total", "imask_features_future_clamped_total", "imask_features_ticks_total",
        "imask_features_push_seconds", "imask_features_last_window_end_seconds", "imask_feature_read_seconds",
        # fault counters, at 0 (ops.metrics.zero_series): the worker's, the ingest's and its cameras', the
        # recorder's, the features stream's, the FeatureService's (its one call comes at the run's end) and
        # imask alerting's
        "imask_frames_fail_closed_total", "imask_frames_dead_lettered_total", "imask_frames_dropped_total",
        "imask_camera_frames_dropped_total", "imask_camera_gap_seconds_total", "imask_camera_reconnects_total",
        "imask_camera_errors_total", "imask_features_records_skipped_total", "imask_feature_requests_total",
        "imask_feature_cameras_served_total", "imask_alerting_events_total",
    },
    # tests/integration/test_routing.py: a canary the router rolls back (router and two workers with experiments).
    "canary": {"up", "imask_routed_frames_total", "imask_experiment_failed_checks", "imask_experiment_rollbacks_total",
               "imask_experiment_config_age_seconds", "imask_stage_latency_seconds", "imask_model_info"},
    # tests/integration/test_drift_stack.py: features stream and drift service, a covered camera and a steady one.
    # (its features stream pushes window after window: the run's closes its few windows at its end)
    "drift stack": {"imask_drift_score", "imask_drift_breach", "imask_drift_windows_total", "imask_drift_events_total",
                    "imask_drift_references_total", "imask_features_records_total", "imask_features_rows_pushed_total",
                    "imask_features_pushes_total", "imask_features_last_window_end_seconds",
                    "imask_features_records_skipped_total"},
    # tests/integration/test_smoke.py: mask-api with its HTTP API, one frame through `make smoke`'s script.
    "mask-api smoke": {"imask_http_requests_total", "imask_result_cache_total", "imask_rate_limit_redis_up",
                       "imask_grpc_requests_total", "imask_frames_fail_closed_total"},
}

# A producer whose metrics other dashboards also select with labels it does not make (the canary's workers export
# imask_stage_latency_seconds, never the ingest's capture_to_publish stage): the dashboards it is checked against.
FEEDS = {"canary": ("experiments.json",)}

_FUNCTIONS = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*(?=\s*\()")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
             "inf", "nan"}
_SUFFIXES = ("_bucket", "_count", "_sum")


def substitute(expr: str) -> str:
    for name in sorted(SUBSTITUTIONS, key=len, reverse=True):  # $__range before $__rate_interval's prefix, etc.
        expr = expr.replace(name, SUBSTITUTIONS[name]).replace("${" + name[1:] + "}", SUBSTITUTIONS[name])
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (histogram series by their family name)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = _FUNCTIONS.sub(" ", text)  # function and aggregation names: followed by "("
    text = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?\b", " ", text)  # numbers and durations
    names = set()
    for token in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if token.lower() in _KEYWORDS:
            continue
        names.add(family(token))
    return names


def family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class Query:
    source: str  # where it is written: "pipeline.json: Stage latency p99 [A]", "rules.yml: alert Watchdog"
    expr: str  # as written
    panel: bool  # a dashboard panel's query (expected to return data after a run that produces its metrics)

    @property
    def promql(self) -> str:
        return substitute(self.expr)

    @property
    def metrics(self) -> set[str]:
        return metric_names(self.promql)


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found += _panels(panel.get("panels", []))  # rows may nest (collapsed)
    return found


def dashboard_queries() -> list[Query]:
    queries = []
    for name, doc in dashboards().items():
        for panel in _panels(doc["panels"]):
            for target in panel.get("targets", []):
                queries.append(Query(f"{name}: {panel['title']} [{target['refId']}]", target["expr"], panel=True))
        for variable in doc["templating"]["list"]:
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"])
            assert match, f"{name}: variable {variable['name']} is not a label_values(metric, label) query"
            queries.append(Query(f"{name}: variable {variable['name']}", match.group(1), panel=False))
    return queries


def rules() -> list[dict[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rule_queries() -> list[Query]:
    return [Query(f"rules.yml: {'alert ' + r['alert'] if 'alert' in r else 'record ' + r['record']}", r["expr"],
                  panel=False) for r in rules()]


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def defined_metrics() -> set[str]:
    """Metric families the code defines: a counter by its exposed `_total` name, a histogram or summary by its
    family name (the `_bucket`/`_count`/`_sum` series map back to it, see `family`)."""
    names = set()
    for root in CODE:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                kind = node.func.id if isinstance(node.func, ast.Name) else (
                    node.func.attr if isinstance(node.func, ast.Attribute) else "")
                first = node.args[0]
                if kind in ("Counter", "Gauge", "Histogram", "Summary") and isinstance(first, ast.Constant) \
                        and isinstance(first.value, str) and first.value.startswith("imask_"):
                    name = first.value
                    names.add(name if kind != "Counter" or name.endswith("_total") else name + "_total")
    return names


def known_metrics() -> set[str]:
    return defined_metrics() | recorded_names() | PROMETHEUS_OWN


def expected_data(query: Query, producer: str) -> bool:
    """Whether the test `producer` must see data for this panel query."""
    feeds = FEEDS.get(producer)
    return (query.panel and not query.metrics & set(ALLOWED_EMPTY) and query.metrics <= PRODUCED_BY[producer]
            and (feeds is None or query.source.split(":")[0] in feeds))


# ------------------------------------------------------------------------------------------------ against Prometheus


def prometheus_url() -> str:
    return f"http://127.0.0.1:{StackSettings().prometheus_port}"


def query_range(expr: str, start: float, end: float, step: float = 2.0) -> tuple[str | None, int]:
    """(error, series count) of a range query over [start, end]: error is Prometheus' message when it refused."""
    params = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step})
    request = urllib.request.Request(f"{prometheus_url()}/api/v1/query_range", data=params.encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:  # nosec B310: http to loopback
            body = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
    if body.get("status") != "success":
        return f"{body.get('errorType')}: {body.get('error')}", 0
    return None, len(body["data"]["result"])


def wait_for_samples(producer: str, samples: int = 2, timeout: float = 30.0) -> None:
    """Wait until Prometheus holds `samples` scrapes of a series of every metric the producer's services export
    (rate() needs two)."""
    deadline = time.monotonic() + timeout
    waiting = {m for m in PRODUCED_BY[producer] if ":" not in m and m not in PROMETHEUS_OWN}
    while waiting and time.monotonic() < deadline:
        now = time.time()
        waiting = {m for m in waiting if not query_range(
            f'max(count_over_time({{__name__=~"{m}|{m}_count"}}[2m])) >= {samples}', now - 1, now, 1)[1]}
        if waiting:
            time.sleep(1)
    assert not waiting, f"Prometheus has no {samples} samples of {sorted(waiting)} after {timeout:.0f} s"


def check_queries(queries: list[Query], producer: str | None, start: float, end: float) -> list[str]:
    """Problems with these queries over [start, end]: refused by Prometheus, naming a metric the code does not
    define, or (for panels the producer's services feed) returning no series."""
    known = known_metrics()
    problems = []
    for query in queries:
        unknown = query.metrics - known
        if unknown:
            problems.append(f"{query.source}: names {sorted(unknown)}, which no service exports")
        error, series = query_range(query.promql, start, end + 2)  # the last step at or after `end`
        if error:
            problems.append(f"{query.source}: {error} in {query.promql}")
        elif producer and expected_data(query, producer) and not series:
            problems.append(f"{query.source}: no data after the {producer} test ({query.promql})")
    return problems


def scrape(services: dict[str, tuple[ServiceProcess, str]]) -> Callable[[], None]:
    """Have the stack's Prometheus scrape these services (instance name: (process, service label)), as it does
    those `imask run` starts; returns the function that takes them off again (for request.addfinalizer)."""
    settings = StackSettings()
    names = {f"test-{name}-{svc.ops_port}": (svc, service) for name, (svc, service) in services.items()}
    for name, (svc, service) in names.items():
        register_target(settings, name, svc.ops_port, service)

    def unregister() -> None:
        for name in names:
            unregister_target(settings, name)

    return unregister


@contextmanager
def scraped(services: dict[str, tuple[ServiceProcess, str]]) -> Iterator[None]:
    unregister = scrape(services)
    try:
        yield
    finally:
        unregister()

"""Prometheus rules and the Alertmanager configuration, checked by the real tools (promtool, amtool) and by the
inhibition rules evaluated here. The tools come from Debian's prometheus and prometheus-alertmanager packages
(`make system-deps`); a missing one fails these tests with that hint, never skips them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from imask.alerting import amconfig
from imask.alerting.events import KINDS
from imask.devstack.settings import REPO_ROOT

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
ALERTMANAGER = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
HINT = "not found: install Debian's prometheus and prometheus-alertmanager (`make system-deps`, as root)"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} {HINT}")
    return found


def run(*args: str, cwd: Path = REPO_ROOT) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def alert_rules() -> list[dict[str, object]]:
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = tool("promtool")
    run(promtool, "check", "rules", "rules.yml", cwd=PROMETHEUS)
    out = run(promtool, "test", "rules", "rules_test.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in out


def test_every_alert_rule_has_a_unit_test_that_fires_and_one_that_must_not() -> None:
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for rule in alert_rules():
        name = rule["alert"]
        fires = [c for c in cases if c["alertname"] == name and c.get("exp_alerts")]
        quiet = [c for c in cases if c["alertname"] == name and not c.get("exp_alerts")]
        assert fires, f"{name}: no test where it fires"
        assert quiet or name == "Watchdog", f"{name}: no test where it must not fire"


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    anchors = {re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
               for line in (REPO_ROOT / "docs" / "OPERATIONS.md").read_text().splitlines()
               if line.startswith("### ") or line.startswith("## ")}
    links = {str(rule["annotations"]["runbook_url"]) for rule in alert_rules()}  # type: ignore[index]
    links |= {f"docs/OPERATIONS.md#{spec.runbook}" for spec in KINDS.values()} | {"docs/OPERATIONS.md#alert-events"}
    for link in links:
        assert link.startswith("docs/OPERATIONS.md#") and link.split("#")[1] in anchors, link
    for rule in alert_rules():
        assert {"severity", "kind"} <= set(rule["labels"]), rule["alert"]  # type: ignore[arg-type]


def test_amtool_accepts_the_config_as_shipped_and_as_rendered(tmp_path: Path) -> None:
    amtool = tool("amtool")
    run(amtool, "check-config", str(ALERTMANAGER))
    receivers = amconfig.Receivers("http://127.0.0.1:1234", "http://127.0.0.1:1234/slack", "127.0.0.1:2525", "t")
    path = amconfig.write(amconfig.render(amconfig.load(ALERTMANAGER), receivers), tmp_path, receivers)
    run(amtool, "check-config", str(path))
    assert (tmp_path / "secrets" / "slack_api_url").read_text() == "http://127.0.0.1:1234/slack"
    # Alertmanager reads the global slack_api_url_file from its working directory, not the config's folder.
    assert amconfig.load(path)["global"]["slack_api_url_file"] == str(tmp_path / "secrets" / "slack_api_url")
    assert "secrets" not in ALERTMANAGER.read_text().split("receivers:")[1].split("credentials_file")[0]


def test_a_test_alertmanager_notifies_within_seconds(tmp_path: Path) -> None:
    base = amconfig.load(ALERTMANAGER)
    config = amconfig.timed(base, "1s", "2s", "1h")
    assert (config["route"]["group_wait"], config["route"]["group_interval"]) == ("1s", "2s")
    assert config["route"]["repeat_interval"] == "1h" and base["route"]["group_wait"] == "30s"  # a copy
    watchdog = next(r for r in config["route"]["routes"] if r["receiver"] == "watchdog")
    assert watchdog["group_wait"] == "0s"  # a route's own timings kept
    receivers = amconfig.Receivers()
    run(tool("amtool"), "check-config", str(amconfig.write(config, tmp_path, receivers)))


@pytest.mark.parametrize("labels,receiver", [
    ({"alertname": "Watchdog", "severity": "none", "kind": "watchdog"}, "watchdog"),
    ({"alertname": "CameraDown", "severity": "page", "kind": "camera_down", "camera": "c1"}, "page"),
    ({"alertname": "FramesUnmasked", "severity": "page", "kind": "frames_unmasked"}, "page"),
    ({"alertname": "CameraStalled", "severity": "ticket", "kind": "camera_stalled", "camera": "c1"}, "ticket"),
    ({"alertname": "LatencyBudgetBurnSlow", "severity": "ticket", "kind": "latency_slo"}, "ticket"),
    ({"alertname": "CameraRecovered", "severity": "info", "kind": "camera_recovered"}, "blackhole"),
    ({"alertname": "Unlabelled"}, "ticket"),
])
def test_routes_reach_each_receiver(labels: dict[str, str], receiver: str) -> None:
    amtool = tool("amtool")
    out = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", f"--verify.receivers={receiver}",
              *(f"{k}={v}" for k, v in labels.items()))
    assert out.splitlines()[0].strip() == receiver


def test_a_down_camera_mutes_its_stalled_drift_and_tamper_alerts_only() -> None:
    config = amconfig.load(ALERTMANAGER)
    down = {"alertname": "CameraDown", "severity": "page", "kind": "camera_down", "camera": "c1"}
    for kind in ("camera_stalled", "drift", "tamper_covered", "tamper_moved"):
        target = {"alertname": "X", "severity": "ticket", "kind": kind, "camera": "c1"}
        assert amconfig.inhibited(config, down, target), kind
        assert not amconfig.inhibited(config, down, {**target, "camera": "c2"}), kind  # equal: [camera]
    assert not amconfig.inhibited(config, down, {"alertname": "FramesUnmasked", "severity": "page",
                                                 "kind": "frames_unmasked"})
    assert not amconfig.inhibited(config, {**down, "kind": "camera_stalled"},
                                  {"alertname": "D", "severity": "ticket", "kind": "drift", "camera": "c1"})
    page = {"alertname": "ConsumerLagCritical", "severity": "page", "kind": "consumer_lag", "group": "g"}
    assert amconfig.inhibited(config, page, {**page, "alertname": "ConsumerLagHigh", "severity": "ticket"})
    assert not amconfig.inhibited(config, page, {**page, "severity": "ticket", "group": "other"})

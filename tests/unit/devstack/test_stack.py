"""The local stack's settings and its status and down with nothing running (imask.devstack.stack). The real
stack: tests/integration/test_stack.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from imask.devstack import stack
from imask.devstack.stack import StackSettings


def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMASK_STACK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("IMASK_STACK_KAFKA_PORT", "19092")
    monkeypatch.setenv("IMASK_STACK_REDIS_PORT", "16390")
    settings = StackSettings()
    assert settings.state_dir == tmp_path
    assert settings.bootstrap_servers == "127.0.0.1:19092"
    assert settings.redis_url == "redis://127.0.0.1:16390/0"
    assert settings.kafka_controller_port == 9093
    assert StackSettings.model_fields["state_dir"].default_factory is not None


def test_settings_reject_shared_ports() -> None:
    with pytest.raises(ValidationError):
        StackSettings(kafka_port=9093, kafka_controller_port=9093)


def test_status_and_down_on_empty_state_dir(tmp_path: Path) -> None:
    settings = StackSettings(
        state_dir=tmp_path / "none", kafka_port=19192, kafka_controller_port=19193, redis_port=16490,
        mlflow_port=16491, prometheus_port=16492, alertmanager_port=16493, alert_inbox_port=16494,
        alert_smtp_port=16495, console_port=16496,
    )
    stack.down(settings)  # idempotent: nothing to stop
    state = stack.status(settings)
    assert set(state) == {"kafka", "redis", "mlflow", "alert-inbox", "alertmanager", "prometheus", "console"}
    lean = settings.model_copy(update={"mlflow": False, "alerting": False, "console": False})
    assert set(stack.status(lean)) == {"kafka", "redis"}
    for info in state.values():
        assert info["running"] is False
        assert info["answering"] is False
        assert info["pid"] is None

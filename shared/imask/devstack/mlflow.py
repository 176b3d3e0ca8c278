"""MLflow tracking server of the local stack: the model registry, SQLite backend, artifacts served by itself."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from imask.devstack.server import OneProcessServer
from imask.devstack.settings import StackSettings
from imask.devstack.supervisor import StackError


class MLflow(OneProcessServer):
    name: ClassVar[str] = "mlflow"
    marker: ClassVar[str] = "mlflow server"
    port_env: ClassVar[str] = "IMASK_STACK_MLFLOW_PORT"
    start_timeout_s: ClassVar[float] = 90.0
    # No job runner: it starts a pool of huey worker processes (~250 MB each) for server-side jobs the registry
    # does not use, and their start competes with the pipeline for the cores.
    env: ClassVar[Mapping[str, str]] = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def enabled(self, s: StackSettings) -> bool:
        return s.mlflow

    def port(self, s: StackSettings) -> int:
        return s.mlflow_port

    def folder(self, s: StackSettings) -> Path:
        return s.mlflow_dir

    def endpoint(self, s: StackSettings) -> str:
        return s.mlflow_uri

    def command(self, s: StackSettings) -> list[str]:
        """The tracking server with the model registry: clients upload and download artifacts through it, so
        workers need no shared filesystem."""
        mlflow = Path(sys.executable).parent / "mlflow"
        if not mlflow.exists():
            raise StackError(f"{mlflow} not found: `make venv` installs mlflow (a dev dependency)")
        return [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{s.mlflow_dir / 'mlflow.db'}",
                "--artifacts-destination", str(s.mlflow_dir / "artifacts"), "--serve-artifacts",
                "--host", "127.0.0.1", "--port", str(s.mlflow_port), "--workers", "1"]

    def answering(self, s: StackSettings) -> bool:
        try:
            with urllib.request.urlopen(f"{s.mlflow_uri}/health", timeout=1) as reply:  # nosec B310: http to loopback
                return bool(reply.status == 200)
        except (OSError, ValueError):
            return False


SERVER = MLflow()

"""What every service process shares: logging, signals for graceful draining, the ops endpoint, and an admin API
on a listener of its own for the services that have one."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from imask.ops.admin import AdminRoutes, AdminServer
from imask.ops.logs import configure_logging
from imask.ops.metrics import OpsServer
from imask.ops.settings import BaseServiceSettings

log = logging.getLogger(__name__)

WEDGED_AFTER_S = 60.0  # a detector stuck this long past its timeout fails liveness


def freeze_startup_heap() -> None:
    """Move every object alive now (modules, models, settings) out of the cyclic collector's reach. Its full
    collections otherwise walk them all: ~20 ms pauses in the middle of a frame (measured: a worker's heap of 43k
    objects after start-up; 0.2 ms once frozen). Objects freed by reference counting are freed as before."""
    gc.collect()
    gc.freeze()


class ServiceRuntime:
    """SIGTERM/SIGINT set `stopping`; the service's loop drains and returns. A second signal exits at once."""

    def __init__(self, name: str, settings: BaseServiceSettings) -> None:
        configure_logging(name, settings.log_level, settings.log_json)
        self.name = name
        self.settings = settings
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.details: dict[str, object] = {}
        self.ops: OpsServer | None = None
        self.admin: AdminServer | None = None
        # Services add what readiness and liveness depend on (e.g. the detector's health).
        self.ready_checks: list[Callable[[], bool]] = []
        self.live_checks: list[Callable[[], bool]] = []

    def start(self, ready: Callable[[], bool] | None = None) -> ServiceRuntime:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.ops = OpsServer(self.settings.ops_host, self.settings.ops_port, ready or self.is_ready,
                             lambda: self.details, alive=self.is_alive).start()
        self.details["ops_port"] = self.ops.port
        return self

    def mark_ready(self) -> None:
        """Start-up is over (models loaded and warm, subscribed): freeze what it allocated, then answer ready."""
        freeze_startup_heap()
        self.ready.set()

    def is_ready(self) -> bool:
        return self.ready.is_set() and not self.stopping.is_set() and all(check() for check in self.ready_checks)

    def is_alive(self) -> bool:
        return all(check() for check in self.live_checks)

    def watch_engine(self, engine: Any) -> None:
        """Readiness follows the detector's health (a timed-out run still occupying it takes the process out of
        rotation); liveness fails once it has been wedged for WEDGED_AFTER_S (the process is restarted)."""
        self.ready_checks.append(lambda: bool(engine.healthy))
        self.live_checks.append(lambda: not engine.wedged(WEDGED_AFTER_S))

    def serve_admin(self, routes: AdminRoutes, host: str, port: int) -> int:
        """Answer an admin API (JSON, GET/POST/DELETE) on its own listener, never on the ops port; returns the
        port (0: a free one was picked), also shown in /readyz as admin_port."""
        self.admin = AdminServer(host, port, routes).start()
        self.details["admin_port"] = self.admin.port
        return self.admin.port

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping.is_set():
            log.warning("second signal: exiting without draining")
            raise SystemExit(130)
        log.info("draining", extra={"signal": signal.Signals(signum).name})
        self.stopping.set()

    def close(self) -> None:
        if self.admin is not None:
            self.admin.stop()
        if self.ops is not None:
            self.ops.stop()


def run_service(name: str, settings: BaseServiceSettings, body: Callable[[ServiceRuntime], int]) -> int:
    """Start the runtime (logging, signals, ops endpoint), run the service's loop, always close the listeners."""
    runtime = ServiceRuntime(name, settings).start()
    try:
        return body(runtime)
    finally:
        runtime.close()

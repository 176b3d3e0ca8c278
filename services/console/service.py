"""Console: the operators' web console (imask console), its own service.

Wiring only: the pages, auth and data assembly live in imask.console; this starts the frames.masked / frames.meta /
alerts reader (a consumer group of its own, from the topics' ends), the sources' clients, and the web app on
uvicorn (IMASK_CONSOLE_HOST/PORT, loopback by default) inside the service runtime (ops endpoint, SIGTERM drains).
"""

from __future__ import annotations

import asyncio
import logging

from imask.console.app import ConsoleSources, create_app
from imask.console.auth import OperatorKeys, Sessions, check_auth_settings
from imask.console.live import LiveState
from imask.console.sources import Alertmanager, Experiments, Features, IngestAdmin, Models
from imask.console.tap import FrameTap
from imask.httpapi.server import HttpServer
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import ConsoleSettings
from imask.streaming.kafka import ensure_topics

log = logging.getLogger(__name__)


def sources_of(settings: ConsoleSettings) -> ConsoleSources:
    return ConsoleSources(
        ingest=IngestAdmin(settings.ingest_url, settings.ingest_token),
        experiments=Experiments(settings.router_address, settings.router_api_key) if settings.router_address
        else None,
        features=Features(settings.features_address, settings.features_api_key) if settings.features_address
        else None,
        alertmanager=Alertmanager(settings.alertmanager_url, settings.alert_inbox_dir) if settings.alertmanager_url
        else None,
        models=Models(settings.registry_uri, settings.model_name) if settings.registry_uri else None)


async def serve(settings: ConsoleSettings, runtime: ServiceRuntime) -> int:
    ensure_topics(settings)
    live = LiveState(settings.history_s)
    tap = FrameTap(settings, live, settings.group_id).start()
    sources = sources_of(settings)
    app = create_app(OperatorKeys(settings.token, settings.operator_keys_file), Sessions(settings.session_ttl_s), live,
                     sources, settings.refresh_ms, settings.secure_cookie)
    server = HttpServer(app, settings.host, settings.port, grace_s=2.0)
    port = await server.start()
    runtime.details.update(port=port, host=settings.host, tap_group=tap.group, ingest_url=settings.ingest_url)
    runtime.ready_checks.append(tap.assigned.is_set)
    runtime.mark_ready()
    log.info("console serving", extra={"url": f"http://{settings.host}:{port}/", "tap_group": tap.group})
    while not runtime.stopping.is_set():
        await asyncio.sleep(0.2)
        runtime.details["frames_read"] = tap.consumed
    await server.stop()
    tap.stop()
    for client in (sources.experiments, sources.features):
        if client is not None:
            client.close()
    log.info("console stopped")
    return 0


def run(settings: ConsoleSettings) -> int:
    check_auth_settings(settings.token, settings.operator_keys_file)  # never open, and said before anything starts
    return run_service("console", settings, lambda runtime: asyncio.run(serve(settings, runtime)))

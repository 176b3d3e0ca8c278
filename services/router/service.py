"""Router: A/B experiments over model variants (ExperimentService over gRPC, experiments in Redis).

Wiring only: the router's logic (imask.routing.router), its gRPC API (imask.routing.api), a frames.meta reader that
feeds the tally (from the active experiment's start, so a restarted router sees the whole experiment again), and
the check loop that judges guardrails and rolls back on its own. Workers route frames in process; the router is
not on the frame path, so it being down never stops masking (weights just stay as they are).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from imask.features.repo import FeastSettings
from imask.features.store import FeatureReader
from imask.ops.grpc_auth import ApiKeyInterceptor, api_key_store, server_credentials
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import RouterSettings
from imask.routing.api import ExperimentServicer
from imask.routing.router import AliasMover, RegressionReader, Router
from imask.routing.store import ExperimentStore
from imask.routing.targeting import FeatureRule, Targeter, matching
from imask.streaming.kafka import TopicReader, ensure_topics, offsets_at
from imask.v1 import experiment_service_pb2_grpc as epb_grpc
from imask.v1 import frames_pb2 as pb

log = logging.getLogger(__name__)


def _alias_mover(settings: RouterSettings) -> AliasMover | None:
    if not settings.promote_aliases:
        return None

    def move(variant_ref: str, force: bool, reason: str) -> str:
        from imask.registry.refs import ModelRef
        from imask.registry.store import Registry

        decision = Registry(settings.registry_uri).promote(ModelRef.parse(variant_ref), "champion", force,
                                                                  reason)
        return "" if decision.allowed or force else "; ".join(decision.reasons)
    return move


def _regression_reader(settings: RouterSettings) -> RegressionReader | None:
    if not settings.drift_prefix:
        return None
    from imask.drift.store import DriftStore

    drift = DriftStore(settings.redis_url, settings.drift_prefix)

    def read(variant: str, since_ms: int) -> list[str]:
        return [f"{f.camera_id}: {f.detail}" for f in drift.regressions(variant, since_ms)]
    return read


def _targeter(settings: RouterSettings) -> Targeter:
    """Feature rules of targeted experiments, judged on the cameras' features in Feast (opened on first use: the
    Feast import takes seconds, and most experiments target every camera)."""
    readers: list[FeatureReader] = []

    def target(rule: FeatureRule, cameras: list[str]) -> set[str]:
        if not readers:
            readers.append(FeatureReader(FeastSettings(settings.feast_project, settings.feast_dir,
                                                       settings.redis_url), "operators",
                                         settings.features_stale_after_s))
        return matching(rule, readers[0], cameras)
    return target


def _read_meta(settings: RouterSettings, router: Router, runtime: ServiceRuntime) -> None:
    start_us = 0
    name = router.store.active()
    if name:
        start_us = router.store.spec(name).created_us
    reader = TopicReader(settings, offsets_at(settings, settings.topic_meta, start_us // 1000))
    try:
        while not runtime.stopping.is_set():
            msg = reader.poll(0.5)
            if msg is None:
                continue
            meta = pb.FrameMeta()
            try:
                meta.ParseFromString(msg.value() or b"")
            except Exception:  # not ours to judge: the worker wrote it; skip what does not parse
                continue
            router.on_meta(meta)
    finally:
        reader.close()


async def serve(settings: RouterSettings, runtime: ServiceRuntime) -> int:
    ensure_topics(settings)
    store = ExperimentStore(settings.redis_url, settings.fleet, settings.change_delay_s)
    router = Router(store, _alias_mover(settings), _regression_reader(settings), _targeter(settings))
    # The same API keys (and TLS) as mask-api: changing experiments is an operator's act. The servicer's methods
    # are plain functions (Redis calls), run on the migration thread pool.
    server = grpc.aio.server(interceptors=[ApiKeyInterceptor(api_key_store(settings))],
                             migration_thread_pool=futures.ThreadPoolExecutor(max_workers=8))
    epb_grpc.add_ExperimentServiceServicer_to_server(ExperimentServicer(router), server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    creds = server_credentials(settings)
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    await server.start()
    reader = threading.Thread(target=_read_meta, args=(settings, router, runtime), name="meta-reader", daemon=True)
    reader.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    runtime.details.update(grpc_port=port, fleet=settings.fleet, auth=settings.auth, tls=creds is not None)
    runtime.mark_ready()
    log.info("router serving", extra={"grpc_port": port, "fleet": settings.fleet, "auth": settings.auth})
    while not runtime.stopping.is_set():
        await asyncio.sleep(settings.tick_s)
        try:
            await asyncio.to_thread(router.tick)
            runtime.details["experiment"] = store.active() or ""
        except Exception as exc:  # Redis away: try again next tick; workers keep their last weights
            log.warning("experiment check failed", extra={"error": repr(exc)})
    await health_servicer.enter_graceful_shutdown()
    await server.stop(5)
    reader.join(5)
    log.info("router stopped")
    return 0


def run(settings: RouterSettings) -> int:
    return run_service("router", settings, lambda runtime: asyncio.run(serve(settings, runtime)))

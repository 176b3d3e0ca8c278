"""features: the gRPC FeatureService (per-camera features from Feast's online store, with freshness), with
grpc.health.v1 health and server reflection, the same API keys and TLS as mask-api.

Wiring only: the request -> reply logic is imask.features.serving.FeatureQuery. Start order: listen (health says
NOT_SERVING), open the Feast store and read once per feature service, freeze the start-up heap, then SERVING.
Readiness follows the online store: a probe reads it every `PROBE_S` (and every call tells), so with Redis away
the service is not ready and calls answer UNAVAILABLE, and it is ready again after the first read that succeeds.
On SIGTERM: NOT_SERVING first, in-flight calls get `grace_s`, then the server stops.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imask.features.repo import FeastSettings
from imask.features.schema import SERVICES
from imask.features.serving import (
    DEFAULT_SERVICE,
    FRESHNESS,
    REQUESTS,
    SERVED,
    FeatureQuery,
    FeaturesUnavailable,
    RequestError,
)
from imask.ops.grpc_auth import ApiKeyInterceptor, ApiKeyStore, AuthError, api_key_store, server_credentials
from imask.ops.metrics import zero_series
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import FeaturesSettings
from imask.v1 import feature_service_pb2 as fpb
from imask.v1 import feature_service_pb2_grpc as fpb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = fpb.DESCRIPTOR.services_by_name["FeatureService"].full_name
PROBE_S = 1.0


def feast_settings(settings: FeaturesSettings) -> FeastSettings:
    return FeastSettings(project=settings.feast_project, data_dir=settings.feast_dir, redis_url=settings.redis_url)


class FeatureServicer(fpb_grpc.FeatureServiceServicer):
    """Plain (blocking) methods, run on the server's thread pool: a Feast read is a Redis round trip."""

    # The codes it counts calls under itself; a refused request's (INVALID_ARGUMENT, PERMISSION_DENIED, ...) and an
    # unknown feature service's name appear when first counted.
    CODES = ("OK", "UNAVAILABLE")

    def __init__(self, keys: ApiKeyStore | None) -> None:
        zero_series(REQUESTS, feature_service=SERVICES, code=self.CODES)
        zero_series(SERVED, feature_service=SERVICES, freshness=FRESHNESS)
        self.query: FeatureQuery | None = None  # attached once the store is open
        self.keys = keys

    def GetFeatures(self, request: fpb.GetFeaturesRequest, context: Any) -> fpb.GetFeaturesReply:
        service = request.feature_service or DEFAULT_SERVICE
        query = self.query
        if query is None:
            REQUESTS.labels(service, "UNAVAILABLE").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE, "feature store not open yet")
            raise AssertionError("abort raises")
        try:
            # The interceptor refused calls without a valid key; the caller is needed for its camera binding.
            caller = self.keys.authenticate(context.invocation_metadata()) if self.keys else None
            reply = query.get(request, caller)
        except (AuthError, RequestError) as exc:
            REQUESTS.labels(service, exc.code.name).inc()
            context.abort(exc.code, str(exc))
        except FeaturesUnavailable as exc:
            REQUESTS.labels(service, "UNAVAILABLE").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        REQUESTS.labels(service, "OK").inc()
        return reply


async def serve(settings: FeaturesSettings, runtime: ServiceRuntime) -> int:
    keys = api_key_store(settings)
    server = grpc.aio.server(interceptors=[ApiKeyInterceptor(keys)],
                             migration_thread_pool=futures.ThreadPoolExecutor(max_workers=settings.workers))
    servicer = FeatureServicer(keys)
    fpb_grpc.add_FeatureServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    creds = server_credentials(settings)
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    runtime.details.update(grpc_port=port, tls=creds is not None, auth=settings.auth,
                           feast_project=settings.feast_project, stale_after_s=settings.stale_after_s)
    log.info("features listening; opening the feature store", extra={"grpc_port": port, "tls": creds is not None})

    query = await asyncio.to_thread(FeatureQuery, feast_settings(settings), settings.stale_after_s,
                                    settings.max_cameras, settings.read_path)
    try:
        await asyncio.to_thread(query.warm_up)
    except FeaturesUnavailable as exc:  # Redis away at start: serve, not ready, until a probe reads
        log.warning("feature store unreadable at start", extra={"error": str(exc)})
    servicer.query = query
    runtime.ready_checks.append(lambda: query.healthy)
    status = {True: health_pb2.HealthCheckResponse.SERVING, False: health_pb2.HealthCheckResponse.NOT_SERVING}
    serving = query.healthy
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status[serving])
    runtime.mark_ready()
    log.info("features serving", extra={"grpc_port": port, "feast_project": settings.feast_project})
    waited = 0.0
    while not runtime.stopping.is_set():
        await asyncio.sleep(0.1)
        waited += 0.1
        if waited >= PROBE_S:
            waited = 0.0
            await asyncio.to_thread(query.probe)
        if query.healthy != serving:
            serving = query.healthy
            log.log(logging.INFO if serving else logging.WARNING,
                    "feature store readable" if serving else "feature store unreadable: not ready")
            await health_servicer.set(SERVICE_NAME, status[serving])
    await health_servicer.enter_graceful_shutdown()
    await asyncio.sleep(settings.drain_delay_s)
    log.info("draining in-flight calls", extra={"grace_s": settings.grace_s})
    await server.stop(settings.grace_s)
    log.info("features stopped")
    return 0


def run(settings: FeaturesSettings) -> int:
    return run_service("features", settings, lambda runtime: asyncio.run(serve(settings, runtime)))

"""mask-api: the gRPC MaskService, with grpc.health.v1 health and server reflection, and the HTTP API on its own
port (imask.httpapi; the same servicer, engine, queue, limits and result cache).

Start order: listen (health says NOT_SERVING, HTTP answers 503), load and warm the model, then SERVING. On SIGTERM:
health flips to NOT_SERVING first (load balancers stop sending), in-flight calls get `grace_s` to finish, then the
servers stop.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imask.engine.engine import FAIL_CLOSED_REASONS
from imask.httpapi.app import create_app
from imask.httpapi.server import HttpServer
from imask.maskapi.cache import ResultCache
from imask.maskapi.executor import ENGINE_EXCEPTION, EngineExecutor
from imask.maskapi.ratelimit import RateLimiter
from imask.maskapi.servicer import MaskServicer
from imask.ops import metrics
from imask.ops.grpc_auth import ApiKeyInterceptor, api_key_store, server_credentials
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import MaskApiSettings
from imask.registry.resolve import build_engine
from imask.streaming.kafka import ensure_topics
from imask.streaming.producer import Delivery, Outbox, QueueFull
from imask.v1 import frames_pb2 as pb
from imask.v1 import mask_service_pb2, mask_service_pb2_grpc

log = logging.getLogger(__name__)

META_QUEUE_MAX = 10_000  # frames.meta records held while Kafka is away
META_TIMEOUT_MS = 60_000  # ... for at most this long
SERVICE_NAME = mask_service_pb2.DESCRIPTOR.services_by_name["MaskService"].full_name


class MetaPublisher:
    """Fire-and-forget frames.meta records, so features and drift also see gRPC traffic. A synchronous API serves
    without Kafka: records wait in the producer helper within a bound (META_QUEUE_MAX, META_TIMEOUT_MS), then are
    dropped and counted in imask_meta_dropped_total; topics are ensured in the background, never before serving."""

    DROP_REASONS = ("undelivered", "queue_full", "shutdown")  # imask_meta_dropped_total's reasons

    def __init__(self, settings: MaskApiSettings) -> None:
        metrics.zero_series(metrics.META_DROPPED, reason=self.DROP_REASONS)
        self.topic = settings.topic_meta
        self.outbox = Outbox(settings, max_inflight=META_QUEUE_MAX, poll_thread=True, **{
            "message.timeout.ms": settings.kafka_extra.get("message.timeout.ms", META_TIMEOUT_MS)})
        threading.Thread(target=self._ensure_topics, args=(settings,), name="ensure-topics", daemon=True).start()

    @staticmethod
    def _ensure_topics(settings: MaskApiSettings) -> None:
        try:
            ensure_topics(settings)
        except Exception as exc:  # Kafka down: the API serves anyway; records queue, then drop (counted)
            log.warning("could not ensure topics; frames.meta records will wait, then be dropped",
                        extra={"error": str(exc)})

    @staticmethod
    def _delivered(delivery: Delivery) -> None:
        if not delivery.ok:
            metrics.META_DROPPED.labels("undelivered").inc()

    def __call__(self, camera: str, meta: pb.FrameMeta) -> None:
        try:
            self.outbox.send(self.topic, camera, meta.SerializeToString(), self._delivered, wait=False)
        except QueueFull:
            metrics.META_DROPPED.labels("queue_full").inc()

    def close(self) -> None:
        left = self.outbox.close(10)
        if left:
            metrics.META_DROPPED.labels("shutdown").inc(left)


async def serve(settings: MaskApiSettings, runtime: ServiceRuntime) -> int:
    store = api_key_store(settings)
    limiter = (RateLimiter(settings.redis_url, settings.rate_limit, settings.rate_limit_window_s,
                           prefix=f"{settings.redis_prefix}:rl") if settings.rate_limit else None)
    cache = (ResultCache(settings.redis_url, settings.cache_ttl_s, settings.cache_max_entry_bytes,
                         prefix=f"{settings.redis_prefix}:cache") if settings.cache_ttl_s else None)
    publisher = None
    if settings.publish_meta:
        publisher = MetaPublisher(settings)
    servicer = MaskServicer(settings, store, limiter, publisher, cache)
    server = grpc.aio.server(interceptors=[ApiKeyInterceptor(store)], options=[
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", settings.max_request_bytes)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    mask_service_pb2_grpc.add_MaskServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    reflection.enable_server_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    address = f"{settings.host}:{settings.port}"
    creds = server_credentials(settings)
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    http = None
    if settings.http_port >= 0:
        http = HttpServer(create_app(servicer, runtime.is_ready, runtime.is_alive), settings.http_host,
                          settings.http_port, settings.grace_s, settings.tls_cert_file, settings.tls_key_file,
                          settings.tls_client_ca_file)
        await http.start()
    http_port = http.port if http else -1
    runtime.details.update(grpc_port=port, http_port=http_port, tls=creds is not None, auth=settings.auth)
    log.info("mask-api listening; loading the model", extra={"grpc_port": port, "http_port": http_port,
                                                              "tls": creds is not None})

    engine = await asyncio.to_thread(build_engine, settings)
    runtime.watch_engine(engine)
    metrics.zero_series(metrics.FRAMES_FAIL_CLOSED, reason=(*FAIL_CLOSED_REASONS, ENGINE_EXCEPTION))
    executor = EngineExecutor(engine, settings.queue_max, settings.batch_max, settings.batch_wait_ms / 1e3)
    servicer.attach(executor)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    runtime.mark_ready()
    log.info("mask-api serving", extra={"grpc_port": port, "provider": engine.execution_provider})
    while not runtime.stopping.is_set():
        await asyncio.sleep(0.1)
    await health_servicer.enter_graceful_shutdown()
    # Keep answering while load balancers notice NOT_SERVING, then refuse new calls and finish in-flight ones.
    await asyncio.sleep(settings.drain_delay_s)
    log.info("draining in-flight calls", extra={"grace_s": settings.grace_s})
    await asyncio.gather(server.stop(settings.grace_s), *([http.stop()] if http else []))
    executor.close()
    engine.close()
    if publisher is not None:
        publisher.close()
    if limiter is not None:
        await limiter.close()
    if cache is not None:
        await cache.close()
    log.info("mask-api stopped")
    return 0


def run(settings: MaskApiSettings) -> int:
    return run_service("mask-api", settings, lambda runtime: asyncio.run(serve(settings, runtime)))

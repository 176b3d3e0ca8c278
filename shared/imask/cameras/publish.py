"""The gRPC `IngestService.Publish` client stream: encoded frames from producers that speak neither RTSP nor
Kafka, onto frames.raw with the same envelope, keying and numbering as cameras.

It runs inside the ingest process on its own thread and event loop (grpc.aio), with the same API keys and TLS
as mask-api. Frames are checked at the edge (camera id, image header, size): a refused frame gets a reason in
the reply and no sequence number; an accepted one is counted when Kafka acknowledges it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

import grpc

from imask.cameras.camera import AckCallback
from imask.cameras.manager import KafkaOutbox
from imask.frames.clock import now_us
from imask.frames.envelope import check_outgoing, make_frame
from imask.frames.ids import check_camera_id
from imask.ops import metrics
from imask.ops.grpc_auth import ApiKeyInterceptor, ApiKeyStore, AuthError, Client, api_key_store, server_credentials
from imask.ops.settings import IngestSettings
from imask.v1 import frames_pb2 as pb
from imask.v1 import ingest_service_pb2 as ipb
from imask.v1 import ingest_service_pb2_grpc

log = logging.getLogger(__name__)
MAX_REPORTED_ERRORS = 10
MAX_INFLIGHT = 64  # frames of one stream Kafka has not acknowledged yet; then the stream waits (flow control)
MAX_PUBLISHED_CAMERAS = 10_000  # cameras whose numbering this ingest remembers (oldest ended first)


class PublishServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    def __init__(self, settings: IngestSettings, outbox: KafkaOutbox, claim: Callable[[str], bool],
                 store: ApiKeyStore | None = None, release: Callable[[str], None] = lambda _: None) -> None:
        self.settings = settings
        self.release = release  # frees an id claimed for gRPC streams
        self.store = store  # with auth on, a key publishes only the camera ids its entry lists
        self.outbox = outbox
        self.claim = claim  # reserves a camera id for this stream; False when a camera of this ingest has it
        self.next_seq: OrderedDict[str, int] = OrderedDict()

    def check(self, request: ipb.PublishRequest, caller: Client | None = None) -> tuple[int, int] | str:
        """The frame's (width, height), or why it cannot be published."""
        if caller is not None and not caller.may_publish(request.camera_id):
            return f"key of {caller.client_id!r} may not publish camera {request.camera_id[:40]!r}"
        try:
            if request.end_of_stream:
                check_camera_id(request.camera_id)
                size = (0, 0)
            else:
                size = check_outgoing(request.camera_id, request.image, self.settings)
        except ValueError as exc:
            return str(exc)
        if not self.claim(request.camera_id):
            return f"camera {request.camera_id!r} is a camera of this ingest; publish under another id"
        return size

    def _number(self, camera: str) -> int:
        """The camera's next seq. The table is bounded: the camera unheard of longest is ended (its stream gets
        an end-of-stream marker, so downstream closes it) and would start again from 0."""
        seq = self.next_seq.pop(camera, 0)
        self.next_seq[camera] = seq + 1
        while len(self.next_seq) > MAX_PUBLISHED_CAMERAS:
            old, next_seq = self.next_seq.popitem(last=False)
            self.outbox.end_of_stream(old, next_seq, 0.0)
            self.release(old)
        return seq

    async def Publish(self, request_iterator: AsyncIterator[ipb.PublishRequest],
                      context: grpc.aio.ServicerContext) -> ipb.PublishReply:
        sent = rejected = 0
        acks = {"ok": 0, "failed": 0}
        errors: list[str] = []
        touched: set[str] = set()

        def acked(camera: str, seq: int) -> AckCallback:
            def on_ack(ok: bool, error: str = "") -> None:
                acks["ok" if ok else "failed"] += 1
                if not ok:  # every seq ends somewhere: a frame Kafka refused becomes a drop record
                    self.outbox.drop(camera, seq, pb.DROP_REASON_INTERNAL_ERROR, f"not delivered: {error}"[:500])
                    if len(errors) < MAX_REPORTED_ERRORS:
                        errors.append(f"not delivered: {error}")
            return on_ack

        caller = None
        if self.store is not None:
            try:
                caller = self.store.authenticate(context.invocation_metadata())
            except AuthError as exc:  # the interceptor refuses these first; kept as a second line
                await context.abort(exc.code, str(exc))
        index = 0
        async for request in request_iterator:
            index += 1
            checked = self.check(request, caller)
            if isinstance(checked, str):
                problem = checked
                rejected += 1
                metrics.GRPC_REQUESTS.labels("Publish", "INVALID_ARGUMENT").inc()
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append(f"frame {index}: {problem}")
                continue
            camera = request.camera_id
            touched.add(camera)
            if request.end_of_stream:
                self.outbox.end_of_stream(camera, self.next_seq.get(camera, 0), request.source_fps)
                continue
            while sent - acks["ok"] - acks["failed"] >= MAX_INFLIGHT:
                await asyncio.sleep(0.002)  # Kafka is behind: stop reading the stream (gRPC flow control)
            # Numbered before any await: concurrent streams of one camera never share a number.
            seq = self._number(camera)
            width, height = checked
            frame = make_frame(camera, seq, request.image, width, height, request.capture_ts_us or now_us(),
                               request.source_fps)
            while True:
                try:
                    self.outbox.frame(camera, frame.SerializeToString(), acked(camera, seq))
                    break
                except BufferError:
                    await asyncio.sleep(0.01)  # Kafka is slow: the stream waits (gRPC flow control does the rest)
            sent += 1
            metrics.GRPC_REQUESTS.labels("Publish", "OK").inc()
            metrics.FRAMES_OUT.labels(camera).inc()
        deadline = asyncio.get_running_loop().time() + 30.0
        while acks["ok"] + acks["failed"] < sent and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        log.info("publish stream done", extra={"cameras": sorted(touched), "sent": sent, "acked": acks["ok"],
                                               "rejected": rejected})
        return ipb.PublishReply(accepted=acks["ok"], rejected=rejected, errors=errors,
                                next_seq={c: self.next_seq.get(c, 0) for c in touched})


class PublishServer:
    """grpc.aio server on a thread of its own, so the threaded ingest can start and stop it."""

    def __init__(self, settings: IngestSettings, outbox: KafkaOutbox, claim: Callable[[str], bool],
                 release: Callable[[str], None] = lambda _: None) -> None:
        self.settings = settings
        self._store = api_key_store(settings)
        self.servicer = PublishServicer(settings, outbox, claim, self._store, release)
        self.port = 0
        self._creds = server_credentials(settings)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="publish-grpc", daemon=True)

    def start(self) -> PublishServer:
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise RuntimeError(f"Publish server failed to start: {self._error}")
        log.info("Publish stream listening", extra={"publish_port": self.port, "tls": self._creds is not None})
        return self

    def stop(self, grace: float = 5.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(grace + 5)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(), which raises it in the service thread
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        s = self.settings
        server = grpc.aio.server(interceptors=[ApiKeyInterceptor(self._store)], options=[
            ("grpc.max_receive_message_length", s.max_request_bytes)])
        ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(self.servicer, server)  # type: ignore[no-untyped-call]
        address = f"{s.publish_host}:{s.publish_port}"
        self.port = server.add_secure_port(address, self._creds) if self._creds else server.add_insecure_port(address)
        await server.start()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        await self._stop.wait()
        await server.stop(5.0)

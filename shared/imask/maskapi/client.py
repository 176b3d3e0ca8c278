"""A Python client for MaskService, and a remote engine for `imask mask --remote` (videos through MaskStream)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from imask.engine import EngineResult, FrameInput
from imask.engine.engine import MaskedFace
from imask.media import decode_any, encode_jpeg
from imask.ops.grpc_auth import client_channel
from imask.v1 import mask_service_pb2 as mpb
from imask.v1 import mask_service_pb2_grpc as mgrpc

MAX_MESSAGE = 16 * 1024 * 1024


def channel(target: str, tls_ca: Path | None = None, client_cert: Path | None = None,
            client_key: Path | None = None) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    return client_channel(target, tls_ca, client_cert, client_key, options)


class MaskClient:
    def __init__(self, target: str, api_key: str | None = None, tls_ca: Path | None = None,
                 client_cert: Path | None = None, client_key: Path | None = None, timeout_s: float = 30.0) -> None:
        self.channel = channel(target, tls_ca, client_cert, client_key)
        self.stub = mgrpc.MaskServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        self.timeout_s = timeout_s

    def mask(self, image: bytes, options: mpb.MaskOptions | None = None, camera_id: str = "",
             seq: int = 0) -> mpb.MaskReply:
        request = mpb.MaskRequest(image=image, options=options, camera_id=camera_id, seq=seq)
        reply: mpb.MaskReply = self.stub.Mask(request, timeout=self.timeout_s, metadata=self.metadata)
        return reply

    def mask_stream(self, requests: Iterator[mpb.MaskRequest], timeout_s: float | None = None) -> Iterator[
            mpb.MaskReply]:
        replies: Iterator[mpb.MaskReply] = self.stub.MaskStream(requests, timeout=timeout_s,
                                                               metadata=self.metadata)
        return replies

    def close(self) -> None:
        self.channel.close()


class RemoteEngine:
    """Quacks like MaskingEngine.process for one frame at a time: each camera (file) gets its own MaskStream,
    so temporal persistence works across a video's frames exactly as in the worker."""

    def __init__(self, client: MaskClient, options: mpb.MaskOptions | None = None) -> None:
        self.client = client
        self.options = options
        self._streams: dict[str, tuple[queue.Queue[mpb.MaskRequest | None], Iterator[mpb.MaskReply]]] = {}
        self._lock = threading.Lock()

    def _stream(self, camera: str) -> tuple[queue.Queue[mpb.MaskRequest | None], Iterator[mpb.MaskReply]]:
        with self._lock:
            if camera not in self._streams:
                outgoing: queue.Queue[mpb.MaskRequest | None] = queue.Queue()
                replies = self.client.mask_stream(iter(outgoing.get, None))
                self._streams[camera] = (outgoing, replies)
            return self._streams[camera]

    def process(self, frames: list[FrameInput]) -> list[EngineResult]:
        results = []
        for frame in frames:
            outgoing, replies = self._stream(frame.camera_id)
            # Files are not cameras: no camera_id (the stream itself carries the tracks).
            outgoing.put(mpb.MaskRequest(image=encode_jpeg(frame.image, 95), seq=frame.seq, options=self.options))
            reply = next(replies)
            results.append(EngineResult(
                image=decode_any(reply.image) if reply.image else np.zeros_like(frame.image),
                faces=[MaskedFace((d.x1, d.y1, d.x2, d.y2), d.score, [(p.x, p.y) for p in d.landmarks],
                                  d.track_id, d.held) for d in reply.detections],
                fail_closed=reply.fail_closed, fail_closed_reason=reply.fail_closed_reason))
        return results

    def close(self) -> None:
        for outgoing, _ in self._streams.values():
            outgoing.put(None)
        self.client.close()

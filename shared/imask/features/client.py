"""A Python client of the FeatureService (`imask features`): what `imask features show`, `imask run`'s summary and
the benchmark read through."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from imask.ops.grpc_auth import client_channel
from imask.v1 import feature_service_pb2 as fpb
from imask.v1 import feature_service_pb2_grpc as fpb_grpc

DEFAULT_TARGET = "127.0.0.1:50071"


class FeatureClient:
    def __init__(self, target: str = DEFAULT_TARGET, api_key: str | None = None, tls_ca: Path | None = None,
                 client_cert: Path | None = None, client_key: Path | None = None, timeout_s: float = 5.0) -> None:
        self.channel = client_channel(target, tls_ca, client_cert, client_key)
        self.stub = fpb_grpc.FeatureServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        self.timeout_s = timeout_s

    def get(self, cameras: Sequence[str], feature_service: str = "", variant: str | None = None,
            timeout_s: float | None = None) -> fpb.GetFeaturesReply:
        request = fpb.GetFeaturesRequest(cameras=list(cameras), feature_service=feature_service)
        if variant is not None:
            request.variant = variant
        reply: fpb.GetFeaturesReply = self.stub.GetFeatures(request, timeout=timeout_s or self.timeout_s,
                                                            metadata=self.metadata)
        return reply

    def close(self) -> None:
        self.channel.close()

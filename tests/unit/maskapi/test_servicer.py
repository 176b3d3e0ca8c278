"""mask-api's servicer (imask.maskapi.servicer) without a server: requests before the model is ready."""

from __future__ import annotations

import grpc
import pytest

from imask.v1 import mask_service_pb2 as mpb


def test_requests_before_the_model_is_ready_are_unavailable() -> None:
    import asyncio

    from imask.maskapi.servicer import MaskServicer, RequestError
    from imask.ops.settings import MaskApiSettings

    servicer = MaskServicer(MaskApiSettings(auth="none"), None, None)  # not attached: the model is loading
    with pytest.raises(RequestError) as err:
        asyncio.run(servicer.mask_image(mpb.MaskRequest(image=b"x"), None, "anonymous", None, "k", 0))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.retry_after_s == 1

"""Fuzzing mask-api over real gRPC (a server of its own) with hypothesis (inputs, strategies and the shared property:
tests/fuzzing.py): no crash, no hang, a reply or INVALID_ARGUMENT per request, and no output carries the input's
face."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from fuzzing import (
    CAMERAS,
    FUZZ,
    POOL,
    Encoded,
    Tally,
    _decoded,
    assert_no_face_out,
    image_bytes,
)
from hypothesis import given, note
from hypothesis import strategies as st

from conftest import subprocess_env
from imask.devstack.procs import ServiceProcess, free_port
from imask.maskapi.client import MaskClient
from imask.v1 import mask_service_pb2 as mpb
from streams import spawn_tracked


@pytest.fixture(scope="module")
def fuzz_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    logs = tmp_path_factory.mktemp("fuzz-api")
    svc: ServiceProcess = spawn_tracked("fuzz-api", ["mask-api", "--port", str(port), "--no-publish-meta"], logs,
                                        {**subprocess_env(), "IMASK_AUTH": "none", "IMASK_MASK_API_QUEUE_MAX": "256"})
    svc.wait_ready(120)
    yield port
    svc.proc.terminate()
    svc.proc.wait(30)


def test_fuzz_mask_api(fuzz_api: int) -> None:
    tally = Tally("mask_api")
    client = MaskClient(f"127.0.0.1:{fuzz_api}", timeout_s=30)
    # Most options are in range (so most requests get masked), the rest anything a float can hold.
    def option(low: float, high: float) -> st.SearchStrategy[float]:
        return st.sampled_from(["default", "sane", "sane", "wild"]).flatmap(
            lambda kind: st.just(0.0) if kind == "default" else st.floats(low, high) if kind == "sane" else
            st.floats(allow_nan=True, allow_infinity=True, width=32))

    @FUZZ
    @given(image_bytes(), st.integers(0, 3), st.integers(0, 2), option(0.2, 4.5), option(0.01, 0.5),
           st.sampled_from(["", *CAMERAS]),
           st.integers(0, 2**63 - 1), st.booleans())
    def one(case: tuple[bytes, Encoded, bool], style: int, shape: int, scale: float, threshold: float,
            camera: str, seq: int, detections_only: bool) -> None:
        data, enc, intact = case
        note(f"picture {enc.name}, intact {intact}, {len(data)} bytes")
        options = mpb.MaskOptions(style=style, shape=shape, mask_scale=scale, threshold=threshold,  # type: ignore[arg-type]
                                  detections_only=detections_only)
        try:
            reply = client.mask(data, options, camera_id=camera, seq=seq)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            tally.record(exc.code().name)
            return
        tally.record("fail_closed" if reply.fail_closed else "OK")
        if detections_only:
            assert not reply.image
            return
        assert_no_face_out(tally, _decoded(data), _decoded(reply.image), enc.face if intact else None,
                           reply.fail_closed)

    try:
        one()
        assert len(client.mask(POOL[2].data).detections) == 1  # still serving, same answers
    finally:
        client.close()
        tally.write()

"""Fuzzing with hypothesis: generated and mutated inputs through the worker's frame processing, mask-api (real
gRPC) and `imask mask` (files). Properties: no crash, no hang, exactly one outcome per input, and no output
carries the input's face (the region changed, and the YuNet referee does not re-find it confidently).

`make test` runs FUZZ_EXAMPLES (300) per target; `make reliability` runs 10,000 and writes the tallies into
out/reliability/ for the report."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from fuzzing import EXAMPLES, RANDOM, Encoded, Tally, assert_no_face_out, face_pool
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from conftest import subprocess_env
from imask.devstack.procs import ServiceProcess, free_port
from imask.engine import MaskingEngine
from imask.filemask import mask_files
from imask.frames.clock import now_us
from imask.maskapi.client import MaskClient
from imask.ops.settings import FrameLimits
from imask.pipeline.processor import FrameProcessor, Inbound, ProcessorOptions
from imask.v1 import frames_pb2 as pb
from imask.v1 import mask_service_pb2 as mpb
from streams import spawn_tracked

POOL = face_pool()
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

CAMERAS = ["lobby", "cam-1", "site.3:door"]
camera_ids = st.one_of(st.sampled_from(CAMERAS), st.text(max_size=140))


@st.composite
def image_bytes(draw: st.DrawFn) -> tuple[bytes, Encoded, bool]:
    """(bytes, the picture they came from, intact?): whole files, truncated, bit-flipped, spliced or garbage."""
    enc = draw(st.sampled_from(POOL))
    data = bytearray(enc.data)
    how = draw(st.sampled_from(["intact"] * 3 + ["truncate", "flip", "flip", "splice", "garbage"]))
    if how == "truncate":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 16))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
    elif how == "splice":
        start = draw(st.integers(0, len(data)))
        data[start:start] = draw(st.binary(max_size=512))
    elif how == "garbage":
        data = bytearray(draw(st.binary(max_size=4096)))
    return bytes(data), enc, how == "intact"


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[bytes | None, bytes, Encoded, bool]:
    """Most envelopes are well formed (only their image bytes vary) so most inputs reach the engine; the rest break
    one thing: the schema, the id, the key, the encoding, the declared size, the marker flag, the protobuf."""
    data, enc, intact = draw(image_bytes())
    height, width = enc.pixels.shape[:2]
    broken = draw(st.sampled_from(["none"] * 6 + ["schema", "camera", "key", "encoding", "size", "marker",
                                                  "protobuf"]))
    camera = draw(st.text(max_size=140)) if broken == "camera" else draw(st.sampled_from(CAMERAS))
    frame = pb.Frame(
        schema_version=draw(st.integers(0, 5)) if broken == "schema" else 1, camera_id=camera,
        seq=draw(st.integers(0, 2**63 - 1)), capture_ts_us=draw(st.integers(0, 2**62)), ingest_ts_us=now_us(),
        encoding=draw(st.integers(0, 9)) if broken == "encoding" else draw(st.sampled_from(
            [pb.ENCODING_JPEG, pb.ENCODING_PNG])),
        width=draw(st.integers(0, 9000)) if broken == "size" else width,
        height=draw(st.integers(0, 9000)) if broken == "size" else height,
        data=data, end_of_stream=broken == "marker", trace_id=draw(st.text(max_size=40)))
    value = bytearray(frame.SerializeToString())
    if broken == "protobuf":
        for _ in range(draw(st.integers(1, 8))):
            value[draw(st.integers(0, len(value) - 1))] = draw(st.integers(0, 255))
    key = draw(st.binary(max_size=40)) if broken == "key" else draw(st.sampled_from([None, camera.encode()]))
    return key, bytes(value), enc, intact and broken in ("none", "key", "marker", "encoding")


def _decoded(data: bytes) -> np.ndarray | None:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    return image


@pytest.fixture(scope="module")
def worker_tally() -> Iterator[Tally]:
    tally = Tally("worker")
    yield tally
    tally.write()


def test_fuzz_worker_frames(engine: MaskingEngine, worker_tally: Tally) -> None:
    processor = FrameProcessor(engine, ProcessorOptions("fuzz", FrameLimits()))

    @FUZZ
    @given(envelopes())
    def one(case: tuple[bytes | None, bytes, Encoded, bool]) -> None:
        key, value, enc, intact = case
        note(f"picture {enc.name}, intact {intact}")
        outcomes = processor.process([Inbound(key, value, "raw", 0, 0, now_us())])
        assert len(outcomes) == 1
        outcome = outcomes[0]
        assert (outcome.masked is None) != (outcome.drop is None)
        if outcome.drop is not None:
            assert outcome.drop.reason != pb.DROP_REASON_UNSPECIFIED and outcome.drop.detail
            assert not outcome.drop.raw  # no raw bytes in drop records by default
            worker_tally.record(pb.DropReason.Name(outcome.drop.reason))
            return
        assert outcome.masked is not None
        out_frame = outcome.masked.frame
        if out_frame.end_of_stream:
            assert not out_frame.data, "an end-of-stream marker carried pixels out"
            worker_tally.record("end_of_stream")
            return
        worker_tally.record("fail_closed" if outcome.masked.fail_closed else "masked")
        inbound = pb.Frame.FromString(value)
        assert_no_face_out(worker_tally, _decoded(inbound.data), _decoded(out_frame.data),
                           enc.face if intact else None, outcome.masked.fail_closed)

    one()
    assert sum(worker_tally.outcomes.values()) >= EXAMPLES * 0.9  # hypothesis ran what it was asked to


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


def test_fuzz_imask_mask_files(engine: MaskingEngine, tmp_path: Path) -> None:
    tally = Tally("imask_mask")

    @FUZZ
    @given(image_bytes(), st.sampled_from([".jpg", ".jpeg", ".png", ".JPG", ".bmp", ".txt", ""]))
    def one(case: tuple[bytes, Encoded, bool], suffix: str) -> None:
        data, enc, intact = case
        note(f"picture {enc.name}, intact {intact}, {len(data)} bytes, suffix {suffix!r}")
        folder = tmp_path / uuid.uuid4().hex[:8]
        folder.mkdir()
        source = folder / f"in{suffix}"
        source.write_bytes(data)
        reports = mask_files(engine, [source], folder / "out", progress=False)
        assert len(reports) == 1
        report = reports[0]
        if report.error or report.output is None:
            tally.record("refused")
            return
        tally.record("fail_closed" if report.fail_closed else "masked")
        output = cv2.imread(str(report.output), cv2.IMREAD_COLOR)
        assert output is not None
        assert_no_face_out(tally, cv2.imread(str(source), cv2.IMREAD_COLOR), output,
                           enc.face if intact else None, bool(report.fail_closed))

    try:
        one()
    finally:
        tally.write()

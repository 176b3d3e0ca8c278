"""The int8 CenterFace model: cached by what made it, head kept in fp32, finds what fp32 finds; the default
variant uses it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from imask.engine import default_variant
from imask.engine.detectors.centerface.model import load_centerface, packaged_centerface_path, prepare_centerface
from imask.engine.detectors.centerface.quantize import cache_key, fp32_nodes, int8_centerface
from imask.types import Image

# --- int8 ------------------------------------------------------------------------------------------------------

def test_int8_model_is_cached_by_what_made_it_and_keeps_the_head_fp32(tmp_path: Path) -> None:
    """(Making it twice gives the same bytes: checked by hand, docs/EVALUATION.md; ~45 s a time is too slow here.)"""
    raw = packaged_centerface_path().read_bytes()
    prepared = prepare_centerface(raw)
    source = hashlib.sha256(raw).hexdigest()
    first = int8_centerface(prepared, source)  # the shared cache the engine fixture filled
    (tmp_path / f"centerface-int8-{cache_key(source)}.onnx").write_bytes(b"kept")
    assert int8_centerface(prepared, source, tmp_path) == b"kept"  # a cache hit is read, not remade
    assert cache_key(source) != cache_key("0" * 64)

    import onnx

    model = onnx.load_from_string(first)
    quantized_inputs = {i for n in model.graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    by_output = {o: n for n in model.graph.node for o in n.output}
    heat = by_output[model.graph.output[0].name]
    assert heat.op_type == "Sigmoid"  # not a quantized one: scores keep their full resolution
    head = by_output[heat.input[0]]
    assert head.op_type == "Conv" and head.input[1] not in quantized_inputs  # fp32 weights
    assert len(fp32_nodes(onnx.load_from_string(prepared))) >= 6


def test_int8_finds_what_fp32_finds(astronaut_image: Image) -> None:
    fp32 = load_centerface(provider="cpu", precision="fp32")
    int8 = load_centerface(provider="cpu", precision="int8")
    assert int8.precision == "int8" and fp32.precision == "fp32"
    blob = np.ascontiguousarray(cv2.resize(astronaut_image, (512, 512)).transpose(2, 0, 1)[::-1][None],
                                np.float32)
    heat32 = fp32.session.run(None, {fp32.input_name: blob})[0][0, 0]
    heat8 = int8.session.run(None, {int8.input_name: blob})[0][0, 0]
    assert np.unravel_index(heat32.argmax(), heat32.shape) == np.unravel_index(heat8.argmax(), heat8.shape)
    assert abs(float(heat32.max()) - float(heat8.max())) < 0.1
    assert len(np.unique(heat8[heat8 > 0.01])) > 300  # not 1/256 steps


def test_precision_is_checked() -> None:
    from imask.engine.detectors.base import ModelError

    with pytest.raises(ModelError, match="precision"):
        load_centerface(provider="cpu", precision="int4")


def test_default_variant_reports_int8_and_crowd_context() -> None:
    version = default_variant().model_version
    assert "/int8" in version and "/ctx0.03" in version and "/t0.2/" in version

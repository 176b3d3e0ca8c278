"""Variants: a named, versioned configuration of detector, input size, threshold and mask style.

A/B routing and canaries later pick variants by name; the engine only needs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from imask.engine.masks import MaskSpec
from imask.engine.model import CENTERFACE_SHA256


@dataclass(frozen=True)
class Variant:
    name: str
    version: str
    detector: str = "centerface"
    model_sha256: str = CENTERFACE_SHA256
    input_width: int = 640
    input_height: int = 384
    threshold: float = 0.2        # a new face needs this score
    track_threshold: float = 0.05  # a face already tracked stays masked down to this score
    mask: MaskSpec = field(default_factory=MaskSpec)
    max_missed: int = 5  # frames a lost face stays masked
    max_downscale: float = 2.0  # large frames keep at least half their resolution for the detector (0: off)

    @property
    def model_version(self) -> str:
        return (f"{self.detector}@{self.model_sha256[:12]}/{self.input_width}x{self.input_height}"
                f"/t{self.threshold:g}/k{self.track_threshold:g}")

    def with_overrides(self, **changes: object) -> Variant:
        return replace(self, **changes)  # type: ignore[arg-type]


REGISTRY: dict[str, Variant] = {
    "default": Variant(name="default", version="1"),
    # Cheaper input for many-camera CPU deployments; recall drops on small faces.
    "fast": Variant(name="fast", version="1", input_width=320, input_height=192),
}


def default_variant() -> Variant:
    return REGISTRY["default"]


def get_variant(name: str) -> Variant:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {sorted(REGISTRY)}") from None

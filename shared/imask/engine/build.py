"""An engine from service settings: the variant with per-deployment overrides, loaded and warmed up."""

from __future__ import annotations

import logging

from imask.engine.engine import MaskingEngine
from imask.engine.masks import MaskShape, MaskSpec, MaskStyle
from imask.engine.variants import get_variant
from imask.ops.settings import EngineSettings

log = logging.getLogger(__name__)


def build_engine(settings: EngineSettings) -> MaskingEngine:
    """The variant with any per-deployment overrides from settings applied."""
    variant = get_variant(settings.variant)
    mask = variant.mask
    mask = MaskSpec(
        style=MaskStyle(settings.mask_style) if settings.mask_style else mask.style,
        shape=MaskShape(settings.mask_shape) if settings.mask_shape else mask.shape,
        scale=settings.mask_scale or mask.scale,
    )
    variant = variant.with_overrides(
        mask=mask, threshold=settings.threshold or variant.threshold,
        input_width=settings.detector_width or variant.input_width,
        input_height=settings.detector_height or variant.input_height,
    )
    engine = MaskingEngine.load(variant, settings.provider, settings.detector_timeout_ms / 1e3,
                                settings.intra_op_threads)
    if not engine.warm_up():
        log.error("detector warm-up failed: frames will be fully obscured (fail closed) until it recovers")
    return engine

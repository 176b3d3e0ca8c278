"""An engine for a variant, with a service's per-deployment overrides applied, loaded and warmed up.

Which variant runs (a built-in name or a registered model version) is decided above the engine
(`imask.registry.resolve`): the registry hands the engine a variant, never the other way round.
"""

from __future__ import annotations

import logging

from imask.engine.engine import MaskingEngine
from imask.engine.masks import MaskShape, MaskSpec, MaskStyle
from imask.engine.variants import Variant, get_variant
from imask.ops import metrics
from imask.ops.settings import EngineSettings

log = logging.getLogger(__name__)


def builtin_variant(settings: EngineSettings) -> Variant:
    """The settings' built-in variant with their per-deployment overrides."""
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
    return variant


def load_engine(variant: Variant, settings: EngineSettings) -> MaskingEngine:
    """The engine for `variant` on the settings' provider and threads, loaded and warmed up."""
    engine = MaskingEngine.load(variant, settings.provider, settings.detector_timeout_ms / 1e3,
                                settings.intra_op_threads)
    metrics.MODEL_INFO.labels(variant.name, variant.model_version, variant.model_sha256[:12]).set(1)
    log.info("engine loaded", extra={"variant": variant.name, "model_version": variant.model_version})
    if not engine.warm_up():
        log.error("detector warm-up failed: frames will be fully obscured (fail closed) until it recovers")
    return engine

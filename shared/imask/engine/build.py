"""An engine from service settings: the variant with per-deployment overrides, loaded and warmed up."""

from __future__ import annotations

import logging

from imask.engine.engine import MaskingEngine
from imask.engine.masks import MaskShape, MaskSpec, MaskStyle
from imask.engine.variants import Variant, get_variant
from imask.ops import metrics
from imask.ops.settings import ConfigError, EngineSettings

# Settings that change a variant; a registered version refuses them.
OVERRIDES = ("mask_style", "mask_shape", "mask_scale", "threshold", "detector_width", "detector_height")

log = logging.getLogger(__name__)


def engine_variant(settings: EngineSettings) -> Variant:
    """The built-in variant with any per-deployment overrides, or a registered version exactly as registered."""
    if settings.model:
        overrides = [name for name in OVERRIDES if getattr(settings, name) is not None]
        if overrides:
            raise ConfigError(f"IMASK_MODEL={settings.model} runs a registered version as registered; "
                              f"{', '.join('IMASK_' + n.upper() for n in overrides)} would change it (register a "
                              "new version with `imask model register --set ...` instead)")
        from imask.registry.refs import ModelRef, RegistryError
        from imask.registry.store import Registry

        try:
            return Registry(settings.mlflow_tracking_uri, settings.model_cache_dir).load(ModelRef.parse(settings.model))
        except RegistryError as exc:
            raise ConfigError(f"IMASK_MODEL={settings.model}: {exc}") from None
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


def build_engine(settings: EngineSettings, variant_ref: str | None = None) -> MaskingEngine:
    """The engine for a service's settings, loaded and warmed up; `variant_ref` (an experiment arm's built-in variant
    name or registry NAME/VERSION) instead of the settings' own variant."""
    if variant_ref is None:
        variant = engine_variant(settings)
    elif "/" in variant_ref or "@" in variant_ref:
        variant = engine_variant(settings.model_copy(update={"model": variant_ref, **dict.fromkeys(OVERRIDES)}))
    else:
        variant = get_variant(variant_ref)
    engine = MaskingEngine.load(variant, settings.provider, settings.detector_timeout_ms / 1e3,
                                settings.intra_op_threads)
    metrics.MODEL_INFO.labels(variant.name, variant.model_version, variant.model_sha256[:12]).set(1)
    log.info("engine loaded", extra={"variant": variant.name, "model_version": variant.model_version})
    if not engine.warm_up():
        log.error("detector warm-up failed: frames will be fully obscured (fail closed) until it recovers")
    return engine

"""Which variant a service runs: a registered model version (IMASK_MODEL, or an experiment arm's NAME/VERSION) as
registered, or a built-in variant with the deployment's overrides; then the engine for it."""

from __future__ import annotations

from imask.engine import MaskingEngine, Variant
from imask.engine.build import builtin_variant, load_engine
from imask.engine.variants import get_variant
from imask.ops.settings import ConfigError, EngineSettings
from imask.registry.refs import ModelRef, RegistryError
from imask.registry.store import Registry

# Settings that change a variant; a registered version refuses them.
OVERRIDES = ("mask_style", "mask_shape", "mask_scale", "threshold", "detector_width", "detector_height")


def engine_variant(settings: EngineSettings) -> Variant:
    """The built-in variant with any per-deployment overrides, or a registered version exactly as registered."""
    if not settings.model:
        return builtin_variant(settings)
    overrides = [name for name in OVERRIDES if getattr(settings, name) is not None]
    if overrides:
        raise ConfigError(f"IMASK_MODEL={settings.model} runs a registered version as registered; "
                          f"{', '.join('IMASK_' + n.upper() for n in overrides)} would change it (register a "
                          "new version with `imask model register --set ...` instead)")
    try:
        return Registry(settings.registry_uri, settings.model_cache_dir).load(ModelRef.parse(settings.model))
    except RegistryError as exc:
        raise ConfigError(f"IMASK_MODEL={settings.model}: {exc}") from None


def variant_for(settings: EngineSettings, variant_ref: str | None = None) -> Variant:
    """The settings' own variant, or `variant_ref`: an experiment arm's built-in variant name or registry
    NAME/VERSION (NAME@ALIAS)."""
    if variant_ref is None:
        return engine_variant(settings)
    if "/" in variant_ref or "@" in variant_ref:
        return engine_variant(settings.model_copy(update={"model": variant_ref, **dict.fromkeys(OVERRIDES)}))
    return get_variant(variant_ref)


def build_engine(settings: EngineSettings, variant_ref: str | None = None) -> MaskingEngine:
    """The engine for a service's settings (or an arm's `variant_ref`), loaded and warmed up."""
    return load_engine(variant_for(settings, variant_ref), settings)

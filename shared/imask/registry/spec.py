"""A variant as data: the JSON document stored with each registered version (`variant.json`).

Every field of `Variant` is written; reading refuses unknown or missing keys, so a version registered by a newer
release is not run with settings silently dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from imask.engine.masks import MaskShape, MaskSpec, MaskStyle
from imask.engine.variants import Variant
from imask.registry.refs import RegistryError

SPEC_SCHEMA = "imask.variant/1"
# Where a version's files come from at load time, not what it is.
LOCAL_FIELDS = ("model_path", "registry_version")
# Fields added after versions were registered, with the value that reproduces how those versions ran.
ADDED_FIELDS: dict[str, Any] = {"orientation": "upright", "orientation_every": 150, "second_look": False,
                               "close_up": False}


def variant_to_spec(variant: Variant) -> dict[str, Any]:
    fields = {f.name: getattr(variant, f.name) for f in dataclasses.fields(variant)
              if f.name not in (*LOCAL_FIELDS, "mask")}
    mask = variant.mask
    return {"schema": SPEC_SCHEMA, **fields,
            "mask": {"style": mask.style.value, "shape": mask.shape.value, "scale": mask.scale}}


def variant_from_spec(spec: dict[str, Any], model_path: str = "", registry_version: str = "") -> Variant:
    if spec.get("schema") != SPEC_SCHEMA:
        raise RegistryError(f"variant spec schema {spec.get('schema')!r}, this release reads {SPEC_SCHEMA!r}")
    spec = {**ADDED_FIELDS, **spec}
    expected = {f.name for f in dataclasses.fields(Variant)} - set(LOCAL_FIELDS)
    given = set(spec) - {"schema"}
    if given != expected:
        raise RegistryError(f"variant spec keys differ from this release's: unknown {sorted(given - expected)}, "
                            f"missing {sorted(expected - given)}")
    raw_mask = spec["mask"]
    try:
        mask = MaskSpec(style=MaskStyle(raw_mask["style"]), shape=MaskShape(raw_mask["shape"]),
                        scale=float(raw_mask["scale"]))
        values = {k: v for k, v in spec.items() if k not in ("schema", "mask")}
        return Variant(**values, mask=mask, model_path=model_path, registry_version=registry_version)
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryError(f"bad variant spec: {exc}") from None

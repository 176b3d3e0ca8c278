"""The masking engine: detector, tracker and mask styles. Pure computation, no I/O besides loading the model.

Workers, the `imask mask` command and mask-api all call :class:`MaskingEngine`; there is no other masking code.
"""

from imask.engine.engine import EngineResult, FrameInput, MaskingEngine
from imask.engine.masks import MaskShape, MaskSpec, MaskStyle
from imask.engine.variants import Variant, default_variant

__all__ = [
    "EngineResult",
    "FrameInput",
    "MaskShape",
    "MaskSpec",
    "MaskStyle",
    "MaskingEngine",
    "Variant",
    "default_variant",
]

"""Type aliases shared across the library."""

from typing import Any

import numpy as np
import numpy.typing as npt

# BGR uint8 HxWx3 by convention. Typed loosely because OpenCV's stubs return untyped arrays.
Image = npt.NDArray[Any]
FloatArray = npt.NDArray[np.float32]

"""Camera ids: one rule for every id in the system.

Ids become metric labels, file names and URL paths (/cameras/ID), so `a/b` and `a_b` must not both exist and label
sets must stay bounded in what they can hold.
"""

from __future__ import annotations

import re

# Anchored for pydantic (its Rust regex reads `$` as the end of the text). Python's `$` also matches before a
# final newline, so Python code checks with fullmatch: "cam\n" is not an id.
CAMERA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_CAMERA_ID = re.compile(CAMERA_ID_PATTERN)


def is_camera_id(text: str) -> bool:
    return _CAMERA_ID.fullmatch(text) is not None


def camera_id_error(text: str) -> str:
    return f"camera_id {text[:40]!r} is empty or not of [A-Za-z0-9._:-], 1..128 characters"


def check_camera_id(camera_id: str) -> None:
    if not is_camera_id(camera_id):
        raise ValueError(camera_id_error(camera_id))

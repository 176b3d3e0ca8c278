"""References to registered versions: `name@alias`, `name/3` (also with MLflow's `models:/` prefix)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_REF = re.compile(rf"^(?:models:/)?(?P<name>{_NAME})(?:@(?P<alias>[A-Za-z][A-Za-z0-9_-]{{0,63}})|/(?P<version>\d+))$")


class RegistryError(RuntimeError):
    """The registry is unreachable, a reference does not resolve, an artifact fails its check, or a gate refuses."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str = ""
    version: str = ""

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        match = _REF.match(text.strip())
        if match is None:
            raise RegistryError(f"bad model reference {text!r}: expected NAME@ALIAS or NAME/VERSION "
                                "(e.g. imask-masker@champion, imask-masker/3)")
        return cls(match["name"], match["alias"] or "", match["version"] or "")

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"

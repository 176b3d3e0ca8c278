"""The Go tools `make deploy-check` runs, installed once into the repository's ignored cache (.cache/tools)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GoTool:
    name: str
    module: str  # the package `go install` builds
    version: str

    def path(self, cache: Path) -> Path:
        return cache / f"{self.name}@{self.version}" / self.name


KUSTOMIZE = GoTool("kustomize", "sigs.k8s.io/kustomize/kustomize/v5", "v5.7.1")
ACTIONLINT = GoTool("actionlint", "github.com/rhysd/actionlint/cmd/actionlint", "v1.7.12")
TOOLS = (KUSTOMIZE, ACTIONLINT)


class ToolMissing(RuntimeError):
    """A tool is not installed and cannot be (no `go`)."""


def ensure(tool: GoTool, cache: Path) -> Path:
    """The tool's binary, installed with `go install MODULE@VERSION` into cache/NAME@VERSION when absent."""
    binary = tool.path(cache)
    if binary.is_file():
        return binary
    go = shutil.which("go")
    if go is None:
        raise ToolMissing(f"{tool.name} {tool.version} is not in {binary.parent} and `go` is not installed")
    env = {**os.environ, "GOBIN": str(binary.parent.resolve()), "GOPATH": str((cache / "go").resolve()),
           "GOFLAGS": "-modcacherw", "CGO_ENABLED": "0"}
    binary.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([go, "install", f"{tool.module}@{tool.version}"], env=env, check=True)
    return binary

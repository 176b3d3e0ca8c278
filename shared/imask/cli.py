"""`imask`: one entry point for every service and tool. Settings come from IMASK_* variables; flags override."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_origin

from pydantic_settings import BaseSettings

from imask.config import (
    ConfigError,
    EngineSettings,
    IngestSettings,
    RecorderSettings,
    WorkerSettings,
    describe,
    load_settings,
)

COMMON_KAFKA = ["bootstrap_servers", "ops_host", "ops_port", "log_level"]


def _flag_type(cls: type[BaseSettings], name: str) -> dict[str, Any]:
    annotation = cls.model_fields[name].annotation
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction, "default": None}
    if get_origin(annotation) is list:
        return {"action": "append", "default": None}
    return {"default": None}


def add_setting_flags(parser: argparse.ArgumentParser, cls: type[BaseSettings], names: Sequence[str]) -> None:
    for name in names:
        field = cls.model_fields[name]
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"{field.description} "
                            f"(IMASK_{name.upper()})", **_flag_type(cls, name))


def settings_from(cls: type[BaseSettings], args: argparse.Namespace) -> Any:
    return load_settings(cls, **{k: v for k, v in vars(args).items() if k in cls.model_fields})


def _service_parser(sub: Any, name: str, cls: type[BaseSettings], flags: list[str], summary: str) -> Any:
    parser = sub.add_parser(name, help=summary, description=summary, epilog=describe(cls),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting_flags(parser, cls, flags)
    return parser


def cmd_worker(args: argparse.Namespace) -> int:
    from services.worker.service import run

    return run(settings_from(WorkerSettings, args))


def cmd_ingest(args: argparse.Namespace) -> int:
    from services.ingest.service import run

    return run(settings_from(IngestSettings, args))


def cmd_recorder(args: argparse.Namespace) -> int:
    from services.recorder.service import run

    return run(settings_from(RecorderSettings, args))


def cmd_mask(args: argparse.Namespace) -> int:
    from imask.filemask import mask_files
    from imask.logs import configure_logging
    from services.worker.service import build_engine

    configure_logging("mask", "warning", json_format=False)
    overrides: dict[str, Any] = {"variant": args.variant, "provider": args.provider, "mask_style": args.style,
                                 "mask_scale": args.mask_scale, "threshold": args.threshold,
                                 "mask_shape": "box" if args.boxes else None}
    if args.detector_size:
        width, _, height = args.detector_size.lower().partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise ConfigError(f"--detector-size must look like 640x384, got {args.detector_size!r}")
        overrides.update(detector_width=int(width), detector_height=int(height))
    settings = load_settings(WorkerSettings, **overrides)
    engine = build_engine(settings)
    reports = mask_files(engine, [Path(p) for p in args.inputs], Path(args.output), progress=not args.quiet)
    failed = [r for r in reports if r.error]
    for r in reports:
        line = {"input": str(r.source), "output": str(r.output) if r.output else None, "frames": r.frames,
                "faces": r.faces, "fail_closed": r.fail_closed}
        if r.error:
            line["error"] = r.error
        print(json.dumps(line))
    return 1 if failed else 0


def cmd_protos(args: argparse.Namespace) -> int:
    from imask.protogen import main as proto_main

    return proto_main([])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imask",
        description="Identity Masker: real-time face anonymization for camera streams over Kafka and gRPC.\n"
        "Every frame leaves masked or is dropped with a recorded reason; nothing unmasked ever leaves.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `imask COMMAND --help` for a command's flags and environment variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _service_parser(sub, "worker", WorkerSettings,
                        [*COMMON_KAFKA, "group_id", "worker_id", "variant", "provider", "batch_max",
                         "detector_timeout_ms", "mask_style", "jpeg_quality"],
                        "Masking worker: consume frames.raw, mask every face, publish frames.masked + frames.meta")
    p.set_defaults(func=cmd_worker)
    p = _service_parser(sub, "ingest", IngestSettings,
                        [*COMMON_KAFKA, "sources", "pace", "drop_policy", "jpeg_quality", "max_frames", "loop"],
                        "Ingest: read video files or cameras and publish frames to frames.raw")
    p.set_defaults(func=cmd_ingest)
    p.add_argument("--source", dest="sources", action="append", help="CAMERA_ID=PATH_OR_URL, repeatable")
    p = _service_parser(sub, "recorder", RecorderSettings,
                        [*COMMON_KAFKA, "group_id", "output_dir", "snapshot_every", "idle_close_s"],
                        "Recorder: write frames.masked into one MP4 per camera")
    p.set_defaults(func=cmd_recorder)

    p = sub.add_parser(
        "mask", help="Mask faces in image and video files",
        description="Mask every face in images, videos or folders of them; writes masked copies with the same "
        "names into OUTDIR (videos in containers OpenCV cannot write become .mp4). Same engine as the workers, "
        "including temporal persistence across video frames and fail-closed frames on detector failure.",
        epilog=describe(EngineSettings), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image, video or folder")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--style", choices=["blur", "pixelate", "solid"], help="mask style (default: blur)")
    p.add_argument("--boxes", action="store_true", help="mask whole boxes instead of ellipses")
    p.add_argument("--mask-scale", type=float, help="grow each face box by this factor (default 1.3)")
    p.add_argument("--threshold", type=float, help="detection threshold (default 0.2; lower masks more)")
    p.add_argument("--detector-size", metavar="WxH",
                   help="largest detector input, aspect kept (default 640x384; larger finds smaller faces)")
    p.add_argument("--variant", help="model variant (default: default)")
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], help="ONNX Runtime provider")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_mask)

    # Listed for --help; `main` hands their arguments to their own parsers.
    sub.add_parser("stack", help="Start, stop or show the local Kafka + Redis stack (make up/down/status)")
    sub.add_parser("run", help="The whole pipeline on the local stack with the sample clips (make run)")
    p = sub.add_parser("protos", help="Regenerate shared/imask/v1 from protos/")
    p.set_defaults(func=cmd_protos)
    return parser


# Commands with parsers of their own: everything after the name is theirs (argparse's REMAINDER would let the
# top-level parser grab their --flags).
DELEGATED = {"stack": "imask.stack", "run": "imask.localrun"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]])
        try:
            return int(module.main(argv[1:]))
        except ConfigError as exc:
            print(f"imask {argv[0]}: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"imask {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`imask`: one entry point for every service and tool. Settings come from IMASK_* variables (IMASK_<SERVICE>_*
for a service's own); flags override."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_origin

from pydantic_settings import BaseSettings

from imask.ops.settings import (
    AlertingSettings,
    ConfigError,
    ConsoleSettings,
    DriftSettings,
    EngineSettings,
    FeaturesSettings,
    FeaturesStreamSettings,
    IngestSettings,
    MaskApiSettings,
    RecorderSettings,
    RouterSettings,
    WorkerSettings,
    describe,
    env_name,
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
                            f"({env_name(cls, name)})", **_flag_type(cls, name))


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


def cmd_features_stream(args: argparse.Namespace) -> int:
    from services.features_stream.service import run

    return run(settings_from(FeaturesStreamSettings, args))


def cmd_features(args: argparse.Namespace) -> int:
    from services.features.service import run

    return run(settings_from(FeaturesSettings, args))


def cmd_drift(args: argparse.Namespace) -> int:
    from services.drift.service import run

    return run(settings_from(DriftSettings, args))


def cmd_alerting(args: argparse.Namespace) -> int:
    from services.alerting.service import run

    return run(settings_from(AlertingSettings, args))


def cmd_console(args: argparse.Namespace) -> int:
    from services.console.service import run

    return run(settings_from(ConsoleSettings, args))


def cmd_mask_api(args: argparse.Namespace) -> int:
    from services.mask_api.service import run

    return run(settings_from(MaskApiSettings, args))


def cmd_router(args: argparse.Namespace) -> int:
    from services.router.service import run

    return run(settings_from(RouterSettings, args))


def cmd_api_key(args: argparse.Namespace) -> int:
    from imask.ops.grpc_auth import hash_key, new_key

    path = Path(args.file)
    data = json.loads(path.read_text()) if path.exists() else {"clients": {}}
    if args.revoke:
        if args.client not in data["clients"]:
            raise ConfigError(f"no client {args.client!r} in {path}")
        data["clients"][args.client]["revoked"] = True
        key = None
    else:
        from imask.frames.ids import check_camera_id

        for camera in args.cameras or []:
            try:
                check_camera_id(camera)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        key = new_key()
        data["clients"][args.client] = {"sha256": hash_key(key), "revoked": False, "cameras": args.cameras or []}
    path.write_text(json.dumps(data, indent=2) + "\n")
    path.chmod(0o600)
    if key:
        print(key)  # shown once; only its hash is stored
    return 0


def _remote_engine(args: argparse.Namespace) -> Any:
    import os

    from imask.maskapi.client import MaskClient, RemoteEngine
    from imask.v1 import mask_service_pb2 as mpb

    styles = {"blur": mpb.MASK_STYLE_BLUR, "pixelate": mpb.MASK_STYLE_PIXELATE, "solid": mpb.MASK_STYLE_SOLID}
    options = mpb.MaskOptions(style=styles.get(args.style or "", mpb.MASK_STYLE_UNSPECIFIED),
                              shape=mpb.MASK_SHAPE_BOX if args.boxes else mpb.MASK_SHAPE_UNSPECIFIED,
                              mask_scale=args.mask_scale or 0, threshold=args.threshold or 0)
    client = MaskClient(args.remote, api_key=args.api_key or os.environ.get("IMASK_CLIENT_API_KEY"),
                        tls_ca=Path(args.tls_ca) if args.tls_ca else None,
                        client_cert=Path(args.client_cert) if args.client_cert else None,
                        client_key=Path(args.client_key) if args.client_key else None)
    return RemoteEngine(client, options)


def cmd_mask(args: argparse.Namespace) -> int:
    from imask.filemask import mask_files
    from imask.ops.logs import configure_logging
    from imask.registry.resolve import build_engine

    configure_logging("mask", "warning", json_format=False)
    if args.remote:
        engine = _remote_engine(args)
        try:
            return _report(mask_files(engine, [Path(p) for p in args.inputs], Path(args.output),
                                      progress=not args.quiet))
        finally:
            engine.close()
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
    return _report(mask_files(engine, [Path(p) for p in args.inputs], Path(args.output), progress=not args.quiet))


def _report(reports: list[Any]) -> int:
    failed = [r for r in reports if r.error]
    for r in reports:
        line = {"input": str(r.source), "output": str(r.output) if r.output else None, "frames": r.frames,
                "faces": r.faces, "fail_closed": r.fail_closed}
        if r.error:
            line["error"] = r.error
        print(json.dumps(line))
    return 1 if failed else 0


def cmd_protos(args: argparse.Namespace) -> int:
    from imask.devstack.protogen import main as proto_main

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
                        [*COMMON_KAFKA, "group_id", "instance_id", "variant", "provider", "batch_max",
                         "detector_timeout_ms", "mask_style", "jpeg_quality"],
                        "Masking worker: consume frames.raw, mask every face, publish frames.masked + frames.meta")
    p.set_defaults(func=cmd_worker)
    p = _service_parser(sub, "ingest", IngestSettings,
                        [*COMMON_KAFKA, "cameras_file", "keep_running", "fps", "cap_width", "cap_height",
                         "drop_policy", "pace", "jpeg_quality", "max_frames", "loop", "max_inflight",
                         "open_timeout_s", "read_timeout_s", "stall_after_s", "min_fps", "publish_port",
                         "auth", "api_keys_file", "admin_host", "admin_port"],
                        "Ingest: live cameras (RTSP...), video files and gRPC producers onto frames.raw. "
                        "Cameras are added and removed at runtime through the admin API (/cameras, `imask "
                        "cameras`) on its own listener, loopback by default, apart from the ops port.")
    p.set_defaults(func=cmd_ingest)
    p.add_argument("--source", dest="sources", action="append",
                   help="CAMERA_ID=URL (rtsp://..., a video file, a webcam index), repeatable; per-camera "
                   "settings beyond the defaults go in --cameras-file")
    p = _service_parser(sub, "recorder", RecorderSettings,
                        [*COMMON_KAFKA, "group_id", "output_dir", "snapshot_every", "idle_close_s"],
                        "Recorder: write frames.masked into one MP4 per camera")
    p.set_defaults(func=cmd_recorder)
    p = _service_parser(sub, "features-stream", FeaturesStreamSettings,
                        [*COMMON_KAFKA, "group_id", "instance_id", "redis_url", "state_dir", "feast_dir",
                         "feast_project", "window_s", "hop_s", "grace_ms", "auto_offset_reset"],
                        "Features stream: frames.meta + frames.dlq -> per-camera windows (10 s, and 60 s every "
                        "10 s) -> Feast (Redis online, parquet offline)")
    p.set_defaults(func=cmd_features_stream)
    p = _service_parser(sub, "features", FeaturesSettings,
                        ["host", "port", "ops_host", "ops_port", "log_level", "redis_url", "feast_dir",
                         "feast_project", "stale_after_s", "auth", "api_keys_file", "tls_cert_file", "tls_key_file",
                         "tls_client_ca_file"],
                        "features: the gRPC FeatureService (per-camera features from Feast's online store, with "
                        "freshness and feature view versions; health, reflection, the same API keys and TLS as "
                        "mask-api). `imask features show CAMERA` reads one camera through it.")
    p.set_defaults(func=cmd_features)
    p = _service_parser(sub, "alerting", AlertingSettings,
                        [*COMMON_KAFKA, "group_id", "instance_id", "alertmanager_url", "resend_s", "runbook_base"],
                        "Alerting: events on the alerts topic (cameras, drift, tamper, experiments) -> Alertmanager "
                        "alerts with labels, runbook links and endsAt when resolved; at least once, retried while "
                        "Alertmanager is away")
    p.set_defaults(func=cmd_alerting)
    p = _service_parser(sub, "drift", DriftSettings,
                        [*COMMON_KAFKA, "instance_id", "redis_url", "feast_dir", "feast_project", "prefix", "poll_s",
                         "reference_windows", "breach_windows", "recover_windows", "regression_tolerance"],
                        "Drift: each camera's 10 s windows against its reference (drift tests, tamper rules), and "
                        "against its own windows before a variant switch (variant_regression, which the router "
                        "counts as a failed guardrail); events on the alerts topic. `imask drift reference "
                        "capture|show|reset CAMERA` manages the references")
    p.set_defaults(func=cmd_drift)

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
    p.add_argument("--remote", metavar="HOST:PORT",
                   help="mask on a mask-api server instead of locally (videos go through MaskStream)")
    p.add_argument("--api-key", help="API key for --remote (or IMASK_CLIENT_API_KEY)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA certificate of the server: TLS on")
    p.add_argument("--client-cert", metavar="PEM", help="client certificate for mTLS")
    p.add_argument("--client-key", metavar="PEM", help="client private key for mTLS")
    p.set_defaults(func=cmd_mask)

    p = _service_parser(sub, "mask-api", MaskApiSettings,
                        ["host", "port", "ops_host", "ops_port", "log_level", "auth", "api_keys_file",
                         "tls_cert_file", "tls_key_file", "tls_client_ca_file", "redis_url", "rate_limit",
                         "batch_max", "batch_wait_ms", "queue_max", "publish_meta", "bootstrap_servers"],
                        "mask-api: synchronous masking over gRPC (MaskService, health, reflection)")
    p.set_defaults(func=cmd_mask_api)
    p = _service_parser(sub, "router", RouterSettings,
                        ["host", "port", "ops_host", "ops_port", "log_level", "redis_url", "fleet",
                         "bootstrap_servers", "registry_uri", "promote_aliases", "auth", "api_keys_file"],
                        "router: A/B experiments over model variants (ExperimentService over gRPC, experiments in "
                        "Redis, guardrails judged from frames.meta, automated rollback); `imask experiment` is its "
                        "client. Workers route frames in process (IMASK_WORKER_EXPERIMENTS), so the router is never on "
                        "the frame path.")
    p.set_defaults(func=cmd_router)
    p = _service_parser(sub, "console", ConsoleSettings,
                        ["host", "port", "ops_host", "ops_port", "log_level", "operator_keys_file", "ingest_url",
                         "router_address", "features_address", "alertmanager_url", "registry_uri", "model_name",
                         "bootstrap_servers"],
                        "console: the operators' web console (cameras with live masked previews, experiments with "
                        "promote / rollback, alerts, model versions); needs IMASK_CONSOLE_TOKEN or an operator keys "
                        "file, listens on loopback unless --host says otherwise")
    p.set_defaults(func=cmd_console)
    p = sub.add_parser("api-key", help="Create or revoke a mask-api client key (only its hash is stored)",
                       description="Adds CLIENT to the keys file with a new random key, printed once; "
                       "--revoke marks CLIENT's key revoked.")
    p.add_argument("client", metavar="CLIENT")
    p.add_argument("--file", required=True, help="the JSON keys file (IMASK_API_KEYS_FILE of the server)")
    p.add_argument("--revoke", action="store_true", help="revoke CLIENT's key instead (servers see it within 1 s)")
    p.add_argument("--camera", dest="cameras", action="append", metavar="ID",
                   help="a camera id this key may publish under (mask-api frames.meta, ingest Publish); repeatable")
    p.set_defaults(func=cmd_api_key)

    # Listed for --help; `main` hands their arguments to their own parsers.
    sub.add_parser("stack", help="Start, stop or show the local Kafka + Redis stack (make up/down/status)")
    sub.add_parser("run", help="The whole pipeline on the local stack with the sample clips (make run)")
    sub.add_parser("experiment", help="A/B experiments through the router: create, status, ramp, promote, "
                   "rollback, stop, results")
    sub.add_parser("model", help="Model registry (MLflow): register, list, show, eval, promote, rollback versions")
    sub.add_parser("eval", help="Evaluate a variant on labelled faces, face-free pictures and clips (make eval)")
    sub.add_parser("cameras", help="List, add, remove and inspect an ingest's cameras at runtime (admin API)")
    sub.add_parser("rtsp-server", help="Serve video files as live RTSP cameras (GStreamer), for demos and tests")
    sub.add_parser("load", help="Load tests and SRE tools: record, replay, run, compare, lag, scale")
    for name, text in (("record", "Dump frames.raw to a recording file (imask load record)"),
                       ("replay", "Replay clips or recordings as N cameras (imask load replay)"),
                       ("lag", "Consumer lag per partition, in messages and seconds (imask load lag)"),
                       ("scale", "Start or drain local worker processes (imask load scale)")):
        sub.add_parser(name, help=text)
    p = sub.add_parser("protos", help="Regenerate shared/imask/v1 from protos/")
    p.set_defaults(func=cmd_protos)
    return parser


# Commands with parsers of their own: everything after the name is theirs (argparse's REMAINDER would let the
# top-level parser grab their --flags).
DELEGATED = {"stack": "imask.devstack.stack", "run": "imask.devstack.localrun", "eval": "imask.cli.eval",
             "load": "imask.cli.load", "rtsp-server": "imask.devstack.rtsp_server", "cameras": "imask.cli.cameras",
             "model": "imask.cli.model",
             "experiment": "imask.cli.experiment", "features-show": "imask.cli.features",
             "drift-reference": "imask.cli.drift"}
# Shortcuts for the load/SRE commands: `imask lag` is `imask load lag`.
LOAD_SHORTCUTS = {"record", "replay", "lag", "scale"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LOAD_SHORTCUTS:
        argv = ["load", *argv]
    if argv[:2] == ["features", "show"]:  # the client; `imask features` alone is the server
        argv = ["features-show", *argv[2:]]
    if argv[:2] == ["drift", "reference"]:  # references; `imask drift` alone is the service
        argv = ["drift-reference", *argv[2:]]
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

"""`imask experiment create|status|list|ramp|promote|rollback|stop|assign|results`: the router's client."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from imask.cli.tables import cell, emit, fields, table
from imask.v1 import experiment_service_pb2 as epb
from imask.v1 import experiment_service_pb2_grpc as epb_grpc

STRATEGY = {"canary": epb.STRATEGY_CANARY, "blue-green": epb.STRATEGY_BLUE_GREEN, "rolling": epb.STRATEGY_ROLLING}


def _pair(text: str, what: str) -> tuple[str, float]:
    key, sep, value = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected KEY:NUMBER, got {text!r}") from None


def _short(enum_name: Any, prefix: str) -> str:
    return str(enum_name or "").removeprefix(prefix).lower().replace("_", "-") or "-"


def _arms(arms: list[dict[str, Any]]) -> str:
    return " ".join(f"{a.get('name')}={a.get('variant')}:{cell(float(a.get('weight', 0.0)))}" for a in arms) or "-"


def _effective(ts_us: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(ts_us) / 1e6)) if ts_us and int(ts_us) else "-"


def status_lines(status: dict[str, Any]) -> list[str]:
    """An ExperimentStatus (status, create, ramp, promote, rollback, stop): its fields, then the arms' weights."""
    spec = status.get("spec", {})
    head = {"experiment": spec.get("name"), "state": _short(status.get("state"), "EXPERIMENT_STATE_"),
            "strategy": _short(spec.get("strategy"), "STRATEGY_"), "config version": status.get("config_version", "0"),
            "effective since": _effective(status.get("effective_ts_us")), "last change": status.get("last_change"),
            "target": spec.get("target"),
            "guardrails": [f"{g.get('metric')}:{cell(float(g.get('tolerance', 0.0)))}"
                           for g in spec.get("guardrails", [])]}
    arms = [{"arm": a.get("name"), "variant": a.get("variant"), "weight": float(a.get("weight", 0.0))}
            for a in status.get("arms", [])]
    return [*fields(head), "", *table(arms, empty="(no arms)")]


def list_lines(reply: dict[str, Any]) -> list[str]:
    return table([{"experiment": e.get("spec", {}).get("name"), "state": _short(e.get("state"), "EXPERIMENT_STATE_"),
                   "strategy": _short(e.get("spec", {}).get("strategy"), "STRATEGY_"),
                   "arms": _arms(e.get("arms", [])), "config": int(e.get("config_version", 0)),
                   "last change": e.get("last_change")} for e in reply.get("experiments", [])],
                 empty="(no experiments)")


def results_lines(reply: dict[str, Any]) -> list[str]:
    """ExperimentResults: the recommendation and why, then per-arm metrics, guardrails, SRM and shadow figures."""
    lines = [f"recommendation: {reply.get('recommendation') or '-'}", *(f"  - {r}" for r in reply.get("reasons", []))]
    arms = [{"arm": a.get("arm"), "cameras": int(a.get("cameras", 0)), "frames": int(a.get("frames", 0)),
             **{k: float(v) for k, v in sorted(a.get("metrics", {}).items())}} for a in reply.get("arms", [])]
    guardrails = [{"metric": g.get("metric"), "outcome": g.get("outcome"), "estimate": float(g.get("estimate", 0.0)),
                   "ci low": float(g.get("ci_low", 0.0)), "ci high": float(g.get("ci_high", 0.0)),
                   "p": float(g.get("p_value", 0.0))} for g in reply.get("guardrails", [])]
    srm = (f"sample ratio: cameras p={cell(float(reply.get('srm_cameras_p', 0.0)))}"
           f"{' MISMATCH' if reply.get('srm_cameras') else ''}, frames p={cell(float(reply.get('srm_frames_p', 0.0)))}"
           f"{' MISMATCH' if reply.get('srm_frames') else ''}; failed checks in a row: "
           f"{reply.get('failed_checks', 0)}")
    lines += ["", *table(arms, empty="(no frames yet)"), "", *table(guardrails, empty="(no guardrails)"), "", srm]
    if reply.get("shadow"):
        lines.append(f"shadow: {cell({k: float(v) for k, v in reply['shadow'].items()})}")
    if reply.get("status"):
        lines += ["", *status_lines(reply["status"])]
    return lines


def assign_lines(reply: dict[str, Any]) -> list[str]:
    return table([{"camera": c, "arm": a} for c, a in sorted(reply.get("arms", {}).items())])


def reply_lines(command: str, reply: dict[str, Any]) -> list[str]:
    """What a person reads for each command's reply."""
    if command == "list":
        return list_lines(reply)
    if command == "results":
        return results_lines(reply)
    if command == "assign":
        return assign_lines(reply)
    return status_lines(reply)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imask experiment",
        description="A/B experiments over model variants, through the router (imask router). Cameras are the unit "
        "of randomisation: each is assigned to an arm by a stable hash of the salt and its id. Strategies: canary "
        "(a small weight, ramped along --ramp while no guardrail fails), blue-green (the challenger at 0, then "
        "`promote` switches every camera at one effective time), rolling (a weight schedule). The router judges "
        "guardrails every --interval seconds with always-valid statistics and rolls back on its own after "
        "--max-failed consecutive failed checks.",
        epilog="The router: IMASK_CLIENT_ROUTER_ADDRESS (default 127.0.0.1:50061).")
    parser.add_argument("--router", default=os.environ.get("IMASK_CLIENT_ROUTER_ADDRESS", "127.0.0.1:50061"))
    parser.add_argument("--api-key", default=os.environ.get("IMASK_CLIENT_API_KEY", ""),
                        help="the router's API key (or IMASK_CLIENT_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON (for programs) instead of tables")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("create", help="Start an experiment on the fleet")
    p.add_argument("name")
    p.add_argument("--control", default="default", help="control variant (built-in name or registry NAME/VERSION)")
    p.add_argument("--challenger", required=True, help="challenger variant (built-in name or NAME/VERSION)")
    p.add_argument("--weight", type=float, default=0.1, help="challenger's share of cameras at start")
    p.add_argument("--strategy", choices=sorted(STRATEGY), default="canary")
    p.add_argument("--ramp", action="append", default=[], type=lambda t: _pair(t, "--ramp"), metavar="SECONDS:WEIGHT")
    p.add_argument("--guardrail", action="append", default=[], type=lambda t: _pair(t, "--guardrail"),
                   metavar="METRIC:TOLERANCE", help="latency_ms, inference_ms, faces_per_frame (relative), "
                   "fail_closed_rate, held_track_rate (absolute), e.g. latency_ms:0.2 fail_closed_rate:0.005")
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--max-failed", type=int, default=3)
    p.add_argument("--shadow", type=float, default=0.0, help="share of control frames the challenger also masks")
    p.add_argument("--min-cameras", type=int, default=16, help="per arm before guardrails judge and promotion")
    p.add_argument("--min-frames", type=int, default=200)
    p.add_argument("--salt", default="")
    p.add_argument("--target", default="", metavar="RULE", help="only cameras whose fresh features match take "
                   "part, e.g. 'face_size_p50 < 24' (a feature of camera_stats_60s, or VIEW.FEATURE; face_size_pNN "
                   "and score_pNN are histogram percentiles); every other camera stays on control")
    for name, text in (("status", "Current weights and state"), ("results", "Per-arm metrics, SRM, guardrails, "
                       "and the recommendation: promote / hold / rollback, with reasons")):
        p = sub.add_parser(name, help=text)
        p.add_argument("name", nargs="?", default="")
    sub.add_parser("list", help="Every experiment of the fleet")
    p = sub.add_parser("ramp", help="Set the challenger's weight")
    p.add_argument("name")
    p.add_argument("weight", type=float)
    p.add_argument("--reason", default="")
    for name, text in (("promote", "Every camera to the challenger (a registered challenger also takes the "
                        "champion alias, through the registry's gate)"),
                       ("rollback", "Every camera back to control, at once"), ("stop", "End the experiment")):
        p = sub.add_parser(name, help=text)
        p.add_argument("name")
        p.add_argument("--reason", default="")
        if name == "promote":
            p.add_argument("--force", action="store_true", help="past a refusing registry gate (needs --reason)")
    p = sub.add_parser("assign", help="Which arm cameras are on")
    p.add_argument("name")
    p.add_argument("cameras", nargs="+")
    return parser


class _KeyHeader(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, key: str) -> None:
        self.key = key

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or []), ("authorization", f"Bearer {self.key}")]
        return continuation(details._replace(metadata=metadata), request)


def _create_request(args: argparse.Namespace) -> epb.ExperimentSpec:
    return epb.ExperimentSpec(
        name=args.name, salt=args.salt, strategy=STRATEGY[args.strategy],
        arms=[epb.Arm(name="control", variant=args.control, weight=1 - args.weight),
              epb.Arm(name="challenger", variant=args.challenger, weight=args.weight)],
        ramp=[epb.RampStep(at_s=t, weight=w) for t, w in args.ramp],
        guardrails=[epb.Guardrail(metric=m, tolerance=t) for m, t in args.guardrail],
        interval_s=args.interval, max_failed_checks=args.max_failed, shadow_sample=args.shadow,
        min_cameras=args.min_cameras, min_frames=args.min_frames, target=args.target)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    channel = grpc.insecure_channel(args.router)
    if args.api_key:
        channel = grpc.intercept_channel(channel, _KeyHeader(args.api_key))
    stub = epb_grpc.ExperimentServiceStub(channel)  # type: ignore[no-untyped-call]
    calls: dict[str, Any] = {
        "create": lambda: stub.Create(_create_request(args), timeout=10),
        "status": lambda: stub.Status(epb.ExperimentRef(name=args.name), timeout=10),
        "results": lambda: stub.Results(epb.ExperimentRef(name=args.name), timeout=30),
        "list": lambda: stub.List(epb.ExperimentRef(), timeout=10),
        "ramp": lambda: stub.Ramp(epb.RampRequest(name=args.name, weight=args.weight, reason=args.reason), timeout=10),
        "promote": lambda: stub.Promote(epb.ChangeRequest(name=args.name, reason=args.reason, force=args.force),
                                        timeout=60),
        "rollback": lambda: stub.Rollback(epb.ChangeRequest(name=args.name, reason=args.reason), timeout=10),
        "stop": lambda: stub.Stop(epb.ChangeRequest(name=args.name, reason=args.reason), timeout=10),
        "assign": lambda: stub.Assign(epb.AssignRequest(name=args.name, camera_ids=args.cameras), timeout=10),
    }
    try:
        reply = calls[args.command]()
    except grpc.RpcError as exc:
        print(f"imask experiment {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    data = MessageToDict(reply, preserving_proto_field_name=True)
    emit(data, reply_lines(args.command, data), args.json)
    return 0

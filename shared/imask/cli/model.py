"""`imask model register|list|show|eval|promote|rollback`: the model registry (MLflow) from the command line."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from imask.cli.tables import emit, fields, table
from imask.ops.settings import ConfigError

DEFAULT_URI = "http://127.0.0.1:5590"


def _when(ms: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(int(ms) / 1000)) if ms else "-"


def version_rows(versions: list[dict[str, Any]]) -> list[str]:
    """`imask model list`: one line a version."""
    return table([{"version": int(v["version"]) if str(v["version"]).isdigit() else v["version"],
                   "aliases": v.get("aliases") or [], "variant": v.get("variant"), "detector": v.get("detector"),
                   "sha256": (v.get("sha256") or "")[:12], "created": _when(v.get("created_ms")),
                   "description": v.get("description")} for v in versions], empty="(no versions)")


def version_lines(info: dict[str, Any], evaluations: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """`imask model show` (and register, rollback): the version's fields, then its latest evaluation per dataset."""
    head = {"version": f"{info['name']}/{info['version']}", "aliases": info.get("aliases") or [],
            "variant": info.get("variant"), "detector": info.get("detector"), "sha256": info.get("sha256"),
            "created": _when(info.get("created_ms")), "run": info.get("run_id"), "description": info.get("description")}
    lines = fields(head)
    if evaluations is not None:
        rows = [{"dataset": e.get("name"), "digest": digest.removeprefix("sha256:")[:12],
                 **{k: v for k, v in e.items() if k not in ("name", "run_id")}, "run": e.get("run_id")}
                for digest, e in evaluations.items()]
        lines += ["", "evaluations (latest per dataset):", *(f"  {r}" for r in table(rows, empty="(none: run "
                                                                                     "`imask model eval`)"))]
    return lines


def promote_lines(result: dict[str, Any]) -> list[str]:
    head = "moved" if result["moved"] else "refused"
    if result["moved"] and not result["allowed"]:
        head = "moved (forced past the gate)"
    lines = [f"promotion {head}", *(f"  - {r}" for r in result["reasons"])]
    if result.get("compared"):
        lines.append(f"compared on: {', '.join(result['compared'])}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imask model",
        description="The model registry on MLflow: a variant (detector family, model file and its sha256, input "
        "size, thresholds, tracker and mask settings) is a registered model version; `imask eval` runs are MLflow "
        "runs linked to it; aliases (champion, challenger) move only through the promotion gate: a version takes "
        "an alias only if it is no worse than the holder on recall and leaks on the same dataset digest, unless "
        "forced with a recorded reason. Workers and mask-api run a version with IMASK_MODEL=NAME@ALIAS.",
        epilog="The server: IMASK_REGISTRY_URI (default http://127.0.0.1:5590, started by `imask stack up`).")
    parser.add_argument("--tracking-uri", default=os.environ.get("IMASK_REGISTRY_URI", DEFAULT_URI))
    parser.add_argument("--json", action="store_true", help="print JSON (for programs) instead of tables")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("register", help="Register a built-in variant (with --set overrides) as a new version")
    p.add_argument("--variant", default="default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", default="imask-masker", help="registered model name (default imask-masker)")
    p.add_argument("--description", default="")

    p = sub.add_parser("list", help="Versions of a registered model with their aliases")
    p.add_argument("--name", default="imask-masker")

    p = sub.add_parser("show", help="One version: its variant, sha256, aliases and evaluations")
    p.add_argument("ref", metavar="NAME@ALIAS|NAME/VERSION")

    p = sub.add_parser("eval", help="Run `imask eval` on a registered version and record it as an MLflow run")
    p.add_argument("ref", metavar="NAME@ALIAS|NAME/VERSION")
    p.add_argument("datasets", nargs="+", metavar="DATASET")
    p.add_argument("--no-curve", action="store_true", help="skip the threshold curve (faster)")
    p.add_argument("--out", default="", help="also keep the report here")

    p = sub.add_parser("promote", help="Move an alias to a version through the gate")
    p.add_argument("ref", metavar="NAME@ALIAS|NAME/VERSION")
    p.add_argument("--alias", default="champion")
    p.add_argument("--force", action="store_true", help="move it even if the gate refuses (needs --reason)")
    p.add_argument("--reason", default="")
    p.add_argument("--recall-tolerance", type=float, default=0.005)
    p.add_argument("--leak-tolerance", type=float, default=0.005)

    p = sub.add_parser("rollback", help="Point an alias back at the version it held before its last move")
    p.add_argument("--name", default="imask-masker")
    p.add_argument("--alias", default="champion")
    p.add_argument("--reason", required=True)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from imask.registry.refs import ModelRef, RegistryError
    from imask.registry.store import Registry

    try:
        registry = Registry(args.tracking_uri)
        if args.command == "register":
            from imask.cli.eval import apply_overrides
            from imask.engine.variants import get_variant

            try:
                variant = apply_overrides(get_variant(args.variant), args.overrides)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            info = registry.register(variant, args.name, args.description).as_dict()
            emit(info, ["registered:", *version_lines(info)], args.json)
        elif args.command == "list":
            versions = [v.as_dict() for v in registry.versions(args.name)]
            emit(versions, version_rows(versions), args.json)
        elif args.command == "show":
            ref = ModelRef.parse(args.ref)
            info = registry.info(ref).as_dict()
            evaluations = registry.evaluations(ref)
            emit({**info, "evaluations": evaluations}, version_lines(info, evaluations), args.json)
        elif args.command == "eval":
            return _eval(registry, ModelRef.parse(args.ref), args)
        elif args.command == "promote":
            decision = registry.promote(ModelRef.parse(args.ref), args.alias, args.force, args.reason,
                                        args.recall_tolerance, args.leak_tolerance)
            result = {"allowed": decision.allowed, "moved": decision.allowed or args.force,
                      "reasons": decision.reasons, "compared": decision.compared}
            emit(result, promote_lines(result), args.json)
            return 0 if decision.allowed or args.force else 1
        elif args.command == "rollback":
            info = registry.rollback(args.name, args.alias, args.reason).as_dict()
            emit(info, [f"{args.alias} rolled back to:", *version_lines(info)], args.json)
    except RegistryError as exc:
        print(f"imask model {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _eval(registry: Any, ref: Any, args: argparse.Namespace) -> int:
    from imask.evaluation.run import run_evaluation

    variant = registry.load(ref)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        report, _ = run_evaluation(variant, args.datasets, out, curve=not args.no_curve, plot=True)
        run_id = registry.log_evaluation(ref, report, out)
    print(f"evaluation of {variant.registry_version} recorded: run {run_id}")
    return 0

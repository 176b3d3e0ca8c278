"""`imask eval DATASET... [--variant V] [--set key=value] [--min-recall ...]`: the evaluation, its JSON report (with a
dated copy named by the run's start in UTC) and plot, and the gate: limits on its figures that make the command fail
(exit 1) when a dataset misses one."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from imask.engine import Variant
from imask.engine.masks import MaskShape, MaskSpec, MaskStyle
from imask.engine.variants import get_variant
from imask.loadtest.dated import keep_dated_copy
from imask.ops.settings import ConfigError

MASK_KEYS = {"style": MaskStyle, "shape": MaskShape, "scale": float}


def apply_overrides(variant: Variant, pairs: list[str]) -> Variant:
    """`threshold=0.1`, `flip=true`, `mask.scale=1.3`: typed by the field they set; ConfigError names a bad one."""
    changes: dict[str, Any] = {}
    mask = dataclasses.asdict(variant.mask)
    fields = {f.name: f for f in dataclasses.fields(variant)}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        try:
            if not sep:
                raise ValueError("expected KEY=VALUE")
            if key.startswith("mask."):
                name = key[5:]
                if name not in MASK_KEYS:
                    raise ValueError(f"mask settings are {sorted(MASK_KEYS)}")
                mask[name] = MASK_KEYS[name](raw)
                continue
            if key not in fields or key in ("name", "mask"):
                raise ValueError(f"variant settings are {sorted(k for k in fields if k not in ('name', 'mask'))}")
            current = getattr(variant, key)
            if isinstance(current, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError("expected true or false")
                changes[key] = raw.lower() in ("true", "1")
            else:
                changes[key] = type(current)(raw)
        except ValueError as exc:
            raise ConfigError(f"--set {pair!r}: {exc}") from None
    try:
        return variant.with_overrides(mask=MaskSpec(**mask), **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--set: {exc}") from None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="imask eval",
        description="Evaluate a variant: recall of labelled faces overall, by size and by WIDER attribute (a face "
        "counts as masked when its pixels changed and the independent YuNet referee no longer finds it), leak "
        "rate against YuNet, masked-area fraction, false masks on pictures with no face, CPU ms per frame and "
        "a threshold curve. Writes report.json (schema imask.eval/1, docs/EVALUATION.md) with a dated copy "
        "(report-<UTC start>.json), summary.txt and eval.png. Each dataset carries a sha256 digest over its files "
        "and labels so runs compare.",
        epilog="DATASET: a folder with gt.json (or dlib_faces_gt.json), a folder of video clips or one clip "
        "(leak check only), builtin:no-faces (30 face-free pictures, from scikit-image's and drawn) or "
        "builtin:lfw-faces (100 real faces from scikit-image's LFW subset in 25 pictures, labelled). A labelled "
        "DATASET may end in @TRANSFORMs (rot90, rot180, rot270, dither, closeup, occluded). Gate limits take "
        "VALUE (every dataset of the kind) or DATASET=VALUE (that one), may repeat, and make the command exit 1, "
        "naming the dataset and figure, when one is missed (or checks no dataset); the report is written anyway.")
    parser.add_argument("datasets", nargs="+", metavar="DATASET")
    parser.add_argument("--variant", default="default", help="variant name (default: default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a variant setting, e.g. threshold=0.1, flip=true, mask.scale=1.3")
    parser.add_argument("--provider", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", default="out/eval", help="output folder (default out/eval)")
    parser.add_argument("--no-curve", action="store_true", help="skip the threshold curve (faster)")
    parser.add_argument("--no-plot", action="store_true")
    gate = parser.add_argument_group("gate (exit 1 when a dataset misses a limit)")
    gate.add_argument("--min-recall", action="append", default=[], metavar="[DATASET=]R",
                      help="labelled sets: recall at least R (0-1)")
    gate.add_argument("--max-confident-leaks", action="append", default=[], metavar="[DATASET=]N",
                      help="labelled sets and clips: at most N faces confidently re-found by the referee")
    gate.add_argument("--max-false-masks", action="append", default=[], metavar="[DATASET=]N",
                      help="face-free sets: at most N masks over all their pictures")
    gate.add_argument("--max-over-1pct", action="append", default=[], metavar="[DATASET=]N",
                      help="face-free sets: at most N pictures with more than 1%% of their area masked")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from imask.evaluation import gate as gates
    from imask.evaluation import report as rep
    from imask.evaluation.run import run_evaluation

    try:
        variant = apply_overrides(get_variant(args.variant), args.overrides)
        limits = [gates.parse_limit(option, text) for option in gates.FIGURES
                  for text in getattr(args, option.replace("-", "_"))]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    started = time.time()
    report, path = run_evaluation(variant, args.datasets, Path(args.out), curve=not args.no_curve,
                                  plot=not args.no_plot, provider=args.provider)
    dated = keep_dated_copy(path, started)  # out/eval/<variant>/report-<UTC start>.json: the history of runs
    print("\n".join(rep.summary_lines(report)))
    print(f"report: {path} (and {dated.name})")
    verdicts = gates.check(report, limits)
    failed = [v for v in verdicts if not v.passed]
    for verdict in verdicts:
        if verdict.passed:
            print(f"gate passed: {verdict.message()}")
    for verdict in failed:
        print(f"imask eval: GATE FAILED: {verdict.message()}", file=sys.stderr)
    return 1 if failed else 0

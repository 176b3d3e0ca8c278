"""One evaluation of one variant over datasets: the engine loaded, every dataset run, the report written."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from imask.engine import MaskingEngine, Variant
from imask.evaluation import report as rep
from imask.evaluation.runner import CURVE_THRESHOLDS, evaluate
from imask.evaluation.transforms import open_spec
from imask.ops.settings import ConfigError


def run_evaluation(variant: Variant, dataset_specs: list[str], out_dir: Path, curve: bool = True,
                   plot: bool = True, provider: str = "cpu") -> tuple[dict[str, Any], Path]:
    """Returns the report (schema imask.eval/1) and the path of report.json; progress goes to stderr."""
    datasets = []
    for spec in dataset_specs:
        try:
            datasets.append(open_spec(spec))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    engine = MaskingEngine.load(variant, provider=provider, detector_timeout_s=None)
    engine.warm_up()
    start = time.perf_counter()
    thresholds = CURVE_THRESHOLDS if curve else ()
    try:
        results = [evaluate(engine, d, thresholds, progress=lambda line: print(line, file=sys.stderr))
                   for d in datasets]
    finally:
        engine.close()
    report = rep.build_report(rep.variant_record(variant, engine.execution_provider), results,
                              time.perf_counter() - start)
    return report, rep.write(report, out_dir, make_plot=plot)

"""The evaluation report: one JSON document (schema `imask.eval/1`, docs/EVALUATION.md), a plot, a text summary."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from imask.engine import Variant

SCHEMA = "imask.eval/1"


def variant_record(variant: Variant, execution_provider: str) -> dict[str, Any]:
    settings: dict[str, Any] = {k: (str(v) if not isinstance(v, int | float | bool | str) else v)
                for k, v in dataclasses.asdict(variant).items() if k != "mask"}
    settings["mask"] = {k: str(v) if not isinstance(v, float) else v
                        for k, v in dataclasses.asdict(variant.mask).items()}
    return {"name": variant.name, "version": variant.version, "model_version": variant.model_version,
            "execution_provider": execution_provider, "settings": settings}


def build_report(variant: dict[str, Any], datasets: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "variant": variant,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "wall_s": round(wall_s, 1),
        "datasets": datasets,
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    v = report["variant"]
    lines = [f"variant {v['name']} ({v['model_version']}, {v['execution_provider']})"]
    for d in report["datasets"]:
        cpu = d["cpu_ms_per_frame"]["mean"]
        if d["kind"] == "labelled":
            r = d["recall"]
            sizes = " ".join(f"{k} {s['recall']} ({s['faces']})" for k, s in r["by_size"].items())
            lines.append(f"{d['name']}: recall {r['recall']} of {r['faces']} faces; by size {sizes}; "
                         f"leaks {d['leaks']['refound']}/{d['leaks']['referee_faces']} "
                         f"(confident {d['leaks']['confident_refound']}); masks/image {d['masks_per_image']}, "
                         f"per labelled face {d['masks_per_labelled_face']}; masked outside faces p50 "
                         f"{d['masked_outside_faces']['p50']} p90 {d['masked_outside_faces']['p90']} max "
                         f"{d['masked_outside_faces']['max']}; fail-closed {d['fail_closed']}; {cpu} CPU-ms/frame")
        elif d["kind"] == "negatives":
            f = d["false_masks"]
            lines.append(f"{d['name']}: {f['with_any_mask']} of {f['pictures']} pictures masked at all, "
                         f"{len(f['over_1pct'])} over 1% (max {f['max_masked_area_fraction']}); {cpu} CPU-ms/frame")
        else:
            leaks = d["leaks"]
            lines.append(f"{d['name']}: {d['frames']} frames of {d['clips']} clips; referee re-found "
                         f"{leaks['refound']}/{leaks['referee_faces']} ({leaks['rate']}), confident "
                         f"{leaks['confident_refound']}; masked area {d['masked_area_fraction']['mean']}; "
                         f"{cpu} CPU-ms/frame")
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    """Recall by face size, and recall against threshold beside over-masking of face-free pictures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labelled = [d for d in report["datasets"] if d["kind"] == "labelled"]
    negatives = [d for d in report["datasets"] if d["kind"] == "negatives"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(labelled))
    for i, d in enumerate(labelled):
        buckets = list(d["recall"]["by_size"])
        values = [d["recall"]["by_size"][b]["recall"] or 0 for b in buckets]
        left.bar([j + i * width for j in range(len(buckets))], values, width, label=d["name"])
        left.set_xticks([j + width * (len(labelled) - 1) / 2 for j in range(len(buckets))], buckets)
    left.set_ylim(0, 1.05)
    left.set_xlabel("face size (longer side, px)")
    left.set_ylabel("recall (masked, referee-checked)")
    left.legend()
    for d in labelled:
        curve = d["threshold_curve"]
        right.plot([c["threshold"] for c in curve], [c["recall_pixel_test"] for c in curve], marker="o",
                   label=f"{d['name']} recall")
        context = d.get("context_curve") or []
        if context:
            right.plot([c["context_threshold"] for c in context], [c["recall_pixel_test"] for c in context],
                       marker="s", linestyle=":", label=f"{d['name']} recall against the crowd threshold")
    right.set_xlabel("detection threshold (base; dotted: in crowds)")
    right.set_ylabel("recall (pixel test)")
    right.set_ylim(0, 1.05)
    if negatives:
        twin = right.twinx()
        for d in negatives:
            curve = d["threshold_curve"]
            twin.plot([c["threshold"] for c in curve], [100 * (c["masked_area_fraction_max"] or 0) for c in curve],
                      color="tab:red", linestyle="--", marker="x", label=f"{d['name']}: max % of area masked")
        twin.set_ylabel("% of a face-free picture masked (max)")
        twin.legend(loc="lower right")
    right.legend(loc="lower left")
    fig.suptitle(f"{report['variant']['name']}: {report['variant']['model_version']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict[str, Any], out_dir: Path, make_plot: bool = True) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "summary.txt").write_text("\n".join(summary_lines(report)) + "\n")
    if make_plot:
        plot(report, out_dir / "eval.png")
    return path

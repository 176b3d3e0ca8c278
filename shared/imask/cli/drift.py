"""`imask drift reference capture|show|reset CAMERA`: the drift service's references in Redis.

capture: the camera's last N windows under one variant from the features stream's offline history (the 10 s view's
parquet files) become its reference for that variant (the running service reloads it at its next poll); show: the
stored references with their time range, source and digest; reset: drop them (the service takes the camera's next
windows as its new reference)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from imask.drift.store import DriftStore
from imask.drift.window import Reference, Window
from imask.ops.settings import DriftSettings, describe, load_settings


def history(settings: DriftSettings, camera: str) -> list[Window]:
    """The camera's windows in the offline store, oldest first (the newest push of each window)."""
    import pandas as pd

    from imask.features.repo import parquet_path
    from imask.features.schema import VIEW_10S

    folder = parquet_path(settings.feast_dir, VIEW_10S)
    if not folder.is_dir():
        raise SystemExit(f"no offline store at {folder} (IMASK_DRIFT_FEAST_DIR)")
    df = pd.read_parquet(folder, filters=[("camera_id", "==", camera)])
    if df.empty:
        return []
    df = df.sort_values("created").drop_duplicates(["window_end_ms"], keep="last").sort_values("window_end_ms")
    out = []
    for row in df.to_dict("records"):
        w = Window.from_features(camera, row)
        if w is not None:
            out.append(w)
    return out


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="imask drift reference", description=__doc__, epilog=describe(DriftSettings),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["capture", "show", "reset"])
    parser.add_argument("camera", metavar="CAMERA")
    parser.add_argument("--variant", help="capture/reset: this variant only (capture default: the camera's newest)")
    parser.add_argument("--windows", type=int, help="capture: how many windows (default IMASK_DRIFT_REFERENCE_WINDOWS)")
    parser.add_argument("--json", action="store_true", help="show: the references as JSON, windows included")
    args = parser.parse_args(argv)
    settings = load_settings(DriftSettings)
    store = DriftStore(settings.redis_url, settings.prefix)
    if args.action == "show":
        refs = store.references(args.camera)
        if args.json:
            print(json.dumps([r.to_dict() for r in refs], indent=2))
        elif not refs:
            print(f"{args.camera}: no reference (the drift service takes one from its next windows)")
        for ref in [] if args.json else refs:
            print(ref.describe())
        return 0
    if args.action == "reset":
        removed = store.delete_references(args.camera, args.variant)
        print(f"{args.camera}: {removed} reference(s) dropped; the next windows become the new one")
        return 0
    windows = history(settings, args.camera)
    variant = args.variant or (windows[-1].variant if windows else "")
    chosen = [w for w in windows if w.variant == variant][-(args.windows or settings.reference_windows):]
    if len(chosen) < 2:
        print(f"{args.camera}: only {len(chosen)} window(s) under variant {variant!r} in the offline store",
              file=sys.stderr)
        return 1
    ref = Reference(args.camera, variant, tuple(chosen), "capture", int(time.time() * 1000))
    store.save_reference(ref)
    print(ref.describe())
    return 0

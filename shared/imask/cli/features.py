"""`imask features show CAMERA...`: a camera's current features, read through the FeatureService (`imask features`).

    imask features show lobby
    imask features show lobby dock --json
    imask features show lobby --service router --variant default

Each camera: the end of its newest window, its age and whether that is fresh (stale features are shown, marked
stale), then one column per feature view (name@version) and a row per feature; histograms as their counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from imask.features.client import DEFAULT_TARGET, FeatureClient
from imask.features.serving import values_of
from imask.v1 import feature_service_pb2 as fpb


def freshness(camera: fpb.CameraFeatures) -> str:
    if not camera.found:
        return "no features (no window pushed yet, or the online store was emptied)"
    end = datetime.fromtimestamp(camera.window_end_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"window end {end} UTC, age {camera.age_s:.1f} s, {'fresh' if camera.fresh else 'STALE'}"


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value) or '""'


def table(camera: fpb.CameraFeatures) -> list[str]:
    values = values_of(camera)
    views = [view for view in camera.views]
    names: list[str] = []
    for view in views:
        names += [name for name in values[view.name] if name not in names]
    header = ["feature", *(f"{view.name}@{view.version}" for view in views)]
    rows = [[name, *(cell(values[view.name].get(name)) for view in views)] for name in sorted(names)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def as_json(reply: fpb.GetFeaturesReply) -> dict[str, Any]:
    return {"feature_service": reply.feature_service, "stale_after_s": reply.stale_after_s, "now_ms": reply.now_ms,
            "cameras": [{"camera_id": c.camera_id, "variant": c.variant, "found": c.found,
                         "window_end_ms": c.window_end_ms, "age_s": c.age_s, "fresh": c.fresh,
                         "views": {v.name: {"version": v.version, "found": v.found, "window_end_ms": v.window_end_ms}
                                   for v in c.views},
                         "values": values_of(c)} for c in reply.cameras]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imask features show", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cameras", nargs="+", metavar="CAMERA", help="camera id(s)")
    parser.add_argument("--target", default=os.environ.get("IMASK_CLIENT_FEATURES", DEFAULT_TARGET),
                        help=f"the FeatureService, HOST:PORT (IMASK_CLIENT_FEATURES; default {DEFAULT_TARGET})")
    parser.add_argument("--service", default="", help="feature service: operators (default), drift, router")
    parser.add_argument("--variant", help="the variant, for services keyed by camera and variant (router)")
    parser.add_argument("--json", action="store_true", help="the answer as JSON")
    parser.add_argument("--api-key", default=os.environ.get("IMASK_CLIENT_API_KEY"),
                        help="API key (IMASK_CLIENT_API_KEY)")
    parser.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA certificate of the server: TLS on")
    parser.add_argument("--client-cert", type=Path, metavar="PEM", help="client certificate for mTLS")
    parser.add_argument("--client-key", type=Path, metavar="PEM", help="client private key for mTLS")
    args = parser.parse_args(argv)
    client = FeatureClient(args.target, args.api_key, args.tls_ca, args.client_cert, args.client_key)
    try:
        reply = client.get(args.cameras, args.service, args.variant)
    except grpc.RpcError as exc:
        print(f"imask features show: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if args.json:
        print(json.dumps(as_json(reply), indent=2))
        return 0
    for i, camera in enumerate(reply.cameras):
        if i:
            print()
        variant = f" variant {camera.variant}" if camera.variant else ""
        print(f"camera {camera.camera_id}{variant} ({reply.feature_service}): {freshness(camera)}")
        if camera.found:
            print("\n".join(table(camera)))
    return 0

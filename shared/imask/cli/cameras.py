"""`imask cameras`: the admin API of a running ingest from the command line.

    imask cameras --ingest http://127.0.0.1:9301 list
    imask cameras --ingest ... add lobby rtsp://10.0.0.5/stream1 --set fps=10 --set drop_policy=complete
    imask cameras --ingest ... status lobby
    imask cameras --ingest ... remove lobby
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any


def request(base: str, method: str, path: str, body: dict[str, Any] | None = None, token: str = "",
            timeout: float = 10.0) -> tuple[int, Any]:
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"--ingest must be an http(s):// URL, got {base!r}")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        # The scheme was checked above (bandit's B310 asks for exactly that).
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # nosec B310
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"null")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imask cameras", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ingest", default=os.environ.get("IMASK_CLIENT_INGEST", "http://127.0.0.1:9301"),
                        help="ops URL of the ingest (IMASK_CLIENT_INGEST)")
    parser.add_argument("--token", default=os.environ.get("IMASK_CLIENT_ADMIN_TOKEN", ""),
                        help="admin token (IMASK_CLIENT_ADMIN_TOKEN)")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every camera with its state")
    p = sub.add_parser("status", help="one camera in detail")
    p.add_argument("camera_id")
    p = sub.add_parser("add", help="start a camera")
    p.add_argument("camera_id")
    p.add_argument("url")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="per-camera setting, e.g. fps=10, drop_policy=complete, cap_width=1280 (repeatable)")
    p = sub.add_parser("remove", help="stop a camera (it publishes what it decoded and ends its stream)")
    p.add_argument("camera_id")
    args = parser.parse_args(argv)
    if args.action == "list":
        code, answer = request(args.ingest, "GET", "/cameras")
    elif args.action == "status":
        code, answer = request(args.ingest, "GET", f"/cameras/{args.camera_id}")
    elif args.action == "add":
        fields: dict[str, Any] = {"camera_id": args.camera_id, "url": args.url}
        for entry in args.set:
            key, sep, value = entry.partition("=")
            if not sep:
                parser.error(f"--set {entry!r}: expected FIELD=VALUE")
            fields[key] = _value(value)
        code, answer = request(args.ingest, "POST", "/cameras", fields, args.token)
    else:
        code, answer = request(args.ingest, "DELETE", f"/cameras/{args.camera_id}", token=args.token)
    print(json.dumps(answer, indent=2))
    return 0 if code < 400 else 1


if __name__ == "__main__":
    sys.exit(main())

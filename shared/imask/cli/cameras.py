"""`imask cameras`: the admin API of a running ingest from the command line.

    imask cameras --url http://127.0.0.1:9401 list
    imask cameras --url ... add lobby rtsp://10.0.0.5/stream1 --set fps=10 --set drop_policy=complete
    imask cameras --url ... status lobby
    imask cameras --url ... remove lobby

The URL is the ingest's admin listener (IMASK_INGEST_ADMIN_HOST/PORT; an ingest started with port 0 shows the one
it picked as admin_port in /readyz and in its log), not its ops port.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from imask.ops.http_json import call

DEFAULT_URL = "http://127.0.0.1:9401"


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imask cameras", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", "--ingest", dest="url", default=os.environ.get("IMASK_CLIENT_ADMIN_URL", DEFAULT_URL),
                        help=f"admin API URL of the ingest (IMASK_CLIENT_ADMIN_URL; default {DEFAULT_URL})")
    parser.add_argument("--token", default=os.environ.get("IMASK_CLIENT_ADMIN_TOKEN", ""),
                        help="admin token (IMASK_CLIENT_ADMIN_TOKEN)")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every camera with its state")
    p = sub.add_parser("status", help="one camera in detail")
    p.add_argument("camera_id")
    p = sub.add_parser("add", help="start a camera")
    p.add_argument("camera_id")
    p.add_argument("camera_url", metavar="url")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="per-camera setting, e.g. fps=10, drop_policy=complete, cap_width=1280 (repeatable)")
    p = sub.add_parser("remove", help="stop a camera (it publishes what it decoded and ends its stream)")
    p.add_argument("camera_id")
    args = parser.parse_args(argv)
    method, path, body = "GET", "/cameras", None
    if args.action == "status":
        path = f"/cameras/{args.camera_id}"
    elif args.action == "add":
        fields: dict[str, Any] = {"camera_id": args.camera_id, "url": args.camera_url}
        for entry in args.set:
            key, sep, value = entry.partition("=")
            if not sep:
                parser.error(f"--set {entry!r}: expected FIELD=VALUE")
            fields[key] = _value(value)
        method, body = "POST", fields
    elif args.action == "remove":
        method, path = "DELETE", f"/cameras/{args.camera_id}"
    hint = "the admin API is on the ingest's IMASK_INGEST_ADMIN_PORT, not its ops port"
    try:
        code, answer = call(args.url, method, path, body, args.token)  # reads need the token too
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:  # URLError included: refused, unreachable, timed out
        print(f"imask cameras: cannot reach {args.url}: {getattr(exc, 'reason', exc)} ({hint})", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2))
    if code == 404 and args.action == "list":
        print(f"imask cameras: {args.url} has no /cameras ({hint})", file=sys.stderr)
    return 0 if code < 400 else 1


if __name__ == "__main__":
    sys.exit(main())

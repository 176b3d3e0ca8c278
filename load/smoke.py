"""Smoke test of a deployed system (`make smoke`; the CD pipeline runs it after each deploy): every service's ops
endpoint answers /healthz and /readyz, and one frame goes through mask-api's HTTP API and comes back masked.

Settings (environment; not IMASK_* names, which the services refuse when unknown):
  SMOKE_MASK_API_URL   mask-api's HTTP API, e.g. https://mask-api.staging.example.com (required)
  SMOKE_HEALTH_URLS    comma-separated base URLs of ops endpoints, e.g. http://worker:9400,http://ingest:9400
                       (mask-api's HTTP port serves /healthz and /readyz too, and is always checked)
  SMOKE_API_KEY        an API key of mask-api (Authorization: Bearer), when it runs with keys
  SMOKE_TIMEOUT_S      per request (default 30: the first request may wait for the model to warm up)
  SMOKE_CA_FILE        a CA bundle for HTTPS with a private CA

The frame is scikit-image's astronaut (one frontal face; a runtime dependency of the project). Masked means: HTTP
200, `X-Faces-Masked` at least 1, `X-Fail-Closed` false (a flat grey reply is safe but not a working detector),
an image of the same size whose face region changed. Exit code 0 when every check passed, 1 otherwise; one JSON
line per check on stdout."""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np

from imask.loadtest.samples import astronaut
from imask.media import decode_any, encode_jpeg

FACE = (slice(95, 155), slice(205, 270))  # the astronaut's face (rows, columns)
# A masked face region: its mean absolute difference from the original, in grey levels (blur of a face: ~20-40).
MIN_FACE_CHANGE = 8.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def _context() -> ssl.SSLContext | None:
    ca = os.environ.get("SMOKE_CA_FILE")
    return ssl.create_default_context(cafile=ca) if ca else None


def request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 30.0) -> Reply:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        # http(s) only, checked above (bandit's B310 is about file:// and custom schemes).
        with urllib.request.urlopen(req, timeout=timeout, context=_context()) as reply:  # nosec B310
            return Reply(reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def check_health(base: str, timeout: float) -> dict[str, object]:
    result: dict[str, object] = {"check": "health", "url": base}
    for path in ("/healthz", "/readyz"):
        try:
            reply = request(base.rstrip("/") + path, timeout=timeout)
            result[path.strip("/")] = reply.status
        except (OSError, ValueError) as exc:
            result[path.strip("/")] = f"error: {exc}"
    result["ok"] = result.get("healthz") == 200 and result.get("readyz") == 200
    return result


def check_mask(base: str, api_key: str | None, timeout: float) -> dict[str, object]:
    image = astronaut()
    headers = {"Content-Type": "image/jpeg", "Cache-Control": "no-cache"}  # a real masking, not a cached reply
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    result: dict[str, object] = {"check": "mask", "url": base.rstrip("/") + "/v1/mask"}
    began = time.monotonic()
    try:
        reply = request(str(result["url"]), encode_jpeg(image, 90), headers, timeout)
    except (OSError, ValueError) as exc:
        return {**result, "ok": False, "error": str(exc)}
    faces = int(reply.headers.get("x-faces-masked", "0") or 0)
    fail_closed = reply.headers.get("x-fail-closed", "").lower()
    result.update(status=reply.status, ms=round(1000 * (time.monotonic() - began)), faces_masked=faces,
                  fail_closed=fail_closed, model_version=reply.headers.get("x-model-version", ""))
    if reply.status != 200:
        return {**result, "ok": False, "error": reply.body[:300].decode(errors="replace")}
    try:
        masked = decode_any(reply.body)
    except Exception as exc:  # any decoding failure is the check failing
        return {**result, "ok": False, "error": f"the reply is no image: {exc}"}
    if masked.shape != image.shape:
        return {**result, "ok": False, "error": f"reply {masked.shape} for a {image.shape} frame"}
    change = float(np.abs(masked[FACE].astype(np.float32) - image[FACE].astype(np.float32)).mean())
    result["face_change"] = round(change, 1)
    result["ok"] = faces >= 1 and fail_closed == "false" and change >= MIN_FACE_CHANGE
    return result


def main() -> int:
    api = os.environ.get("SMOKE_MASK_API_URL", "").strip()
    if not api:
        print("SMOKE_MASK_API_URL is required (mask-api's HTTP API)", file=sys.stderr)
        return 2
    timeout = float(os.environ.get("SMOKE_TIMEOUT_S", "30"))
    bases = [u.strip() for u in os.environ.get("SMOKE_HEALTH_URLS", "").split(",") if u.strip()]
    results = [check_health(base, timeout) for base in [api, *bases]]
    results.append(check_mask(api, os.environ.get("SMOKE_API_KEY") or None, timeout))
    for result in results:
        print(json.dumps(result), flush=True)
    failed = [r for r in results if not r["ok"]]
    print(json.dumps({"smoke": "passed" if not failed else "failed", "checks": len(results),
                      "failed": len(failed)}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

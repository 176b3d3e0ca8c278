"""`make smoke` (load/smoke.py) against a real mask-api with its HTTP API on the stack's Redis: health of the HTTP
port and the ops port, one frame masked end to end; a wrong URL and a mask-api that masks nothing fail it. The
stack's Prometheus scrapes the mask-api meanwhile, so the Grafana panels over mask-api's metrics are checked for
data here (tests/promql.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import promql
import pytest

from imask.devstack.procs import free_port
from imask.devstack.settings import REPO_ROOT, StackSettings
from imask.loadtest.samples import astronaut
from imask.maskapi.client import MaskClient
from imask.media import encode_jpeg
from streams import spawn_tracked

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix(stack_up: None) -> Iterator[str]:
    import redis

    name = f"imask-test-smoke-{uuid.uuid4().hex[:10]}"
    yield name
    store = redis.Redis.from_url(StackSettings().redis_url)
    keys = list(store.scan_iter(f"{name}:*"))
    if keys:
        store.delete(*keys)
    store.close()


def smoke(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SMOKE_")}
    return subprocess.run([sys.executable, "-m", "load.smoke"], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT, env={**clean, **env})


def test_smoke_passes_against_a_real_mask_api_and_fails_when_it_should(tmp_path: Path, prefix: str) -> None:
    grpc_port, http_port = free_port(), free_port()
    api = spawn_tracked("mask-api", ["mask-api"], tmp_path / "logs", {
        **os.environ, "IMASK_MASK_API_PORT": str(grpc_port), "IMASK_MASK_API_HTTP_PORT": str(http_port),
        "IMASK_AUTH": "none", "IMASK_MASK_API_PUBLISH_META": "false", "IMASK_REDIS_URL": StackSettings().redis_url,
        "IMASK_MASK_API_REDIS_PREFIX": prefix, "IMASK_MASK_API_RATE_LIMIT": "100"})
    began = time.time()
    with promql.scraped({"mask-api": (api, "mask-api")}):
        api.wait_ready(90)
        url = f"http://127.0.0.1:{http_port}"
        out = smoke(SMOKE_MASK_API_URL=url, SMOKE_HEALTH_URLS=api.ops_url)
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        assert '"check": "mask"' in lines[-2] and '"faces_masked": 1' in lines[-2] and '"ok": true' in lines[-2]
        assert lines[-1] == '{"smoke": "passed", "checks": 3, "failed": 0}'
        # A health URL that does not answer, and a mask-api that masks nothing (threshold 1: no face found).
        out = smoke(SMOKE_MASK_API_URL=url, SMOKE_HEALTH_URLS=f"http://127.0.0.1:{free_port()}")
        assert out.returncode == 1 and '"failed": 1' in out.stdout.splitlines()[-1], out.stdout
        assert smoke().returncode == 2
        # One gRPC call too, for the panel over gRPC requests.
        client = MaskClient(f"127.0.0.1:{grpc_port}")
        try:
            assert len(client.mask(encode_jpeg(astronaut(), 90)).detections) >= 1
        finally:
            client.close()
        promql.wait_for_samples("mask-api smoke")
        problems = promql.check_queries(promql.dashboard_queries(), "mask-api smoke", began, time.time())
        assert not problems, "\n".join(problems)

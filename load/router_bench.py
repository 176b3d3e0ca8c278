"""`make bench-router`: what routing adds per frame, and end-to-end latency with routing on vs off, in one run.

1. Per-frame routing decision (envelope parse for camera and ingest time, config lookup by ingest time, bucket
   hash) on real 720p envelopes, beside the cost of masking the same frame.
2. One worker, one 720p camera at 15 fps for a while, routing off (no experiment) then on (an experiment whose
   two arms both run `default`, so only the routing differs): end-to-end p50/p99; then two cameras replayed as
   fast as possible (saturated) for frames per second.
Writes out/bench/router.json.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from imask.devstack import stack
from imask.devstack.settings import REPO_ROOT
from imask.engine import MaskingEngine, default_variant
from imask.frames.envelope import make_frame
from imask.loadtest.replay import ReplayPlan
from imask.ops.settings import FrameLimits
from imask.pipeline.processor import FrameProcessor, ProcessorOptions
from imask.pipeline.routed import frame_head
from imask.routing.assign import ArmSpec, ConfigHistory, ExperimentConfig
from imask.routing.store import ExperimentSpec, ExperimentStore
from imask.streaming.loop import Inbound
from load.scenarios import Scenario, sample_sources

OUT = REPO_ROOT / "out" / "bench"


def decision_cost(frames: int = 300) -> dict[str, Any]:
    source = sample_sources(size=(1280, 720), max_frames=60, fps=15)[0]
    envelopes = [make_frame(f"cam-{i % 8}", i, f.data, f.width, f.height, time.time_ns() // 1000).SerializeToString()
                 for i, f in enumerate(source.frames[i % len(source.frames)] for i in range(frames))]
    history = ConfigHistory()
    history.add(ExperimentConfig("bench", "bench", (ArmSpec("control", "default", 0.5),
                                                    ArmSpec("challenger", "default", 0.5)), 1, 0))
    inbound = [Inbound(f"cam-{i % 8}".encode(), e) for i, e in enumerate(envelopes)]
    t0 = time.perf_counter()
    for item in inbound:
        head = frame_head(item)
        assert head is not None
        config = history.at(head[2])
        assert config is not None
        config.arm_for(head[0])
    routing_us = (time.perf_counter() - t0) / frames * 1e6
    engine = MaskingEngine.load(default_variant(), provider="cpu")
    engine.warm_up()
    processor = FrameProcessor(engine, ProcessorOptions(worker_id="bench", limits=FrameLimits()))
    t0 = time.perf_counter()
    outcomes = [processor.process([item])[0] for item in inbound[:60]]
    masking_us = (time.perf_counter() - t0) / 60 * 1e6
    assert all(o.masked is not None for o in outcomes), "the bench frames must be masked, not dropped"
    engine.close()
    return {"routing_us_per_frame": round(routing_us, 1), "masking_us_per_frame": round(masking_us, 1),
            "routing_share_of_masking": round(routing_us / masking_us, 5)}


def end_to_end(routing: bool, seconds: float, cameras: int = 2) -> dict[str, Any]:
    sources = sample_sources(size=(1280, 720), max_frames=60, fps=15)
    out: dict[str, Any] = {"routing": routing}
    for speed, key in ((1.0, "realtime"), (0.0, "saturated")):
        scenario = Scenario(f"router-{'on' if routing else 'off'}")
        try:
            if routing:
                store = ExperimentStore(stack.StackSettings().redis_url, fleet=scenario.group, delay_s=0.5)
                store.create(ExperimentSpec("bench", (ArmSpec("control", "default", 0.5),
                                                      ArmSpec("challenger", "default", 0.5))))
                scenario.env.update(IMASK_REDIS_URL=store.url, IMASK_WORKER_EXPERIMENTS="true")
                time.sleep(0.6)
            scenario.add_worker()
            # Real time: one 720p/15 camera, within one worker's capacity (latency without a backlog);
            # saturated: every camera as fast as possible (throughput).
            plan = ReplayPlan(cameras=1 if speed else cameras, speed=speed, duration_s=seconds if speed else 0.0,
                              camera_prefix="rb")
            report = scenario.run(sources, plan)
        finally:
            scenario.close()
        out[key] = {"throughput_fps": report["throughput_fps"], "end_to_end_ms": report["end_to_end_ms_steady"],
                    "frames_masked": report["frames_masked"], "unaccounted": report["unaccounted"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.router_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    stack.up()
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"decision": decision_cost()}
    print(json.dumps(result["decision"]), flush=True)
    off, on = end_to_end(False, args.seconds), end_to_end(True, args.seconds)
    result.update(off=off, on=on)
    result["ratios_on_over_off"] = {
        "saturated_fps": round(on["saturated"]["throughput_fps"] / off["saturated"]["throughput_fps"], 3),
        "realtime_p50_ms": round(on["realtime"]["end_to_end_ms"]["p50"] / off["realtime"]["end_to_end_ms"]["p50"], 3),
        "realtime_p99_ms": round(on["realtime"]["end_to_end_ms"]["p99"] / off["realtime"]["end_to_end_ms"]["p99"], 3),
    }
    (OUT / "router.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make reliability`: the fuzz targets at 10,000 inputs each, then the fault scenarios (load/faults.py), then one
report of what every input became and what every fault did.

Writes out/reliability/report.json ("fuzz" totals and targets, "faults" per scenario) and report.txt from the
tallies the fuzz tests leave in out/reliability/ and the faults run. `--skip-fuzz` / `--skip-faults` run one part
and keep the other part's last figures in the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from imask.devstack.settings import REPO_ROOT

OUT = REPO_ROOT / "out" / "reliability"
EXAMPLES = 10_000
# One fuzz target each: the worker's frame processing, mask-api over gRPC, `imask mask` on files (tests/fuzzing.py).
FUZZ_TESTS = ("tests/unit/pipeline/test_fuzz_worker_frames.py", "tests/unit/maskapi/test_fuzz_mask_api.py",
              "tests/unit/filemask/test_fuzz_mask_files.py")


def run_fuzz() -> tuple[dict[str, Any], list[str]]:
    for stale in OUT.glob("fuzz-*.json"):
        stale.unlink()
    env = {**os.environ, "FUZZ_EXAMPLES": str(EXAMPLES), "FUZZ_RANDOM": "1"}
    code = subprocess.run([str(Path(sys.executable).parent / "pytest"), "-q", "-p", "no:randomly", *FUZZ_TESTS,
                           "-o", "timeout=3600"], cwd=REPO_ROOT, env=env).returncode
    targets = [json.loads(p.read_text()) for p in sorted(OUT.glob("fuzz-*.json"))]
    report = {"fuzz_examples_per_target": EXAMPLES, "tests_passed": code == 0, "targets": targets,
              "totals": {"inputs": sum(t["inputs"] for t in targets), "crashes": 0 if code == 0 else None,
                         "raw_egress": sum(t["raw_egress"] for t in targets),
                         "leak_checked": sum(t["leak_checked"] for t in targets)}}
    return report, fuzz_lines(report)


def fuzz_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"fuzz: {report['fuzz_examples_per_target']} inputs per target, tests "
             f"{'passed' if report['tests_passed'] else 'FAILED'}"]
    for t in report["targets"]:
        lines.append(f"  {t['target']}: {t['inputs']} inputs, raw egress {t['raw_egress']}, outputs checked by the "
                     f"referee {t['leak_checked']}; outcomes {t['outcomes']}")
    return lines


def faults_lines(report: dict[str, Any]) -> list[str]:
    head = (f"faults: {report['summary']['passed']} of {report['summary']['scenarios_run']} scenarios passed in "
            f"{report['duration_s']} s; frames lost {report['summary']['frames_lost']}, raw egress "
            f"{report['summary']['raw_egress']}, duplicates {report['summary']['duplicates']}")
    return [head, *("  " + line for line in report["table"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.reliability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-fuzz", action="store_true", help="keep the last fuzz figures, run the faults only")
    parser.add_argument("--skip-faults", action="store_true", help="run the fuzz targets only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    previous: dict[str, Any] = {}
    if (OUT / "report.json").is_file():
        try:
            previous = json.loads((OUT / "report.json").read_text())
        except ValueError:
            previous = {}
    ok = True
    if args.skip_fuzz:
        fuzz = previous.get("fuzz") or ({k: previous[k] for k in ("fuzz_examples_per_target", "tests_passed",
                                                                   "targets", "totals")}
                                        if "targets" in previous else None)
        lines = fuzz_lines(fuzz) if fuzz else ["fuzz: not run"]
    else:
        fuzz, lines = run_fuzz()
        ok = ok and bool(fuzz["tests_passed"])
    if args.skip_faults:
        faults = previous.get("faults")
    else:
        from load.faults import run_faults

        faults = run_faults(OUT)
        (OUT / "faults.json").write_text(json.dumps(faults, indent=2) + "\n")
        ok = ok and bool(faults["passed"])
    lines += faults_lines(faults) if faults else ["faults: not run"]
    # The fuzz figures stay at the top level too (their first readers look there).
    report = {**(fuzz or {}), "fuzz": fuzz, "faults": faults}
    (OUT / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

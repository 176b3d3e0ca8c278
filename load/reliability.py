"""`make reliability`: the fuzz targets at 10,000 inputs each, then one report of what every input became.

Writes out/reliability/report.json and report.txt from the tallies the fuzz tests leave in out/reliability/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from imask.ops.settings import REPO_ROOT

OUT = REPO_ROOT / "out" / "reliability"
EXAMPLES = 10_000


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for stale in OUT.glob("fuzz-*.json"):
        stale.unlink()
    env = {**os.environ, "FUZZ_EXAMPLES": str(EXAMPLES), "FUZZ_RANDOM": "1"}
    code = subprocess.run([str(Path(sys.executable).parent / "pytest"), "-q", "-p", "no:randomly",
                           "tests/test_fuzz.py", "-o", "timeout=3600"], cwd=REPO_ROOT, env=env).returncode
    targets = [json.loads(p.read_text()) for p in sorted(OUT.glob("fuzz-*.json"))]
    report = {"fuzz_examples_per_target": EXAMPLES, "tests_passed": code == 0, "targets": targets,
              "totals": {"inputs": sum(t["inputs"] for t in targets), "crashes": 0 if code == 0 else None,
                         "raw_egress": sum(t["raw_egress"] for t in targets),
                         "leak_checked": sum(t["leak_checked"] for t in targets)}}
    (OUT / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"fuzz: {EXAMPLES} inputs per target, tests {'passed' if code == 0 else 'FAILED'}"]
    for t in targets:
        lines.append(f"  {t['target']}: {t['inputs']} inputs, raw egress {t['raw_egress']}, outputs checked by the "
                     f"referee {t['leak_checked']}; outcomes {t['outcomes']}")
    (OUT / "report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())

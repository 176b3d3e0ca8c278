"""The promotion gate: a version may take an alias only if it is no worse than the alias's holder on the same data.

"The same data" is the dataset digest of `imask eval` (a sha256 over files and labels): two evaluations compare
only where their digests match. On every shared digest the candidate's recall may be lower by at most
`recall_tolerance`, and its leak rate (faces the independent referee still finds after masking) higher by at most
`leak_tolerance`; confident re-finds may not rise at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RECALL_TOLERANCE = 0.005
LEAK_TOLERANCE = 0.005


def dataset_metrics(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per dataset digest, the figures the gate and the registry's runs use, from an `imask.eval/1` report."""
    out: dict[str, dict[str, Any]] = {}
    for d in report["datasets"]:
        m: dict[str, Any] = {"name": d["name"], "kind": d["kind"]}
        if d["kind"] == "labelled":
            m["recall"] = d["recall"]["recall"]
            for size, key in (("<32", "recall_lt32"), ("32-63", "recall_32_63"), (">=64", "recall_ge64")):
                value = d["recall"]["by_size"].get(size, {}).get("recall")
                if value is not None:
                    m[key] = value
        if "leaks" in d:
            m["leak_rate"] = d["leaks"]["rate"] or 0.0
            m["confident_refound"] = d["leaks"]["confident_refound"]
        if "masked_area_fraction" in d:
            m["masked_area_mean"] = d["masked_area_fraction"]["mean"]
        if "false_masks" in d:
            m["pictures_over_1pct"] = len(d["false_masks"]["over_1pct"])
        if "cpu_ms_per_frame" in d:
            m["cpu_ms_per_frame"] = d["cpu_ms_per_frame"]["mean"]
        out[d["digest"]] = m
    return out


@dataclass
class GateDecision:
    allowed: bool
    reasons: list[str] = field(default_factory=list)
    compared: list[str] = field(default_factory=list)  # dataset names compared


def compare(holder: dict[str, dict[str, Any]], candidate: dict[str, dict[str, Any]],
            recall_tolerance: float = RECALL_TOLERANCE, leak_tolerance: float = LEAK_TOLERANCE) -> GateDecision:
    """`holder` and `candidate`: dataset_metrics of each version's evaluations (digest -> figures)."""
    shared = sorted(set(holder) & set(candidate))
    if not shared:
        return GateDecision(False, ["no evaluation of both versions on the same dataset digest: run `imask model "
                                    "eval` for each on the same data"])
    decision = GateDecision(True)
    for digest in shared:
        h, c = holder[digest], candidate[digest]
        name = f"{c['name']} ({digest[:19]})"
        decision.compared.append(c["name"])
        if "recall" in h and "recall" in c and c["recall"] < h["recall"] - recall_tolerance:
            decision.allowed = False
            decision.reasons.append(f"{name}: recall {c['recall']:.3f} < {h['recall']:.3f} - {recall_tolerance}")
        if "leak_rate" in h and "leak_rate" in c:
            if c["leak_rate"] > h["leak_rate"] + leak_tolerance:
                decision.allowed = False
                decision.reasons.append(f"{name}: leak rate {c['leak_rate']:.4f} > {h['leak_rate']:.4f} + "
                                        f"{leak_tolerance}")
            if c["confident_refound"] > h["confident_refound"]:
                decision.allowed = False
                decision.reasons.append(f"{name}: {c['confident_refound']} confident re-finds > "
                                        f"{h['confident_refound']}")
    if decision.allowed:
        decision.reasons.append(f"no worse than the holder on {', '.join(decision.compared)}")
    return decision

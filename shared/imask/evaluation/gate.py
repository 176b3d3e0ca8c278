"""The evaluation gate: limits on a report's figures (`imask eval --min-recall 0.93 --max-false-masks 3 ...`).

Each limit is `VALUE` (every dataset the figure applies to) or `DATASET=VALUE` (that dataset alone, named as the
report names it, `lfw-faces`, `wider_dev@rot90`, or by the spec it was given as, `builtin:lfw-faces`). A limit that
checks nothing (no dataset of its kind in the run, or no dataset of that name) fails too: a gate must not pass by
missing its data. Pure functions: a report in, the checks and their verdicts out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    option: str  # the command-line option, without its dashes
    label: str  # how a message names the figure
    kinds: tuple[str, ...]  # the dataset kinds it is read from
    at_least: bool  # True: the figure must be >= the limit; False: <= the limit
    read: Callable[[dict[str, Any]], float | None]


FIGURES: dict[str, Figure] = {f.option: f for f in (
    Figure("min-recall", "recall", ("labelled",), True, lambda d: d["recall"]["recall"]),
    Figure("max-confident-leaks", "faces confidently re-found by the referee", ("labelled", "clips"), False,
           lambda d: d["leaks"]["confident_refound"]),
    Figure("max-false-masks", "masks on face-free pictures", ("negatives",), False,
           lambda d: d["false_masks"]["masks"]),
    Figure("max-over-1pct", "face-free pictures over 1% masked", ("negatives",), False,
           lambda d: len(d["false_masks"]["over_1pct"])),
)}


@dataclass(frozen=True)
class Limit:
    figure: Figure
    value: float
    dataset: str | None = None  # None: every dataset of the figure's kinds

    def describe(self) -> str:
        where = f"{self.dataset}=" if self.dataset else ""
        return f"--{self.figure.option} {where}{_number(self.value)}"


@dataclass(frozen=True)
class Verdict:
    limit: Limit
    dataset: str | None  # None: the limit found no dataset to check
    value: float | None
    passed: bool

    def message(self) -> str:
        figure = self.limit.figure
        bound = f"{'at least' if figure.at_least else 'at most'} {_number(self.limit.value)}"
        if self.dataset is None:
            target = f"dataset {self.limit.dataset!r}" if self.limit.dataset else f"{' or '.join(figure.kinds)} dataset"
            return f"{self.limit.describe()}: no {target} in this run, nothing checked"
        shown = "none" if self.value is None else _number(self.value)
        return f"{self.dataset}: {figure.label} {shown} (must be {bound}: {self.limit.describe()})"


def parse_limit(option: str, text: str) -> Limit:
    """`0.93` or `lfw-faces=0.93` for the option (`min-recall`, ...); ValueError says what is wrong."""
    if option not in FIGURES:
        raise ValueError(f"unknown gate {option!r}; known: {', '.join(FIGURES)}")
    dataset, sep, raw = text.rpartition("=")
    if sep and not dataset:
        raise ValueError(f"--{option} {text!r}: a dataset name is missing before '='")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"--{option} {text!r}: expected [DATASET=]NUMBER") from None
    if value != value or value < 0 or (option == "min-recall" and value > 1):
        raise ValueError(f"--{option} {text!r}: out of range")
    return Limit(FIGURES[option], value, dataset or None)


def check(report: dict[str, Any], limits: list[Limit]) -> list[Verdict]:
    """Every limit against every dataset it applies to, in the order given."""
    verdicts = []
    for limit in limits:
        targets = [d for d in report["datasets"] if d["kind"] in limit.figure.kinds
                   and (limit.dataset is None or limit.dataset in (d["name"], d["source"]))]
        if not targets:
            verdicts.append(Verdict(limit, None, None, False))
        for dataset in targets:
            value = limit.figure.read(dataset)
            passed = value is not None and (value >= limit.value if limit.figure.at_least else value <= limit.value)
            verdicts.append(Verdict(limit, dataset["name"], value, passed))
    return verdicts


def _number(value: float) -> str:
    return f"{value:g}"

"""A small Dockerfile linter for the rules that matter here (hadolint is not packaged for PyPI or Debian in a form
that runs offline): every base image pinned to an exact tag or a digest, never `latest`; the final stage runs as a
non-root USER; no ADD from a URL; pip installs pinned (a lock or constraints file, or name==version)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined, comments and blank lines dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        joined = " ".join(pending)
        pending = []
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
    return out


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def _pinned(image: str) -> str | None:
    """None when the reference is pinned, else why not."""
    if "$" in image:
        return f"{image}: an ARG without a default value"
    if "@sha256:" in image:
        return None
    tag = image.rpartition(":")[2] if ":" in image.rsplit("/", 1)[-1] else ""
    if not tag:
        return f"{image}: no tag (means latest)"
    if tag == "latest" or "latest" in tag.split("-"):
        return f"{image}: the latest tag"
    if not re.search(r"\d", tag):
        return f"{image}: tag {tag!r} names no version"
    return None


def _pip_unpinned(command: str) -> list[str]:
    problems = []
    for segment in re.split(r"&&|;|\|\|", command):
        try:
            words = shlex.split(segment)
        except ValueError:
            words = segment.split()
        is_pip = "pip" in words[0] if words else False
        if len(words) < 2 or not (is_pip or words[1:3] == ["-m", "pip"]):
            continue
        if "install" not in words:
            continue
        rest = words[words.index("install") + 1:]
        if any(flag in rest for flag in ("-c", "-r", "--constraint", "--requirement")):
            continue
        skip = False
        for word in rest:
            if skip:
                skip = False
                continue
            if word.startswith("-"):
                skip = word in ("-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-t", "--target")
                continue
            if word.startswith((".", "/")) or "==" in word:
                continue
            problems.append(f"pip install {word}: not pinned (name==version, or -c/-r a lock file)")
    return problems


def lint(path: Path) -> list[str]:
    """Problems found in one Dockerfile, each `path:line: message`."""
    instructions = parse(path.read_text())
    problems: list[str] = []
    args: dict[str, str] = {}
    stages: set[str] = set()
    user: str | None = None
    seen_from = False
    for ins in instructions:
        where = f"{path}:{ins.line}"
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            if not seen_from and default:
                args[name.strip()] = default.strip().strip('"')
        elif ins.keyword == "FROM":
            seen_from = True
            words = [w for w in ins.args.split() if not w.startswith("--")]
            image = _substitute(words[0], args)
            if image not in stages and image != "scratch":
                why = _pinned(image)
                if why:
                    problems.append(f"{where}: base image not pinned: {why}")
            if len(words) >= 3 and words[1].lower() == "as":
                stages.add(words[2])
            user = None
        elif ins.keyword == "USER":
            user = ins.args.split(":")[0].strip()
        elif ins.keyword == "ADD" and re.search(r"(^|\s)(https?|git)://|(^|\s)git@", ins.args):
            problems.append(f"{where}: ADD from a URL (download in a RUN with a checksum, or COPY)")
        elif ins.keyword == "RUN":
            problems += [f"{where}: {p}" for p in _pip_unpinned(ins.args)]
    if not seen_from:
        problems.append(f"{path}: no FROM")
    elif user is None:
        problems.append(f"{path}: the final stage has no USER (it would run as root)")
    elif user in ("root", "0"):
        problems.append(f"{path}: the final stage runs as root")
    return problems

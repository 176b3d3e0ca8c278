"""The generated protobuf modules (shared/imask/v1) match protos/."""

from __future__ import annotations

from pathlib import Path


def test_generated_protos_are_up_to_date(tmp_path: Path) -> None:
    from imask.devstack.protogen import PY_ROOT, generate

    for fresh in generate(tmp_path):
        committed = PY_ROOT / fresh.relative_to(tmp_path)
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `make protos`"

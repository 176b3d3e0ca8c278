"""The model registry's pieces that need no MLflow: variant specs, model references, the promotion gate, and
registered models refusing overrides. (Against a real MLflow server: tests/integration/test_registry.py.)"""

from __future__ import annotations

import dataclasses
import json

import pytest

from imask.engine.variants import default_variant
from imask.ops.settings import ConfigError, WorkerSettings
from imask.registry.gate import compare
from imask.registry.refs import ModelRef, RegistryError
from imask.registry.spec import variant_from_spec, variant_to_spec


def test_spec_round_trip_refuses_unknown_keys() -> None:
    variant = default_variant().with_overrides(threshold=0.2, flip=True)
    spec = variant_to_spec(variant)
    back = variant_from_spec(json.loads(json.dumps(spec)), model_path="/m.onnx", registry_version="m/1")
    assert dataclasses.replace(back, model_path="", registry_version="") == variant
    assert back.model_version == "m/1"
    with pytest.raises(RegistryError, match="unknown"):
        variant_from_spec({**spec, "newer_setting": 1})
    with pytest.raises(RegistryError, match="schema"):
        variant_from_spec({**spec, "schema": "imask.variant/2"})


def test_model_references_parse_or_name_the_problem() -> None:
    assert ModelRef.parse("imask-masker@champion") == ModelRef("imask-masker", alias="champion")
    assert ModelRef.parse("models:/imask-masker/3") == ModelRef("imask-masker", version="3")
    for bad in ("imask-masker", "a@", "a/b", "@champion"):
        with pytest.raises(RegistryError, match="NAME@ALIAS"):
            ModelRef.parse(bad)


def test_gate_compares_only_the_same_data() -> None:
    holder = {"sha256:a": {"name": "wider", "kind": "labelled", "recall": 0.9, "leak_rate": 0.02,
                           "confident_refound": 0}}
    assert not compare(holder, {"sha256:b": holder["sha256:a"]}).allowed  # other data: nothing to compare
    assert compare(holder, {"sha256:a": {**holder["sha256:a"], "recall": 0.897}}).allowed  # within tolerance
    worse = compare(holder, {"sha256:a": {**holder["sha256:a"], "recall": 0.85}})
    assert not worse.allowed and "recall 0.850" in worse.reasons[0]
    assert not compare(holder, {"sha256:a": {**holder["sha256:a"], "confident_refound": 1}}).allowed


def test_registered_model_is_not_run_with_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    from imask.registry.resolve import engine_variant

    monkeypatch.setenv("IMASK_MODEL", "imask-masker@champion")
    monkeypatch.setenv("IMASK_THRESHOLD", "0.3")
    with pytest.raises(ConfigError, match="IMASK_THRESHOLD"):
        engine_variant(WorkerSettings())


def test_a_version_registered_before_orientation_runs_as_it_did() -> None:
    """Fields added to Variant later are filled with the value that reproduces how older versions ran."""
    spec = variant_to_spec(default_variant())
    older = {k: v for k, v in spec.items() if k not in ("orientation", "orientation_every")}
    assert variant_from_spec(older).orientation == "upright"
    assert variant_from_spec(spec).orientation == "auto"

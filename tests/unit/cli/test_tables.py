"""`imask model` and `imask experiment` print tables for people and JSON with --json (no server: the formatting of
replies as the registry and the router return them, and the flag's parsing)."""

from __future__ import annotations

import json

import pytest
from google.protobuf.json_format import MessageToDict

from imask.cli import experiment, model
from imask.cli.tables import emit, fields, table
from imask.v1 import experiment_service_pb2 as epb

VERSIONS = [
    {"name": "imask-masker", "version": "1", "aliases": [], "variant": "default", "detector": "centerface",
     "sha256": "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc", "description": "",
     "created_ms": 1_700_000_000_000, "run_id": "a" * 32},
    {"name": "imask-masker", "version": "12", "aliases": ["champion", "challenger"], "variant": "realtime",
     "detector": "centerface", "sha256": "ffff" * 16, "description": "registered by imask run",
     "created_ms": 1_700_000_100_000, "run_id": "b" * 32},
]


def _status(name: str = "canary-fast", weight: float = 0.1) -> epb.ExperimentStatus:
    spec = epb.ExperimentSpec(name=name, strategy=epb.STRATEGY_CANARY,
                              arms=[epb.Arm(name="control", variant="default", weight=1 - weight),
                                    epb.Arm(name="challenger", variant="imask-masker/3", weight=weight)],
                              guardrails=[epb.Guardrail(metric="latency_ms", tolerance=0.2)])
    return epb.ExperimentStatus(spec=spec, state=epb.EXPERIMENT_STATE_RUNNING, config_version=4,
                                effective_ts_us=1_700_000_000_000_000, arms=spec.arms, last_change="ramp to 0.1")


def _dict(message: object) -> dict[str, object]:
    return MessageToDict(message, preserving_proto_field_name=True)  # type: ignore[arg-type]


def test_table_aligns_columns_under_a_header_and_right_aligns_numbers() -> None:
    lines = table([{"name": "a", "n": 5, "ok": True}, {"name": "longer", "n": 120, "ok": False}])
    assert lines[0].split() == ["NAME", "N", "OK"]
    assert lines[1].split() == ["a", "5", "yes"] and lines[2].split() == ["longer", "120", "no"]
    assert lines[1].index("5") == lines[2].index("120") + 2  # numbers end in one column
    assert len({line.index(line.split()[2]) for line in lines}) == 1  # the third column starts in one place
    assert table([], empty="(nothing)") == ["(nothing)"]


def test_fields_nest_mappings_and_list_tables() -> None:
    lines = fields({"a": 1, "longer key": None, "rows": [{"x": 1}, {"x": 2}], "tags": ["one", "two"],
                    "nested": {"inner": {"b": 2}}})
    assert lines[0] == "a           1" and lines[1] == "longer key  -"
    assert lines[2:6] == ["rows:", "  X", "  1", "  2"] and lines[6] == "tags        one, two"
    assert lines[7:] == ["nested:", "  inner  b=2"]  # a flat mapping on one line


def test_model_list_is_a_table_of_versions_with_aliases() -> None:
    lines = model.version_rows(VERSIONS)
    assert lines[0].split() == ["VERSION", "ALIASES", "VARIANT", "DETECTOR", "SHA256", "CREATED", "DESCRIPTION"]
    assert "champion, challenger" in lines[2] and "realtime" in lines[2] and "ffffffffffff" in lines[2]
    assert "ffff" * 4 not in lines[2]  # sha256 shortened to 12
    assert lines[1].split()[:3] == ["1", "-", "default"]  # no alias: a dash
    assert model.version_rows([]) == ["(no versions)"]


def test_model_show_lists_fields_then_the_latest_evaluation_per_dataset() -> None:
    evaluations = {"sha256:" + "c" * 64: {"name": "wider_dev", "kind": "labelled", "recall": 0.913, "leak_rate": 0.01,
                                          "run_id": "r1"}}
    lines = model.version_lines(VERSIONS[1], evaluations)
    assert lines[0].split() == ["version", "imask-masker/12"]
    assert lines[1].split(None, 1) == ["aliases", "champion, challenger"]
    at = lines.index("evaluations (latest per dataset):")
    assert lines[at + 1].split() == ["DATASET", "DIGEST", "KIND", "RECALL", "LEAK_RATE", "RUN"]
    assert lines[at + 2].split() == ["wider_dev", "c" * 12, "labelled", "0.913", "0.01", "r1"]
    assert model.version_lines(VERSIONS[0], {})[-1].strip().startswith("(none")


def test_model_promote_says_whether_it_moved_and_why() -> None:
    forced = model.promote_lines({"allowed": False, "moved": True, "reasons": ["recall lower", "FORCED: hotfix"],
                                  "compared": ["wider_dev"]})
    assert forced == ["promotion moved (forced past the gate)", "  - recall lower", "  - FORCED: hotfix",
                      "compared on: wider_dev"]
    assert model.promote_lines({"allowed": False, "moved": False, "reasons": ["no"], "compared": []})[0] == \
        "promotion refused"


def test_experiment_status_list_results_and_assign_read_as_tables() -> None:
    status = experiment.reply_lines("status", _dict(_status()))
    assert status[0].split() == ["experiment", "canary-fast"] and status[1].split() == ["state", "running"]
    assert status[2].split() == ["strategy", "canary"] and ["guardrails", "latency_ms:0.2"] in [
        line.split() for line in status]
    assert status[-3].split() == ["ARM", "VARIANT", "WEIGHT"]
    assert status[-1].split() == ["challenger", "imask-masker/3", "0.1"]

    listed = experiment.reply_lines("list", _dict(epb.ExperimentList(experiments=[_status(), _status("b", 0.5)])))
    assert listed[0].split() == ["EXPERIMENT", "STATE", "STRATEGY", "ARMS", "CONFIG", "LAST", "CHANGE"]
    assert "control=default:0.9 challenger=imask-masker/3:0.1" in listed[1] and listed[2].startswith("b ")
    assert experiment.reply_lines("list", {}) == ["(no experiments)"]

    results = epb.ExperimentResults(
        status=_status(), recommendation="hold", reasons=["too few cameras"], srm_cameras_p=0.5, srm_frames_p=0.0001,
        srm_frames=True, arms=[epb.ArmResult(arm="control", cameras=20, frames=4000, metrics={"latency_ms": 41.5})],
        guardrails=[epb.GuardrailResult(metric="latency_ms", outcome="inconclusive", estimate=0.03, ci_low=-0.1,
                                        ci_high=0.2, p_value=0.4)])
    lines = experiment.reply_lines("results", _dict(results))
    assert lines[:2] == ["recommendation: hold", "  - too few cameras"]
    assert lines[3].split() == ["ARM", "CAMERAS", "FRAMES", "LATENCY_MS"] and lines[4].split() == [
        "control", "20", "4000", "41.5"]
    assert lines[7].split() == ["latency_ms", "inconclusive", "0.03", "-0.1", "0.2", "0.4"]
    assert "frames p=0.0001 MISMATCH" in lines[9] and "cameras p=0.5," in lines[9]

    assign = experiment.reply_lines("assign", _dict(epb.AssignReply(arms={"cam-2": "challenger", "cam-1": "control"})))
    assert [line.split() for line in assign] == [["CAMERA", "ARM"], ["cam-1", "control"], ["cam-2", "challenger"]]


def test_json_flag_prints_the_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert model.build_parser().parse_args(["--json", "list"]).json
    assert not model.build_parser().parse_args(["list"]).json
    assert experiment.build_parser().parse_args(["--json", "list"]).json
    emit({"b": 1, "a": [1]}, ["a table"], as_json=True)
    assert json.loads(capsys.readouterr().out) == {"a": [1], "b": 1}
    emit({"b": 1}, ["a table", "row"], as_json=False)
    assert capsys.readouterr().out == "a table\nrow\n"

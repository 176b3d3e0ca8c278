"""The Feast repository as objects and the stream's pieces that need no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from imask.features import repo
from imask.features.schema import SERVICES, VIEWS
from imask.features.stream import Parsed, PartitionClocks, _RecordDeserializer
from imask.ops.settings import ConfigError, FeaturesStreamSettings, load_settings
from imask.v1 import frames_pb2 as pb


def test_redis_urls_become_feast_connection_strings() -> None:
    assert repo.redis_connection_string("redis://127.0.0.1:6390/0") == "127.0.0.1:6390,db=0"
    assert repo.redis_connection_string("redis://:pw@redis.example:6379/3") == "redis.example:6379,db=3,password=pw"
    assert repo.redis_connection_string("rediss://r:6380") == "r:6380,db=0,ssl=true"
    with pytest.raises(ValueError):
        repo.redis_connection_string("http://r:6379")


def test_repository_objects(tmp_path: Path) -> None:
    objs = {type(o).__name__ + ":" + o.name: o for o in repo.objects(tmp_path)}
    for view in VIEWS:
        fv = objs[f"FeatureView:{view.name}"]
        assert [f.name for f in fv.features] == [f.name for f in view.features]
        assert list(fv.entities) == (["camera", "variant"] if view.by_variant else ["camera"])
        assert fv.ttl.total_seconds() == view.ttl_s
        assert f"PushSource:{view.push_source}" in objs
    for service, parts in SERVICES.items():
        projections = objs[f"FeatureService:{service}"].feature_view_projections
        assert [(p.name, [f.name for f in p.features]) for p in projections] == \
            [(view.name, list(names)) for view, names in parts]
    assert "Entity:camera" in objs and "Entity:variant" in objs


def test_offline_folders_take_one_file_per_push(tmp_path: Path) -> None:
    import pandas as pd
    import pyarrow.parquet as pq

    from imask.features.schema import VIEW_10S, feast_row
    from imask.features.store import utcnow
    from imask.features.windows import feature_row, new_accumulator

    repo.ensure_parquet(tmp_path)
    repo.ensure_parquet(tmp_path)  # idempotent
    for view in VIEWS:
        [empty] = repo.parquet_path(tmp_path, view).iterdir()
        assert pq.read_schema(empty).names == [*view.keys, "event_timestamp", "created",
                                               *(f.name for f in view.features)]
    rows = [feast_row(f"cam-{i}", 0, 10_000, feature_row(new_accumulator(), 10), utcnow()) for i in range(3)]
    repo.append_offline(tmp_path, VIEW_10S, rows, 10_000)
    repo.append_offline(tmp_path, VIEW_10S, rows[:1], 10_000)
    df = pd.read_parquet(repo.parquet_path(tmp_path, VIEW_10S))
    assert len(df) == 4 and sorted(df["camera_id"]) == ["cam-0", "cam-0", "cam-1", "cam-2"]
    assert not [p for p in repo.parquet_path(tmp_path, VIEW_10S).iterdir() if p.name.startswith(".")]


def test_records_that_do_not_parse_are_marked_not_raised() -> None:
    meta = _RecordDeserializer("m", "meta")
    assert meta(b"\xff\x00garbage", None).skip == "undecodable"
    assert meta(pb.FrameMeta(camera_id="c", end_of_stream=True).SerializeToString(), None).skip == "end_of_stream"
    parsed = meta(pb.FrameMeta(camera_id="c", capture_ts_us=5_000_000).SerializeToString(), None)
    assert parsed == Parsed("c", 5_000, parsed.obs) and parsed.obs is not None
    drop = _RecordDeserializer("d", "drop")
    assert drop(b"\xff\xff\xff", None).skip == "undecodable"
    assert drop(pb.DropRecord(camera_id="c", ts_us=7_000, reason=pb.DROP_REASON_OVERSIZE).SerializeToString(),
                None).obs == (1, 7, 4)
    assert _RecordDeserializer("t", "tick")(b"1234", None) == Parsed("", 1234, None)


def test_idle_partitions_get_their_clock_moved_on() -> None:
    clocks = PartitionClocks()
    clocks.seen(0, 50_000, now=100.0)
    clocks.seen(1, 70_000, now=104.0)
    clocks.seen(0, 40_000, now=101.0)  # an older record does not move a clock back
    assert clocks.idle(5.0, now=106.0) == {0: 55_000}
    assert clocks.idle(5.0, now=110.0) == {0: 59_000, 1: 76_000}
    assert clocks.idle(5.0, now=110.0, until_s=8.0) == {1: 76_000}  # partition 0's windows have all closed
    clocks.forget([1])  # revoked: its new owner ticks it
    assert clocks.idle(5.0, now=110.0) == {0: 59_000}


def test_a_close_commits_once_every_live_partition_has_closed_it() -> None:
    clocks = PartitionClocks()
    clocks.seen(0, 12_000, now=100.0)
    clocks.seen(1, 11_900, now=100.0)
    assert not clocks.all_past(12_000, live_s=5.0, now=100.1)  # partition 1 has not closed the window yet
    clocks.seen(1, 12_100, now=100.2)
    assert clocks.all_past(12_000, live_s=5.0, now=100.2)
    clocks.seen(2, 3_000, now=90.0)  # quiet for longer than live_s: its windows close by ticks, whenever
    assert clocks.all_past(12_000, live_s=5.0, now=100.2)
    assert PartitionClocks().all_past(12_000, live_s=5.0, now=100.0)  # only ticks closed it: nothing to wait for


def test_hop_must_be_a_multiple_of_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMASK_FEATURES_STREAM_HOP_S", "45")
    with pytest.raises(ConfigError, match="multiple"):
        load_settings(FeaturesStreamSettings)

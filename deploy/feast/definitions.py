"""The repository's objects for the `feast` command: entity `camera`, feature views camera_stats_10s and
camera_stats_60s with their push and parquet sources, feature services router, drift and operators. They are
defined once, in imask.features.repo; the parquet files live next to the registry in .stack/feast."""

from pathlib import Path

from imask.features.repo import ensure_parquet, objects

DATA_DIR = Path(__file__).resolve().parents[2] / ".stack" / "feast"
ensure_parquet(DATA_DIR)
for _obj in objects(DATA_DIR):
    globals()[_obj.name] = _obj

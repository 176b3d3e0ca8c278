"""Writing closed windows to Feast, and the one read function.

`FeatureReader(settings).read(cameras)` opens the store once and reads a FeatureService's features for N cameras in
one call; each camera's answer says how old its newest window is and whether that is fresh. A camera whose newest
window ended longer ago than `stale_after_s` is reported stale (its values are still returned, marked so): Feast
returns whatever Redis holds, however old, so freshness is judged here from `window_end_ms`, never assumed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imask.features.repo import FeastSettings, append_offline, repo_config
from imask.features.schema import JOIN_KEY, SERVICES, VIEWS, View

if TYPE_CHECKING:
    from feast import FeatureStore


def open_store(settings: FeastSettings) -> FeatureStore:
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings))


def push_rows(store: FeatureStore, data_dir: Path, view: View, rows: Sequence[dict[str, Any]]) -> None:
    """One push of every camera's row of one window close: online (Redis, through the view's push source), then
    offline (one parquet file in the view's folder, `append_offline`). Online, Feast skips a row whose event
    timestamp is not newer than the stored one, so pushing a window again is harmless there; offline it is a second
    row with a later `created` (readers keep the newest per camera and window)."""
    import pandas as pd
    from feast.data_source import PushMode

    if rows:
        store.push(view.push_source, pd.DataFrame(list(rows)), to=PushMode.ONLINE)
        append_offline(data_dir, view, list(rows), int(rows[0]["window_end_ms"]))


@dataclass(frozen=True)
class CameraFeatures:
    camera_id: str
    values: dict[str, dict[str, Any]]  # view name -> feature -> value (None where the view has no row)
    window_end_ms: int | None  # end of the newest window of any view read; None: no row at all
    age_s: float | None  # now - window_end_ms
    fresh: bool  # a row exists and age_s <= stale_after_s


class FeatureReader:
    """Reads one FeatureService (router, drift, operators) for many cameras; open once, read often."""

    def __init__(self, settings: FeastSettings, service: str = "operators", stale_after_s: float = 35.0,
                 store: FeatureStore | None = None) -> None:
        if service not in SERVICES:
            raise ValueError(f"no feature service {service!r}; there are {sorted(SERVICES)}")
        self.store = store or open_store(settings)
        self.service = self.store.get_feature_service(service)
        self.views = [view for view in VIEWS if any(view is v for v, _ in SERVICES[service])]
        self.stale_after_s = stale_after_s

    def read(self, cameras: Sequence[str], now: float | None = None) -> dict[str, CameraFeatures]:
        response = self.store.get_online_features(features=self.service,
                                                  entity_rows=[{JOIN_KEY: camera} for camera in cameras],
                                                  full_feature_names=True).to_dict()
        now = time.time() if now is None else now
        out = {}
        for i, camera in enumerate(cameras):
            values: dict[str, dict[str, Any]] = {view.name: {} for view in self.views}
            for column, column_values in response.items():
                view_name, sep, feature = column.partition("__")
                if sep and view_name in values:
                    values[view_name][feature] = column_values[i]
            ends = [v["window_end_ms"] for v in values.values() if v.get("window_end_ms") is not None]
            end = max(ends) if ends else None
            age = None if end is None else now - end / 1000
            out[camera] = CameraFeatures(camera, values, end, age, age is not None and age <= self.stale_after_s)
        return out


def utcnow() -> datetime:
    return datetime.now(UTC)

"""Writing closed windows to Feast, and reading them through Feast's SDK.

`FeatureReader(settings).read(cameras)` (Feast's `get_online_features`; the FeatureService reads the same values from
Feast's Redis layout with `redis_read.RedisFeatureReader`) opens the store once and reads a FeatureService's features
for N cameras in one call; each camera's answer says how old its newest window is and whether that is fresh. A camera
whose newest window ended longer ago than `stale_after_s` is reported stale (its values are still returned, marked
so): Feast returns whatever Redis holds, however old, so freshness is judged here from `window_end_ms`, never assumed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imask.features.repo import FeastSettings, append_offline, repo_config
from imask.features.schema import JOIN_KEY, SERVICES, VARIANT_KEY, View

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
    variant: str | None  # set for services keyed by camera and variant (router)
    values: dict[str, dict[str, Any]]  # view name -> feature -> value (None where the view has no row)
    window_end_ms: int | None  # end of the newest window of any view read; None: no row at all
    age_s: float | None  # now - window_end_ms
    fresh: bool  # a row exists and age_s <= stale_after_s


Key = str | tuple[str, str]  # a camera id, or (camera id, variant) for services keyed by both


def entity_pair(key: Key, by_variant: bool, service: str) -> tuple[str, str | None]:
    """A read key as (camera, variant or None); ValueError when it is not the kind the feature service is keyed by."""
    if isinstance(key, tuple) != by_variant:
        wanted = "(camera, variant) pairs" if by_variant else "camera ids"
        raise ValueError(f"{service!r} is read with {wanted}, got {key!r}")
    return key if isinstance(key, tuple) else (key, None)


def camera_features(camera: str, variant: str | None, values: dict[str, dict[str, Any]], now: float,
                    stale_after_s: float) -> CameraFeatures:
    """A camera's answer from its views' values: the newest window's end, its age, and whether that is fresh."""
    ends = [v["window_end_ms"] for v in values.values() if v.get("window_end_ms") is not None]
    end = max(ends) if ends else None
    age = None if end is None else now - end / 1000
    return CameraFeatures(camera, variant, values, end, age, age is not None and age <= stale_after_s)


class FeatureReader:
    """Reads one FeatureService (router, drift, operators) for many cameras; open once, read often.

    Services keyed by camera (drift, operators) take camera ids; the router's, keyed by camera and variant, takes
    (camera, variant) pairs. The answer is keyed as asked."""

    def __init__(self, settings: FeastSettings, service: str = "operators", stale_after_s: float = 35.0,
                 store: FeatureStore | None = None) -> None:
        if service not in SERVICES:
            raise ValueError(f"no feature service {service!r}; there are {sorted(SERVICES)}")
        self.store = store or open_store(settings)
        self.name = service
        self.service = self.store.get_feature_service(service)
        self.views = [view for view, _ in SERVICES[service]]
        self.by_variant = self.views[0].by_variant
        if any(view.by_variant != self.by_variant for view in self.views):
            raise ValueError(f"feature service {service!r} mixes views keyed by camera and by camera and variant")
        self.stale_after_s = stale_after_s

    def read(self, keys: Sequence[Key], now: float | None = None) -> dict[Key, CameraFeatures]:
        pairs = [self._pair(key) for key in keys]
        rows = [{JOIN_KEY: camera, VARIANT_KEY: variant} if self.by_variant else {JOIN_KEY: camera}
                for camera, variant in pairs]
        response = self.store.get_online_features(features=self.service, entity_rows=rows,
                                                  full_feature_names=True).to_dict()
        now = time.time() if now is None else now
        out: dict[Key, CameraFeatures] = {}
        for i, (key, (camera, variant)) in enumerate(zip(keys, pairs, strict=True)):
            values: dict[str, dict[str, Any]] = {view.name: {} for view in self.views}
            for column, column_values in response.items():
                view_name, sep, feature = column.partition("__")
                if sep and view_name in values:
                    values[view_name][feature] = column_values[i]
            out[key] = camera_features(camera, variant, values, now, self.stale_after_s)
        return out

    def _pair(self, key: Key) -> tuple[str, str | None]:
        return entity_pair(key, self.by_variant, self.name)


def utcnow() -> datetime:
    return datetime.now(UTC)

"""The Feast repository of camera statistics, as objects: entity `camera`, per view a parquet source (a folder, one
file per window close), a push source and a feature view, and one FeatureService per consumer (router, drift,
operators).

`deploy/feast/` holds the same repository for the `feast` command (feature_store.yaml for the local stack,
definitions.py importing `objects()`); services and tests build their `RepoConfig` here (`repo_config`), so a
test's store differs only by project name, registry and parquet folder. Redis keys carry the project name: a
project's rows never mix with another's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from imask.features.schema import (
    CREATED,
    ENTITY,
    EVENT_TIMESTAMP,
    JOIN_KEY,
    SERVICES,
    VARIANT_ENTITY,
    VARIANT_KEY,
    VIEWS,
    Kind,
    View,
)

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig

DEFAULT_PROJECT = "imask"
KEY_TTL_S = 86_400  # a camera's Redis hash expires a day after its last write (removed cameras go)


@dataclass(frozen=True)
class FeastSettings:
    """Where the repository's pieces live: project (Redis keys carry it), registry file, parquet folder, Redis."""

    project: str
    data_dir: Path  # registry.db and one parquet file per view
    redis_url: str
    registry_ttl_s: int = 5


def redis_connection_string(redis_url: str) -> str:
    """Feast's form of a redis:// URL: host:port,db=N[,password=...]."""
    url = urlparse(redis_url)
    if url.scheme not in ("redis", "rediss"):
        raise ValueError(f"expected a redis:// URL, got {redis_url!r}")
    parts = [f"{url.hostname or '127.0.0.1'}:{url.port or 6379}", f"db={(url.path or '/0').lstrip('/') or '0'}"]
    if url.password:
        parts.append(f"password={url.password}")
    if url.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def repo_config(settings: FeastSettings) -> RepoConfig:
    from feast import RepoConfig
    from feast.repo_config import RegistryConfig

    return RepoConfig(
        project=settings.project, provider="local", repo_path=settings.data_dir,
        registry=RegistryConfig(path=str(settings.data_dir / "registry.db"), cache_ttl_seconds=settings.registry_ttl_s),
        online_store={"type": "redis", "connection_string": redis_connection_string(settings.redis_url),
                      "key_ttl_seconds": KEY_TTL_S},
        offline_store={"type": "file"}, entity_key_serialization_version=3)


def parquet_path(data_dir: Path, view: View) -> Path:
    """A view's offline store: a folder of parquet files, one per window close (see `append_offline`)."""
    return data_dir / view.name


def _feast_type(kind: Kind) -> Any:
    from feast.types import Array, Float64, Int64, String

    return {"int": Int64, "float": Float64, "str": String, "int_list": Array(Int64)}[kind]


def _arrow_type(kind: Kind) -> Any:
    import pyarrow as pa

    return {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "int_list": pa.list_(pa.int64())}[kind]


def arrow_schema(view: View) -> Any:
    """Columns of a view's parquet files, in the order pushed rows have (schema.feast_row)."""
    import pyarrow as pa

    return pa.schema([*((key, pa.string()) for key in view.keys), (EVENT_TIMESTAMP, pa.timestamp("us", tz="UTC")),
                      (CREATED, pa.timestamp("us", tz="UTC")), *((f.name, _arrow_type(f.kind)) for f in view.features)])


def objects(data_dir: Path) -> list[Any]:
    """Every Feast object of the repository; the file sources point into data_dir."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource
    from feast.value_type import ValueType

    camera = Entity(name=ENTITY, join_keys=[JOIN_KEY], value_type=ValueType.STRING,
                    description="A camera (frames.raw key)")
    variant = Entity(name=VARIANT_ENTITY, join_keys=[VARIANT_KEY], value_type=ValueType.STRING,
                     description="A model variant or registered version (FrameMeta.variant)")
    out: list[Any] = [camera, variant]
    views: dict[str, Any] = {}
    for view in VIEWS:
        batch = FileSource(name=f"{view.name}_file", path=str(parquet_path(data_dir, view)),
                           timestamp_field=EVENT_TIMESTAMP, created_timestamp_column=CREATED)
        push = PushSource(name=view.push_source, batch_source=batch)
        whose = "camera and variant" if view.by_variant else "camera"
        fv = FeatureView(name=view.name, entities=[camera, variant] if view.by_variant else [camera],
                         ttl=timedelta(seconds=view.ttl_s), source=push, online=True,
                         schema=[Field(name=f.name, dtype=_feast_type(f.kind), description=f.doc)
                                 for f in view.features],
                         description=f"per-{whose} statistics of frames.meta and frames.dlq, {view.size_s} s windows "
                         f"every {view.step_s} s (event time)")
        views[view.name] = fv
        out += [batch, push, fv]
    for service, parts in SERVICES.items():
        out.append(FeatureService(name=service, features=[views[view.name][list(names)] for view, names in parts]))
    return out


def ensure_parquet(data_dir: Path) -> None:
    """Each view's parquet folder, holding at least an empty file with the columns (readers need one)."""
    import pyarrow.parquet as pq

    for view in VIEWS:
        folder = parquet_path(data_dir, view)
        folder.mkdir(parents=True, exist_ok=True)
        empty = folder / "part-0000000000000-schema.parquet"
        if not empty.exists():
            pq.write_table(arrow_schema(view).empty_table(), empty)


def append_offline(data_dir: Path, view: View, rows: list[dict[str, Any]], end_ms: int) -> Path:
    """The offline half of a push: the rows as one new parquet file in the view's folder (written under a hidden
    name, then renamed, so a reader never sees half a file). Feast's own file offline store rewrites its whole
    file on every push (O(history): 0.2 s a push at 100,000 rows, growing all day); a file per push costs only
    its rows, and Feast reads the folder as one source."""
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = parquet_path(data_dir, view)
    name = f"part-{end_ms:013d}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{name}"
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema(view)), tmp)
    tmp.rename(folder / name)
    return folder / name


def apply(settings: FeastSettings) -> FeatureStore:
    """`feast apply` of the repository under these settings (idempotent); returns the store."""
    from feast import FeatureStore

    ensure_parquet(settings.data_dir)
    store = FeatureStore(config=repo_config(settings))
    store.apply(objects(settings.data_dir))
    return store


def teardown(settings: FeastSettings) -> None:
    """`feast teardown`: the project's Redis keys and registry go (a test's store leaves no trace)."""
    from feast import FeatureStore

    FeatureStore(config=repo_config(settings)).teardown()  # type: ignore[no-untyped-call]

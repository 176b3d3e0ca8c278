"""The local stack's Feast repository: `imask stack up` applies it (project `imask`) against the stack's Redis,
with the registry and the offline parquet files in `<state_dir>/feast` (deploy/feast/feature_store.yaml says the
same for the `feast` command). Not a server: Feast's pieces are the stack's Redis and files."""

from __future__ import annotations

import logging
import time

from imask.devstack.settings import StackSettings
from imask.features.repo import DEFAULT_PROJECT, FeastSettings, apply

logger = logging.getLogger(__name__)


def feast_settings(s: StackSettings, project: str = DEFAULT_PROJECT) -> FeastSettings:
    return FeastSettings(project=project, data_dir=s.state_dir / "feast", redis_url=s.redis_url)


def apply_repo(s: StackSettings) -> FeastSettings:
    """`feast apply` of the features repository (idempotent)."""
    settings = feast_settings(s)
    t0 = time.monotonic()
    apply(settings)
    logger.info("feast repository applied: project %s, registry %s, online store %s (%.1f s)", settings.project,
                settings.data_dir / "registry.db", settings.redis_url, time.monotonic() - t0)
    return settings

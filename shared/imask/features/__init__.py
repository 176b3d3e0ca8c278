"""Per-camera rolling statistics from frames.meta and frames.dlq, kept in Feast (Redis online, parquet offline).

- `windows.py`: the window arithmetic, pure: what a record contributes (`observe_meta`, `observe_drop`), the
  mergeable accumulator of a window, fixed histogram bins, percentiles, window bounds, lateness, clamping of
  future timestamps, and a closed window's feature row.
- `schema.py`: the feature names and types, one list shared by the Feast definitions and the rows.
- `repo.py`: the Feast repository as objects (entity, push sources, feature views, feature services) and `apply`.
- `store.py`: pushing closed windows, and the one read function (`FeatureReader`).
- `stream.py`: the Quix Streams application the `features-stream` service runs.
"""

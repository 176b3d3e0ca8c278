"""The frame contract every service shares: envelopes and their checks, camera ids, the per-frame metadata
record and the clock their timestamps use. Producers, the ingest, workers, mask-api and the readers of frames.meta
all build and read frames through this package only."""

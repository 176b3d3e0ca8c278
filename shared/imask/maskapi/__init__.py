"""Synchronous masking over gRPC (mask-api): auth, rate limits, batching executor, servicer and client."""

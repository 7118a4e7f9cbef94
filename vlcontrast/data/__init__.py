"""Shards -> samples -> batches: read tar shards, decode, transform, tokenise, batch."""

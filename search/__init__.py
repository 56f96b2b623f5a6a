"""Architectures under a latency budget: spaces, latency tables, strategies."""

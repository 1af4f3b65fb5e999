"""Benchmarks of aiomempool against the standard library's asyncio primitives."""

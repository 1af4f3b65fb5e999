"""Benchmarks of aiomempool against a bare list, bytearray(n), the pools users
write with asyncio, and pool libraries from PyPI: ``python -m benchmarks``."""

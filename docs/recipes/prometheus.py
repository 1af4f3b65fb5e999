"""Exporting every named pool's counters to Prometheus.

Register one ``MempoolCollector`` and every scrape reads the pools'
``stats()``. A real service registers it on prometheus-client's default
registry and serves it (``start_http_server(9100)``); here one scrape is
printed.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

from aiomempool import buffer_pool
from aiomempool.metrics import MempoolCollector


async def main() -> None:
    rx = buffer_pool(16384, min_nr=4, max_nr=64, name="rx")
    tx = buffer_pool(16384, min_nr=2, max_nr=16, name="tx")
    registry = CollectorRegistry()  # or prometheus_client.REGISTRY
    registry.register(MempoolCollector())  # every live named pool

    async with rx.element() as buf, tx.element():
        buf[:4] = b"ping"
    held = rx.alloc_nowait()

    scrape = generate_latest(registry).decode()
    for line in scrape.splitlines():
        if line.startswith(("aiomempool_allocs", "aiomempool_outstanding")):
            print(line)
    assert 'aiomempool_outstanding{pool="rx"} 1.0' in scrape
    rx.free(held)


if __name__ == "__main__":
    asyncio.run(main())

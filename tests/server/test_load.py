"""64 concurrent streaming clients on loopback (bounded count and time): every full stream completes
with its usage; clients that hang up mid-stream free their slots (queue and running back to 0)."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx

from tests.server.conftest import API_KEY, MODEL, rss_bytes, server_pid

CLIENTS, HANG_UP_EVERY = 64, 4


async def one(client: httpx.AsyncClient, i: int) -> dict | None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Tell me about the number {i}."}],
            "max_tokens": 8, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        usage = None
        async for line in response.aiter_lines():
            if i % HANG_UP_EVERY == 0:
                return None  # hang up after the first event
            if line.startswith("data: {") and '"usage"' in line:
                usage = json.loads(line[6:])["usage"]
        return usage


def test_64_concurrent_streams_and_hang_ups(server):
    """And the server's resident memory after the run is within 5% of before (after one warm-up round)."""

    async def run() -> list:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=server, headers=headers, timeout=300) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(CLIENTS))), 600)

    asyncio.run(run())  # warm-up round: allocator pools, graphs of each batch size, thread pool
    memory_before = rss_bytes(server_pid[server])
    started = time.perf_counter()
    results = asyncio.run(run())
    print(f"second round {time.perf_counter() - started:.1f} s")
    finished = [r for i, r in enumerate(results) if i % HANG_UP_EVERY]
    assert len(finished) == CLIENTS - CLIENTS // HANG_UP_EVERY
    assert all(u and 1 <= u["completion_tokens"] <= 8 and u["prompt_tokens"] > 0 for u in finished)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # hung-up requests are dropped at the scheduler's next step
        page = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
        depth = float(re.search(r"^fusionrag_queue_depth (\S+)", page, re.M).group(1))
        running = float(re.search(r"^fusionrag_running_requests (\S+)", page, re.M).group(1))
        if depth == 0 and running == 0:
            break
        time.sleep(0.5)
    assert depth == 0 and running == 0
    assert 'fusionrag_requests_total{outcome="cancelled"}' in page
    memory_after = rss_bytes(server_pid[server])
    print(f"64 streams, {len(finished)} complete, RSS {memory_before / 2**20:.0f} -> {memory_after / 2**20:.0f} MiB")
    assert memory_after <= 1.05 * memory_before, (memory_before, memory_after)

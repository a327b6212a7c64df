"""Async calls and streams run on the adapters' own thread pool: more of them than the event loop's
default executor has threads (min(32, CPUs + 4)) run at once, so they can join one batch."""

from __future__ import annotations

import asyncio
import threading

from fusionrag_integrations.threads import iterate_in_thread, run_in_thread

TOGETHER = 40  # past the default executor's cap on any machine


def test_forty_blocking_calls_and_streams_run_at_once():
    calls, streams = threading.Barrier(TOGETHER, timeout=20), threading.Barrier(TOGETHER, timeout=20)

    def call() -> int:
        return calls.wait()  # every call must be running for any to pass

    def stream():
        yield streams.wait()
        yield -1

    async def main():
        done = await asyncio.gather(*(run_in_thread(call) for _ in range(TOGETHER)))

        async def drain():
            return [item async for item in iterate_in_thread(stream())]

        return done, await asyncio.gather(*(drain() for _ in range(TOGETHER)))

    done, drained = asyncio.run(main())
    assert sorted(done) == list(range(TOGETHER))
    assert all(items[-1] == -1 for items in drained) and sorted(i[0] for i in drained) == list(range(TOGETHER))

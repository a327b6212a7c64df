"""Blocking engine calls driven from event loops (the server's routes, the adapters' async methods): a
thread pool sized for waiting, and a blocking stream handed to the loop item by item. Below the API
layer, so the server and the adapters share it without one importing the other."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# An async call's worker thread mostly waits for the scheduler's next token. The event loop's default
# executor has min(32, CPUs + 4) threads (6 on a 2-core machine): more concurrent `ainvoke`s or
# streams than that would queue for a thread instead of joining the running batch.
ASYNC_CALL_THREADS = ThreadPoolExecutor(max_workers=512, thread_name_prefix="fusionrag-async")


async def run_in_thread(fn: Callable[[], T]) -> T:
    """asyncio.to_thread on our own pool (context variables carried, as to_thread does)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(ASYNC_CALL_THREADS, contextvars.copy_context().run, fn)


async def iterate_in_thread(source: Iterator[T]) -> AsyncGenerator[T, None]:
    """Drive a blocking iterator (the engine's stream) in a worker thread and hand its items to the
    event loop as they come, so async frameworks never block their loop on generation."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    done, stop = object(), threading.Event()

    def produce() -> None:
        try:
            for item in source:
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, item)
            loop.call_soon_threadsafe(queue.put_nowait, done)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            loop.call_soon_threadsafe(queue.put_nowait, exc)

    worker = loop.run_in_executor(
        ASYNC_CALL_THREADS, contextvars.copy_context().run, produce
    )  # the caller's context vars
    try:
        while (item := await queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        await worker

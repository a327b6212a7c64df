"""What every generation route does with the engine: open a request's choices (n per prompt), collect
them while watching the client, cancel them when it goes away or one of them fails. Engine calls that may
wait for the scheduler's lock run on worker threads, never on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from ..engine import FusionEngine
from ..outputs import GenerationChunk
from ..threads import ASYNC_CALL_THREADS, iterate_in_thread
from .errors import APIError
from .metrics import Metrics


def request_salt(request: Request, salt: str | None) -> str | None:
    """The cache space of a request: its API key's (with several keys) and its own cache_salt."""
    space = getattr(request.state, "key_space", "")
    return f"{space}|{salt or ''}" if space or salt else None


def in_thread(fn):
    """Run an engine call on a worker thread (it may wait for the scheduler's lock)."""
    return asyncio.get_running_loop().run_in_executor(ASYNC_CALL_THREADS, fn)


def close_soon(source: Iterator) -> None:
    """Cancel a request without waiting (safe inside a cancelled task: nothing is awaited)."""
    close = getattr(source, "close", None)
    if close is not None:
        ASYNC_CALL_THREADS.submit(close)


class EngineCalls:
    def __init__(self, engine: FusionEngine, model_name: str, metrics: Metrics) -> None:
        self.engine, self.model_name, self.metrics = engine, model_name, metrics

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            message = f"the model {name!r} does not exist; this server serves {self.model_name!r}"
            raise APIError(404, message, "model_not_found", "model")

    def token_text(self, token: int) -> str:
        return self.engine.tokenizer.decode([token])

    async def open_choices(self, prompts: list, settings: dict[str, Any], n: int) -> list[Iterator[GenerationChunk]]:
        """n answers' streams per prompt (engine.stream_choices: one prefill for a prompt's n), in order,
        each observed by the metrics. A prompt the engine refuses closes the streams opened before it."""
        opened: list[Iterator[GenerationChunk]] = []
        try:
            for prompt in prompts:
                streams = await in_thread(lambda p=prompt: self.engine.stream_choices(p, n, **settings))
                opened += [self.metrics.observe(s) for s in streams]
        except BaseException:
            for source in opened:
                close_soon(source)
            raise
        return opened

    async def complete_all(self, request: Request, prompts: list, settings: dict[str, Any], n: int) -> list[tuple]:
        """Every choice's (text, last piece, logprobs or None), in order."""
        sources = await self.open_choices(prompts, settings, n)
        tasks = [asyncio.ensure_future(complete(request, s, settings)) for s in sources]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:  # one choice failed (or the client left): the others stop at the next step
            for task in tasks:
                task.cancel()
            raise


async def complete(request: Request, source, settings: dict[str, Any]) -> tuple[str, GenerationChunk, list | None]:
    collect = asyncio.ensure_future(_collect(source))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not collect.done():  # the client went away (or this task was cancelled): free its slot
            close_soon(source)
        gone.cancel()
    if not collect.done():
        collect.cancel()
        raise ClientDisconnect()
    pieces = collect.result()
    logprobs = [lp for p in pieces for lp in p.logprobs] if settings.get("logprobs") is not None else None
    return "".join(p.text for p in pieces), pieces[-1], logprobs


async def _collect(source: Iterator[GenerationChunk]) -> list[GenerationChunk]:
    return [piece async for piece in iterate_in_thread(source)]


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (its body was read already: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass

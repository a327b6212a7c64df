"""Server-sent events for a streamed request of several choices (n per prompt, and a completions request
may hold several prompts): each choice is an engine stream of its own (sampled with seed + j for a
prompt's choice j), their pieces interleaved as they come, each chunk naming its choice's index, as
OpenAI streams them. The first piece of every choice is awaited before the response starts, so a bad
request still gets its status code; after that an error is an event. With include_usage the last event
counts each prompt once and the completions summed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

import anyio

from ..outputs import GenerationChunk
from ..threads import iterate_in_thread
from . import errors
from .errors import as_api_error
from .openai_format import ResponseIds, stats_json, stream_chunk, summed_usage, usage_json
from .tool_stream import ToolCallStream, tool_stream_chunks

_END = object()


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class ChoiceStreams:
    """The n engine streams of one request, opened; `events()` is the response body."""

    def __init__(
        self, sources: list[Iterator[GenerationChunk]], close: Callable[[Iterator], None], per_prompt: int
    ) -> None:
        """sources: the choices in order, `per_prompt` consecutive ones answering one prompt."""
        self.sources, self.close, self.per_prompt = sources, close, per_prompt
        self.pieces: list[AsyncGenerator[GenerationChunk, None]] = [iterate_in_thread(s) for s in sources]
        self.firsts: list[GenerationChunk] = []

    async def start(self) -> None:
        """Every choice's first piece (its errors are the request's status)."""
        try:
            self.firsts = [await anext(p) for p in self.pieces]
        except Exception as exc:  # noqa: BLE001 - mapped to its status
            await self.shut()
            raise as_api_error(exc) from None

    async def shut(self) -> None:
        for source in self.sources:
            self.close(source)  # a client that went away frees its slots at the next step
        with anyio.CancelScope(shield=True):
            for pieces in self.pieces:
                await pieces.aclose()

    async def events(
        self, ids: ResponseIds, include_usage: bool, decode: Callable[[int], str] | None, tools: set[str] | None
    ) -> AsyncIterator[str]:
        calls = [ToolCallStream(tools) if tools else None for _ in self.sources]
        lasts, offsets = list(self.firsts), [len(f.text) for f in self.firsts]
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        pumps = [asyncio.ensure_future(_pump(i, p, queue)) for i, p in enumerate(self.pieces)]
        try:
            for i, first in enumerate(self.firsts):
                for chunk in _chunks(ids, first, True, decode, 0, calls[i], i):
                    yield sse(chunk)
            running = len(pumps)
            while running:
                i, piece = await queue.get()
                if piece is _END:
                    running -= 1
                    continue
                if isinstance(piece, BaseException):
                    raise piece
                lasts[i] = piece
                for chunk in _chunks(ids, piece, False, decode, offsets[i], calls[i], i):
                    yield sse(chunk)
                offsets[i] += len(piece.text)
            if include_usage and all(last.usage is not None for last in lasts):
                usage = summed_usage([usage_json(last.usage) for last in lasts], self.per_prompt)
                yield sse({**stream_chunk(ids, None), "usage": usage, "fusionrag": stats_json(lasts[0].stats)})
            yield "data: [DONE]\n\n"
        except Exception as exc:  # noqa: BLE001 - mid-stream: the status line is gone, the error is an event
            err = as_api_error(exc)
            yield sse(errors.error_body(err.status, err.message, err.code))
            yield "data: [DONE]\n\n"
        finally:
            for pump in pumps:
                pump.cancel()
            with anyio.CancelScope(shield=True):  # the pumps let go of their streams before those close
                await asyncio.gather(*pumps, return_exceptions=True)
            await self.shut()


async def _pump(index: int, pieces: AsyncIterator[GenerationChunk], queue: asyncio.Queue) -> None:
    try:
        async for piece in pieces:
            await queue.put((index, piece))
    except Exception as exc:  # noqa: BLE001 - handed to the event loop above
        await queue.put((index, exc))
    await queue.put((index, _END))


def _chunks(ids, piece: GenerationChunk, first: bool, decode, offset: int, calls: ToolCallStream | None, index: int):
    base = stream_chunk(ids, piece, first=first, decode=decode, offset=offset)
    chunks = (
        [base] if calls is None else tool_stream_chunks(base, piece.text, piece.finish_reason is not None, first, calls)
    )
    for chunk in chunks:
        chunk["choices"][0]["index"] = index
    return chunks

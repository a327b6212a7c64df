"""Streams hold no lock while their reader is away: any thread may advance them, others keep going.

Before the fix, `stream()` yielded inside the engine's RLock: a stream advanced from a second
thread raised "cannot release un-acquired lock" and left the lock held for ever, and a
half-read stream blocked every other caller.
"""

from __future__ import annotations

import asyncio
import threading

from tests.conftest import DOCS, rag_messages

PROMPTS = ["Once upon a time", "The capital of France is", "List three colours:"]


def in_thread(fn, timeout: float = 120.0):
    """Run fn in a thread; return its result or raise its error; fail (not hang) past the timeout."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised below
            box["error"] = err

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "blocked: the engine lock was never released"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_a_stream_continued_on_another_thread(smol):
    expected = smol.generate(PROMPTS[0], max_new_tokens=10)
    stream = smol.stream(PROMPTS[0], max_new_tokens=10)
    first = next(stream)
    rest = in_thread(lambda: list(stream))
    assert first.text + "".join(p.text for p in rest) == expected.text
    assert in_thread(lambda: smol.generate(PROMPTS[1], max_new_tokens=4)).finish_reason


def test_a_half_read_stream_does_not_block_other_callers(smol):
    stream = smol.stream(PROMPTS[0], max_new_tokens=30)
    next(stream)  # the reader walks away with the stream open
    out = in_thread(lambda: smol.generate(PROMPTS[1], max_new_tokens=4), timeout=60)
    assert out.usage.completion_tokens >= 1
    stream.close()
    assert smol.generate(PROMPTS[2], max_new_tokens=2).token_ids


async def test_streams_driven_by_run_in_executor_match_sequential(smol):
    """The usual async pattern: each piece fetched with run_in_executor(None, next, stream). Several
    such streams at once interleave step by step and give the same greedy tokens as one at a time."""
    smol.precompute(DOCS)
    prompts = [*PROMPTS, rag_messages(DOCS)]
    expected = [smol.generate(p, max_new_tokens=12).token_ids for p in prompts]
    loop = asyncio.get_running_loop()

    async def drain(prompt) -> list[int]:
        stream, ids, done = smol.stream(prompt, max_new_tokens=12), [], object()
        while (piece := await loop.run_in_executor(None, next, stream, done)) is not done:
            ids += piece.token_ids
        return ids

    got = await asyncio.wait_for(asyncio.gather(*(drain(p) for p in prompts)), timeout=300)
    assert got == expected


def test_one_stream_read_by_two_threads_at_once_loses_no_piece(smol):
    expected = smol.generate(PROMPTS[1], max_new_tokens=16).token_ids
    stream, pieces, lock = smol.stream(PROMPTS[1], max_new_tokens=16), [], threading.Lock()

    def reader() -> None:
        for piece in stream:
            with lock:
                pieces.append(piece)

    workers = [threading.Thread(target=reader) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not any(w.is_alive() for w in workers)
    assert sorted(t for p in pieces for t in p.token_ids) == sorted(expected)
    assert sum(p.finish_reason is not None for p in pieces) == 1

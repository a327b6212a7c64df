"""A request inside the engine, as data: what was asked (`Request`: the prompt, how to sample, how to
fuse, its statistics), where it is in its life and what it holds (`SeqState`).

WAITING (submitted; its prompt prepared on the caller's thread) -> READY (laid out: its chunks'
entries found, the tokens it needs known) -> PREFILL (admitted: its cache allocated and its prefill
started, computed a slice per step) -> DECODE (one token per step) -> finished. The scheduler moves
requests between these phases; the executor does the work each phase needs; neither calls the other.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError
from ..outputs import GenerationChunk, GenerationStats
from ..request import FUSION_FIELDS, SAMPLING_FIELDS, FusionParams, SamplingParams

if TYPE_CHECKING:
    from ..fidelity.shadow import ShadowCapture
    from ..fusion.layout import Draft, Layout
    from ..fusion.prompt import Prompt
    from .decode import DecodeState
    from .prefill_task import PrefillTask


@dataclass
class Request:
    """One call's request, created once and passed through every step (the settings objects validated
    on construction, so a bad argument fails before any compute)."""

    prompt: Prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    fusion: FusionParams = field(default_factory=FusionParams)
    tools: Sequence[dict] | None = None
    stats: GenerationStats = field(default_factory=GenerationStats)
    draft: Draft | None = None  # the prompt prepared on the caller's thread (fusion/layout.py)
    layout: Layout | None = None  # set by the layout step (fusion/layout.py)
    shadow: ShadowCapture | None = None  # sampled for a fidelity shadow (fidelity/shadow.py)
    t_start: float = field(default_factory=time.perf_counter)

    @classmethod
    def build(
        cls,
        prompt: Prompt,
        sampling: SamplingParams | None = None,
        fusion: FusionParams | None = None,
        tools: Sequence[dict] | None = None,
        **fields: Any,
    ) -> Request:
        """From settings objects and/or their fields as keyword arguments (the public `stream` API)."""
        unknown = set(fields) - set(SAMPLING_FIELDS) - set(FUSION_FIELDS)
        if unknown:
            raise InvalidArgumentError(f"unexpected argument(s): {', '.join(sorted(unknown))}")
        sampling_fields = {k: v for k, v in fields.items() if k in SAMPLING_FIELDS}
        fusion_fields = {k: v for k, v in fields.items() if k in FUSION_FIELDS}
        sampling = replace(sampling or SamplingParams(), **sampling_fields)  # validated again
        fusion = replace(fusion or FusionParams(), **fusion_fields)
        return cls(prompt, sampling, fusion, tools)

    def choice(self, index: int) -> Request:
        """The index-th of n answers to this request (one prefill serves them all): the same prompt and
        fusion, its own stats, its sampling with a given seed moved by index (n different samples,
        reproducible as a whole, as vLLM seeds n > 1)."""
        seed = self.sampling.seed
        if index and seed is not None:
            seed = (seed + index + (1 << 63)) % (1 << 64) - (1 << 63)
        return Request(self.prompt, replace(self.sampling, seed=seed), self.fusion, self.tools, t_start=self.t_start)


DONE = object()  # the end of a stream's pieces


class Phase(Enum):
    WAITING = "waiting"
    READY = "ready"
    PREFILL = "prefill"
    DECODE = "decode"
    FINISHED = "finished"


@dataclass(eq=False)
class SeqState:
    request: Request
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    phase: Phase = Phase.WAITING
    layout: Layout | None = None
    kv_tokens: int = 0  # KV positions it holds while it runs (prompt + max_new_tokens)
    prefill_tokens: int = 0  # positions its prefill computes (fresh + the recomputed share of chunk tokens)
    prefill_task: PrefillTask | None = None  # its prefill in progress (PREFILL phase)
    decode_state: DecodeState | None = None  # its sampler and stream (DECODE phase)
    cancelled: bool = False
    forks: list[SeqState] = field(default_factory=list)  # more answers to this prompt: they decode from a
    # copy of this one's cache once its prefill is done (n > 1 shares one prefill)

    @property
    def laid_out(self) -> Layout:
        """The prompt's layout (a request holds one from READY until its prefill ends)."""
        assert self.layout is not None, "not laid out"
        return self.layout

    @property
    def prefilling(self) -> PrefillTask:
        """The prefill in progress (a request in its PREFILL phase holds one)."""
        assert self.prefill_task is not None, "no prefill in progress"
        return self.prefill_task

    @property
    def decoding(self) -> DecodeState:
        """The decode state (a request in its DECODE phase holds one)."""
        assert self.decode_state is not None, "not decoding"
        return self.decode_state

    def deliver(self, pieces: list[GenerationChunk]) -> None:
        for piece in pieces:
            self.out.put(piece)
        if self.decode_state is not None and self.decode_state.done:
            self.phase = Phase.FINISHED
            self.out.put(DONE)

    def fail(self, error: BaseException) -> None:
        self.phase = Phase.FINISHED
        self.out.put(error)
        for fork in self.forks:  # the prefill they wait for will not come
            fork.fail(error)
        self.forks = []

    def hand_over(self) -> SeqState | None:
        """This one was cancelled: its first live fork takes its place (the prompt prepared or laid out, the
        prefill started) and the other forks; None when every fork was cancelled too."""
        live = [f for f in self.forks if not f.cancelled]
        if not live:
            return None
        heir, self.forks = live[0], []
        heir.phase, heir.layout, heir.prefill_task, heir.forks = self.phase, self.layout, self.prefill_task, live[1:]
        heir.kv_tokens, heir.prefill_tokens = self.kv_tokens, self.prefill_tokens
        heir.request.draft, heir.request.shadow = self.request.draft, None
        return heir


class SequenceStream(Iterator[GenerationChunk]):
    """What a caller iterates: pieces as the loop produces them; close() cancels at the next step."""

    def __init__(self, seq: SeqState, wake: Callable[[], None]) -> None:
        self.seq, self._wake = seq, wake

    def __iter__(self) -> SequenceStream:
        return self

    def __next__(self) -> GenerationChunk:
        item = self.seq.out.get()
        if item is DONE:
            self.seq.out.put(DONE)  # later next() calls stop too
            raise StopIteration
        if isinstance(item, BaseException):
            self.seq.out.put(DONE)
            raise item
        return item

    def close(self) -> None:
        self.seq.cancelled = True
        self.seq.out.put(DONE)  # a reader blocked in next() (another thread) returns now
        self._wake()

    def __del__(self) -> None:
        self.seq.cancelled = True

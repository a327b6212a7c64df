"""What one step does (the scheduler's output) and what came of it (the executor's), as plain data:
vLLM v1's scheduler output, in our terms."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..outputs import GenerationChunk
from .chores import Chore
from .state import SeqState


@dataclass
class StepPlan:
    lay_out: list[SeqState] = field(default_factory=list)  # WAITING -> READY: find entries, compute missing ones
    admit: list[SeqState] = field(default_factory=list)  # READY -> PREFILL: allocate the cache, start the prefill
    prefill: list[tuple[SeqState, int]] = field(default_factory=list)  # prefill slices: (request, tokens)
    decode: list[SeqState] = field(default_factory=list)  # one token each, in one batched forward
    chore: Chore | None = None  # one step of bulk work (an ingest batch)
    spare_tokens: int = 0  # positions of background work (fidelity shadows): only when no request waits

    @property
    def empty(self) -> bool:
        return not (self.lay_out or self.admit or self.prefill or self.decode or self.chore)


@dataclass
class StepOutcome:
    pieces: dict[int, list[GenerationChunk]] = field(default_factory=dict)  # id(seq) -> pieces it produced
    failed: list[tuple[SeqState, BaseException]] = field(default_factory=list)  # its own error: it alone fails
    requeue: list[SeqState] = field(default_factory=list)  # out of device memory while others run: wait
    prefill_tokens: int = 0  # positions prefilled this step, and the seconds they took (the budget policy's
    prefill_s: float = 0.0  # measurements)
    decode_rows: int = 0
    decode_s: float = 0.0
    mixed: bool = False  # slices and decode rows ran in one forward: prefill_s == decode_s == its time
    background: int = 0  # background work still pending after this step (fidelity shadows)

"""A mixed step: a step's prefill slices (of one or several requests) and its decode rows in one forward.

Run apart, each slice and the decode batch read every weight of the model once; packed, the weights
are read once for all of them and the GEMMs get more rows (model/packed.py keeps attention apart per
request). Decode rows no longer wait for a separate prefill forward, and several requests' fused
recomputes share one pass. The decode rows run eagerly here (their CUDA graph has fixed shapes); a
step without prefill work keeps the graphed decode step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.attention import BatchDecodeAttention
from ..model.forward import run_layers
from ..model.packed import PackedAttention, Part
from ..model.transformer import TransformerModel
from .decode import DecodeState
from .prefill_task import PrefillTask


@dataclass
class PackedResult:
    first_logits: list[torch.Tensor | None]  # per slice: its request's last-token logits [1, V] when it finished
    decode_logits: torch.Tensor | None  # [B, V], row i for states[i]


@torch.inference_mode()
def packed_step(
    model: TransformerModel, slices: list[tuple[PrefillTask, int]], states: list[DecodeState], backend: str
) -> PackedResult:
    """Run `tokens` more positions of each task and the next token of each decoding state in one forward.
    Every task must be sliceable. Nothing changes before the forward has run: on an error the caller
    may run the parts apart (the K/V rows a failed pass wrote are written again, the same)."""
    pieces = [task.next_slice(tokens) for task, tokens in slices]
    parts = [Part(p.attention, int(p.positions.shape[0])) for p in pieces]
    ids, positions = [p.ids for p in pieces], [p.positions for p in pieces]
    if states:
        places = [s.position for s in states]
        decode = BatchDecodeAttention([s.pre.cache for s in states], places, backend)
        parts.append(Part(decode, len(states), every_output=True))
        ids.append(torch.tensor([s.token for s in states], device=model.device))
        positions.append(torch.tensor(places, device=model.device))
    attention = PackedAttention(parts, model.device)
    h, _ = run_layers(model, torch.cat(ids), torch.cat(positions), attention, last_row_only=True)
    outputs = attention.split(h)
    first = [task.finish_slice(piece, out) for (task, _), piece, out in zip(slices, pieces, outputs)]
    return PackedResult(first, model.logits(outputs[-1]) if states else None)

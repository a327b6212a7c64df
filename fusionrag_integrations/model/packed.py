"""Several passes packed into one forward: the rows of a step's prefill slices and its decode rows run
through one layer loop, so the weights are read once for all of them and the GEMMs see every row.

Everything in a layer but attention works row by row (norms, projections, rotary, MLP), so packing
changes nothing there; attention is the one place rows of different requests must not meet. Each
part keeps its own attention over its own cache (a prefill slice: `CacheAttention`; decode rows:
`BatchDecodeAttention`), and this class hands each part its rows: the same computation as running the
parts one after another, with one weight read instead of one per part (Sarathi-Serve's mixed batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from .forward import Attention, OutputRows


@dataclass
class Part:
    """One pass in the pack: its attention, its row count, and whether the caller reads every row's
    output (decode rows) or only the last one's (a prefill slice: its logits, when it is the final one)."""

    attention: Attention  # an OutputRows unless every_output
    rows: int
    every_output: bool = False


class PackedAttention:
    def __init__(self, parts: list[Part], device: torch.device) -> None:
        if not parts:
            raise ValueError("a packed forward needs at least one part")
        self.parts = parts
        self.backend = parts[0].attention.backend
        starts = [0]
        for part in parts:
            starts.append(starts[-1] + part.rows)
        self.slices = [slice(a, b) for a, b in zip(starts, starts[1:])]
        outputs: list[int] = []
        for part, rows in zip(parts, self.slices):
            outputs += list(range(rows.start, rows.stop)) if part.every_output else [rows.stop - 1]
        self.output_rows = torch.tensor(outputs, dtype=torch.long, device=device)
        self.output_counts = [p.rows if p.every_output else 1 for p in parts]
        self._fresh: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self._fresh = (positions, k, v)  # the output rows' attention (attend_last) needs its parts' rows
        for part, rows in zip(self.parts, self.slices):
            part.attention.write(layer, positions[rows], k[rows], v[rows])

    def attend(
        self, layer: int, q: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        parts = zip(self.parts, self.slices)
        return torch.cat([p.attention.attend(layer, q[r], positions[r], k[r], v[r]) for p, r in parts])

    def attend_last(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """q: the output rows' queries, part by part (output_rows' order)."""
        assert self._fresh is not None, "write comes before attention in every layer"
        positions, k, v = self._fresh
        out, at = [], 0
        for part, rows, n in zip(self.parts, self.slices, self.output_counts):
            mine = q[at : at + n]
            if part.every_output:
                out.append(part.attention.attend(layer, mine, positions[rows], k[rows], v[rows]))
            else:
                out.append(cast(OutputRows, part.attention).attend_last(layer, mine))
            at += n
        return torch.cat(out)

    def split(self, h: torch.Tensor) -> list[torch.Tensor]:
        """The output rows (run_layers' result with last_row_only) cut back into one tensor per part."""
        return list(torch.split(h, self.output_counts))

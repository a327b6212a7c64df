"""The batched decode kernel's map of a step's caches: one pointer and per-row offsets, so one launch
reaches every request's own cache (and a CUDA graph replays over any set of caches)."""

from __future__ import annotations

import torch


class CacheTable:
    """Where each row's cache lives, per layer, as element offsets from one base tensor: the kernel
    reaches every request's buffers through a single pointer. Built once per step (not per layer), or
    kept as a CUDA graph's static input and refilled before each replay (`fill`).

    Caches are [L, capacity_i, Hkv, D] with the same (token, head) strides; `anchor` is any tensor of
    their dtype on their device that outlives the table (offsets are measured from it)."""

    def __init__(self, anchor: torch.Tensor, layers: int, rows: int) -> None:
        self.base = anchor
        self.offsets = torch.zeros((layers, 2, rows), dtype=torch.int64, device=anchor.device)  # [L, K|V, B]
        self.positions = torch.zeros(rows, dtype=torch.int64, device=anchor.device)
        self.stride_token = self.stride_head = 0
        self.max_keys = 0  # sizes the launch (host int): the largest position + 1, or a graph's bound
        self.keys_per_split: int | None = None  # fixed for a graph; None: planned per launch

    @classmethod
    def of(cls, k_caches: list[torch.Tensor], v_caches: list[torch.Tensor], positions: list[int]) -> CacheTable:
        table = cls(k_caches[0], k_caches[0].shape[0], len(positions))
        table.fill(k_caches, v_caches, positions)
        return table

    def fill(self, k_caches: list[torch.Tensor], v_caches: list[torch.Tensor], positions: list[int]) -> None:
        """Point the first len(positions) rows at these caches (rows past them keep what they held)."""
        head_strides = {(c.stride(1), c.stride(2), c.stride(3)) for c in (*k_caches, *v_caches)}
        if len(head_strides) != 1 or k_caches[0].stride(3) != 1:
            raise ValueError(f"caches must share their token and head strides, got {head_strides}")
        self.stride_token, self.stride_head = k_caches[0].stride(1), k_caches[0].stride(2)
        size, base = self.base.element_size(), self.base.data_ptr()
        layers = torch.arange(self.offsets.shape[0], dtype=torch.int64)[:, None]

        def offsets(caches: list[torch.Tensor]) -> torch.Tensor:
            first = torch.tensor([(c.data_ptr() - base) // size for c in caches], dtype=torch.int64)
            per_layer = torch.tensor([c.stride(0) for c in caches], dtype=torch.int64)
            return first[None, :] + layers * per_layer[None, :]  # [L, B]

        n = len(positions)
        self.offsets[:, :, :n] = torch.stack((offsets(k_caches), offsets(v_caches)), dim=1)
        self.positions[:n] = torch.tensor(positions, dtype=torch.int64)
        if self.keys_per_split is None:  # eager: sized by this step; a graph's bound was set when captured
            self.max_keys = max(positions) + 1

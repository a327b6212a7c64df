"""Computing chunk KV: each chunk prefilled after a shared prefix, many chunks per batch.

The shared prefix (BOS, plus EngineConfig.chunk_prefix, plus any context texts) is
computed once and its KV broadcast to every chunk in a batch, so chunk i attends to the
prefix and to its own earlier tokens only: exactly what a one-chunk prefill would do.
Chunks are right-padded to the batch's longest; padding comes after every real token, so
causal attention never lets a real token see it. Only the chunk rows are kept.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..fusion.layout import PrecomputeJob
from ..model.attention import AttentionMode, PrefixBatchAttention
from ..model.forward import run_layers
from ..model.transformer import TransformerModel
from ..store.chunk_kv import ChunkKV


@torch.inference_mode()
def prefix_kv(
    model: TransformerModel, prefix_ids: list[int], backend: str = "never"
) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V of the shared prefix: [L, P, Hkv, D] each (P may be 0)."""
    cache = model.new_cache(max(1, len(prefix_ids)))
    if prefix_ids:
        ids = torch.tensor(prefix_ids, device=model.device)
        positions = torch.arange(len(prefix_ids), device=model.device)
        model.forward(ids, positions, cache, AttentionMode.CAUSAL_FROM_ZERO, backend=backend)
    n = len(prefix_ids)
    return cache.k[:, :n].clone(), cache.v[:, :n].clone()


def batches(lengths: list[int], batch_tokens: int) -> Iterator[list[int]]:
    """Indices grouped so that (count x longest) stays within batch_tokens; similar lengths together."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * lengths[batch[0]] > batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.inference_mode()
def compute_chunk_kv(
    model: TransformerModel, prefix: tuple[torch.Tensor, torch.Tensor], chunks: list[list[int]], backend: str = "never"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """KV of each chunk ([L, T_i, Hkv, D] pairs) computed after `prefix`, all in one padded batch."""
    dev, P = model.device, prefix[0].shape[1]
    B, T = len(chunks), max(len(ids) for ids in chunks)
    ids = torch.zeros(B, T, dtype=torch.long, device=dev)
    for b, chunk in enumerate(chunks):
        ids[b, : len(chunk)] = torch.tensor(chunk, device=dev)
    positions = torch.arange(P, P + T, device=dev).repeat(B)  # [B*T]
    attention = PrefixBatchAttention(prefix, model.config, B, T)
    attention.backend = backend
    run_layers(model, ids.reshape(-1), positions, attention, finish_last=False)  # only K/V are kept
    return [(attention.k[:, b, : len(c)].clone(), attention.v[:, b, : len(c)].clone()) for b, c in enumerate(chunks)]


def compute_entries(
    model: TransformerModel,
    prefix: tuple[torch.Tensor, torch.Tensor],
    jobs: list[PrecomputeJob],
    model_fingerprint: str,
    batch_tokens: int,
    backend: str = "never",
) -> Iterator[list[tuple[ChunkKV, str]]]:
    """Batches of (ChunkKV, text): each job's [context + chunk] computed after the shared `prefix`,
    only the chunk's rows kept, its start position counting the context before it."""
    sequences = [job.context_ids + job.token_ids for job in jobs]
    for batch in batches([len(s) for s in sequences], batch_tokens):
        kvs = compute_chunk_kv(model, prefix, [sequences[i] for i in batch], backend)
        out = []
        for i, (k, v) in zip(batch, kvs):
            job, skip = jobs[i], len(jobs[i].context_ids)
            entry = ChunkKV(
                job.key,
                torch.tensor(job.token_ids, dtype=torch.long),
                k[:, skip:].clone(),
                v[:, skip:].clone(),
                prefix[0].shape[1] + skip,
                model_fingerprint,
                job.context_id,
                job.text,
            )
            out.append((entry, job.text))
        yield out

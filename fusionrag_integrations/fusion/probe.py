"""Attention probes: how much attention the question pays each chunk token, read cheaply.

A probe runs only the fresh tokens (instruction and question) over the fused cache, as deep as the
layer it reads, and skips that layer's attention and MLP (FusionRAG reads the last layer, QCFuse one
profiled critical layer). QCFuse's critical layer is profiled once per model and kept on disk.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from ..model.attention import AttentionMode, CacheAttention, KVCache
from ..model.forward import run_layers
from ..model.transformer import TransformerModel
from .placement import FusionContext

log = logging.getLogger(__name__)


def attention_to_positions(
    q: torch.Tensor, keys: torch.Tensor, q_pos: torch.Tensor, key_positions: torch.Tensor
) -> torch.Tensor:
    """Attention probability mass each of `key_positions` receives from queries q (summed over heads and queries).

    q: [Sq, Hq, D] at positions q_pos; keys: [N, Hkv, D] (row j at position j). Causal by position.
    """
    Sq, Hq, D = q.shape
    Hkv = keys.shape[1]
    group = Hq // Hkv
    qg = q.float().view(Sq, Hkv, group, D).permute(1, 2, 0, 3).reshape(Hkv, group * Sq, D)
    scores = qg @ keys.float().permute(1, 2, 0) / D**0.5  # [Hkv, group*Sq, N]
    visible = torch.arange(keys.shape[0], device=q.device)[None, :] <= q_pos[:, None]  # [Sq, N]
    scores = scores.view(Hkv, group, Sq, -1).masked_fill(~visible, float("-inf"))
    probs = scores.softmax(dim=-1)
    return probs.sum(dim=(0, 1, 2))[key_positions]


def probe_attention(
    ctx: FusionContext, model: TransformerModel, cache: KVCache, layers: set[int], full: bool
) -> dict[int, torch.Tensor]:
    """Attention mass from the question tokens to each chunk position, at each of `layers`.

    full=False runs only the fresh tokens over the fused (stale) cache and stops after the
    deepest requested layer; full=True runs every token (a plain prefill on `cache`).
    """
    positions = torch.arange(ctx.num_positions, device=ctx.fresh_positions.device) if full else ctx.fresh_positions
    ids = ctx.token_ids[positions]
    # the question is the tokens after the last chunk: a suffix of `positions` either way (sliced,
    # not masked: no device sync). Without one, the last running token probes.
    n_question = max(1, int(ctx.question_positions.numel()))
    last = ctx.num_positions - 1 if full else ctx.last_fresh_position
    scores: dict[int, torch.Tensor] = {}

    def after_write(layer: int, q: torch.Tensor, pos: torch.Tensor) -> None:
        if layer in layers:
            keys = cache.k[layer, : ctx.num_positions]
            scores[layer] = attention_to_positions(q[-n_question:], keys, pos[-n_question:], ctx.chunk_positions)

    graphed = ctx.graphs is not None and ctx.graphs.probe and model is ctx.model and not full and len(layers) == 1
    queries = ctx.graphs.probe_queries(cache, ids, positions, max(layers) + 1) if graphed and ctx.graphs else None
    if queries is not None:  # replayed from a CUDA graph: the same pass, one launch
        after_write(max(layers), queries, positions)
        return scores
    max_position = last if last >= 0 else int(positions[-1])
    attention = CacheAttention(cache, AttentionMode.BY_POSITION, max_position, ctx.backend)
    run_layers(model, ids, positions, attention, after_write=after_write, num_layers=max(layers) + 1, finish_last=False)
    return scores


def profile_critical_layer(
    contexts: list[FusionContext], ratio: float = 0.15, max_fraction: float = 0.5
) -> tuple[int, list[float]]:
    """QCFuse's offline profiling: the layer whose cheap probe best predicts full attention.

    For each sample (a fused context; its cache is used up), the reference ranking is the
    question's last-layer attention over chunk tokens in a full prefill; each layer's probe
    ranking comes from running only the fresh tokens over the stale fused cache. The score
    of a layer is the mean recall of the reference's top `ratio` tokens; the best layer in
    the first `max_fraction` of the depth wins (a deeper probe would cost as much as it saves).
    Returns (layer, recall per layer).
    """
    model = contexts[0].model
    n_layers = model.config.num_layers
    recall = torch.zeros(n_layers)
    for ctx in contexts:
        k = max(1, round(ratio * int(ctx.chunk_positions.numel())))
        reference = probe_attention(ctx, model, model.new_cache(ctx.num_positions), {n_layers - 1}, full=True)
        wanted = set(torch.topk(reference[n_layers - 1], k).indices.tolist())
        probes = probe_attention(ctx, model, ctx.cache, set(range(n_layers)), full=False)
        for layer, scores in probes.items():
            recall[layer] += len(wanted & set(torch.topk(scores, k).indices.tolist())) / k
    recall /= len(contexts)
    limit = max(1, int(n_layers * max_fraction))
    return int(torch.argmax(recall[:limit])), recall.tolist()


def default_critical_layer(model: TransformerModel) -> int:
    """Without profiling: a quarter of the depth (cheap to reach, past the purely lexical layers)."""
    return max(1, model.config.num_layers // 4)


class CriticalLayers:
    """Profiled QCFuse layers by model fingerprint: in memory, and in `path` (a small JSON file) so that
    a model is profiled once per cache directory, not once per process."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.profiled = 0  # profiles this process made (the rest were read back)
        self._layers: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        """Merge in what the file holds now: another engine or process on the same cache directory may have
        profiled since this one started (checked before profiling, so a directory is profiled once and every
        engine on it selects the same way)."""
        if self.path is not None and self.path.is_file():
            try:
                found = {k: v for k, v in json.loads(self.path.read_text()).items() if _valid(v)}
            except (OSError, ValueError, AttributeError) as exc:  # garbled: profile again
                log.warning("ignoring %s (%s)", self.path, exc)
                return
            self._layers = {**found, **self._layers}

    def get(self, fingerprint: str) -> int | None:
        found = self._layers.get(fingerprint)
        return None if found is None else found["layer"]

    def put(self, fingerprint: str, layer: int, recall: list[float], samples: int) -> None:
        self.reload()  # keep what others saved meanwhile
        self._layers[fingerprint] = {"layer": layer, "recall": recall, "samples": samples}
        self.profiled += 1
        if self.path is None:
            return
        try:  # atomic: a reader sees the old file or the new one
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(self._layers, f)
            os.replace(tmp, self.path)
        except OSError as exc:  # read-only or full: kept in memory for this process
            log.warning("cannot save the profiled critical layer to %s (%s)", self.path, exc)


def _valid(value: object) -> bool:
    return isinstance(value, dict) and isinstance(value.get("layer"), int) and value["layer"] >= 0

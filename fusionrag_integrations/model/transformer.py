"""Our Llama-family transformer: explicit positions, explicit KV in/out, token subsets.

Why not transformers' module: fusion needs to run a *subset* of token positions through
each layer while attending to a cache whose other rows came from elsewhere (cached
chunks), with attention causal by absolute position. So the forward takes
`(token_ids, positions, cache)`: each token's fresh K/V is written into the cache at its
position, then its query attends to every cache row at a position <= its own.

Covers Llama (incl. SmolLM2, Llama-3 RoPE scaling), Mistral, Qwen2 (qkv bias) and
Qwen3 (per-head q/k RMSNorm). Weights come from transformers/safetensors (see loader).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kernels.rotary import apply_rotary_
from ..kernels.silu_mul import silu_mul
from .attention import AttentionMode, CacheAttention, KVCache
from .config import ModelConfig
from .forward import run_layers
from .rope import RotaryEmbedding


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor
    qkv: torch.Tensor  # [(Hq + 2 Hkv) * D, hidden]: q, k and v projections fused into one GEMM
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None  # Qwen3: RMSNorm over head_dim, before RoPE
    k_norm: torch.Tensor | None
    o_proj: torch.Tensor
    o_bias: torch.Tensor | None
    mlp_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * intermediate, hidden]: gate and up fused
    down: torch.Tensor


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm arithmetic (float32 statistics, weight applied in x's dtype).

    On CUDA one fused kernel instead of eight launches (small recompute passes are launch-bound);
    it rounds once where transformers rounds twice: at most one bf16 ulp apart.
    """
    if x.is_cuda:
        return F.rms_norm(x, weight.shape, weight, eps)
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


class TransformerModel:
    """Weights plus the forward. Stateless between calls: all state lives in a KVCache."""

    def __init__(
        self,
        config: ModelConfig,
        embed: torch.Tensor,
        layers: list[LayerWeights],
        final_norm: torch.Tensor,
        lm_head: torch.Tensor,
        rope: RotaryEmbedding,
    ) -> None:
        self.config = config
        self.embed_weight = embed
        self.layers = layers
        self.final_norm = final_norm
        self.lm_head = lm_head
        self.rope = rope.to(embed.device)

    @property
    def device(self) -> torch.device:
        return self.embed_weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_weight.dtype

    @classmethod
    def from_state_dict(
        cls,
        config: ModelConfig,
        state: dict[str, torch.Tensor],
        rope: RotaryEmbedding,
        device: torch.device,
        dtype: torch.dtype,
    ) -> TransformerModel:
        """Build from transformers' parameter names; consumes `state` to keep peak memory low."""

        def take(name: str) -> torch.Tensor:
            return state.pop(name).to(device=device, dtype=dtype)

        def maybe(name: str) -> torch.Tensor | None:
            return take(name) if name in state else None

        layers = []
        for i in range(config.num_layers):
            p = f"model.layers.{i}."
            q, k, v = (take(p + f"self_attn.{n}_proj.weight") for n in "qkv")
            biases = [maybe(p + f"self_attn.{n}_proj.bias") for n in "qkv"]
            present = [b for b in biases if b is not None]
            qkv_bias = torch.cat(present) if len(present) == len(biases) else None
            gate, up = take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")
            layers.append(
                LayerWeights(
                    attn_norm=take(p + "input_layernorm.weight"),
                    qkv=torch.cat((q, k, v)),
                    qkv_bias=qkv_bias,
                    q_norm=maybe(p + "self_attn.q_norm.weight"),
                    k_norm=maybe(p + "self_attn.k_norm.weight"),
                    o_proj=take(p + "self_attn.o_proj.weight"),
                    o_bias=maybe(p + "self_attn.o_proj.bias"),
                    mlp_norm=take(p + "post_attention_layernorm.weight"),
                    gate_up=torch.cat((gate, up)),
                    down=take(p + "mlp.down_proj.weight"),
                )
            )
            del q, k, v, gate, up
        embed = take("model.embed_tokens.weight")
        lm_head = embed if config.tie_word_embeddings or "lm_head.weight" not in state else take("lm_head.weight")
        return cls(config, embed, layers, take("model.norm.weight"), lm_head, rope)

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.config, capacity, self.device, self.dtype)

    # -- the forward, in pieces the fusion code drives layer by layer ---------------------

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_ids, self.embed_weight)  # [S, hidden]

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rope.cos_sin(positions, self.dtype)

    def qkv(
        self, layer: int, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str = "never"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Post-RoPE q [S, Hq, D] and k, v [S, Hkv, D] of hidden states h [S, hidden]."""
        c, w = self.config, self.layers[layer]
        x = rms_norm(h, w.attn_norm, c.rms_norm_eps)
        qkv = F.linear(x, w.qkv, w.qkv_bias)
        nq, nkv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        v = qkv[:, nq + nkv :].view(-1, c.num_kv_heads, c.head_dim)
        if w.q_norm is None:  # rotate q and k heads together, in place in the projection's output: one launch
            qk = apply_rotary_(
                qkv[:, : nq + nkv].view(-1, c.num_heads + c.num_kv_heads, c.head_dim), cos, sin, backend=backend
            )
            return qk[:, : c.num_heads], qk[:, c.num_heads :], v
        assert w.k_norm is not None  # q and k norms come together (Qwen3)
        q = rms_norm(qkv[:, :nq].view(-1, c.num_heads, c.head_dim), w.q_norm, c.rms_norm_eps)
        k = rms_norm(qkv[:, nq : nq + nkv].view(-1, c.num_kv_heads, c.head_dim), w.k_norm, c.rms_norm_eps)
        return apply_rotary_(q, cos, sin, backend=backend), apply_rotary_(k, cos, sin, backend=backend), v

    def finish_layer(self, layer: int, h: torch.Tensor, attn: torch.Tensor, backend: str = "never") -> torch.Tensor:
        """Output projection + residual, then the MLP block + residual."""
        c, w = self.config, self.layers[layer]
        attn = attn.reshape(h.shape[0], -1)
        # residual adds ride in the GEMM epilogue (addmm): one launch and one rounding fewer each
        h = h + F.linear(attn, w.o_proj, w.o_bias) if w.o_bias is not None else torch.addmm(h, attn, w.o_proj.t())
        x = rms_norm(h, w.mlp_norm, c.rms_norm_eps)
        return torch.addmm(h, silu_mul(F.linear(x, w.gate_up), backend=backend), w.down.t())

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head, in float32: [N, hidden] -> [N, vocab]."""
        return F.linear(rms_norm(h, self.final_norm, self.config.rms_norm_eps), self.lm_head).float()

    @torch.inference_mode()
    def forward(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        mode: AttentionMode = AttentionMode.BY_POSITION,
        max_position: int | None = None,
        all_logits: bool = False,
        backend: str = "never",
    ) -> torch.Tensor:
        """Every layer on these tokens; logits of the last one ([1, V]) or of all ([S, V]).

        `max_position` (a Python int, to avoid a device sync) must be positions.max();
        contiguous positions (CAUSAL_FROM_ZERO, DECODE) are written with a slice copy.
        """
        if max_position is None:
            max_position = int(positions.max())
        attention = CacheAttention(cache, mode, max_position, backend)
        h, _ = run_layers(self, token_ids, positions, attention, last_row_only=not all_logits)
        return self.logits(h if all_logits else h[-1:])

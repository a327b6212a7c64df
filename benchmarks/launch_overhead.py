"""Host cost of each launch in one selection-probe layer (GPU): why the probe is graphed.

python3 benchmarks/launch_overhead.py

FusionRAG's probe runs ~80 fresh tokens through every layer: ~150 us of GPU work a layer
(an 8B model's weights read once) but ~11 launches. This times each op of one probe layer
at probe sizes (Llama-3.1-8B shapes, bf16, 16K-token cache): `host_us` is the time the host
spends issuing it (loop without sync), `wall_us` with the GPU work included. Where host_us
~ wall_us the op is launch-bound. The last rows: one whole eager probe layer, and the same
layer replayed from a CUDA graph.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import LLAMA31_8B, device_name, markdown_table, random_hf_llama  # noqa: E402

from fusionrag_integrations.kernels.rotary import apply_rotary_  # noqa: E402
from fusionrag_integrations.kernels.silu_mul import silu_mul  # noqa: E402
from fusionrag_integrations.kernels.sparse_attention import sparse_query_attention  # noqa: E402
from fusionrag_integrations.model.attention import AttentionMode, CacheAttention  # noqa: E402
from fusionrag_integrations.model.forward import run_layers  # noqa: E402
from fusionrag_integrations.model.loader import model_from_hf  # noqa: E402

CONTEXT, INSTRUCTION, QUESTION = 16448, 16, 64


def timed(name: str, fn, reps: int = 300) -> dict:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    host = time.perf_counter() - t0
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"op": name, "host_us": host / reps * 1e6, "wall_us": wall / reps * 1e6}


@torch.inference_mode()
def main() -> None:
    dev, dtype = torch.device("cuda"), torch.bfloat16
    model = model_from_hf(random_hf_llama(dict(LLAMA31_8B, num_hidden_layers=2), dev, dtype), dev, dtype)
    c, w = model.config, model.layers[0]
    cache = model.new_cache(CONTEXT)
    cache.k.normal_(), cache.v.normal_()
    pos = torch.cat((torch.arange(INSTRUCTION), torch.arange(CONTEXT - QUESTION, CONTEXT))).to(dev)
    n = pos.numel()
    h = torch.randn(n, c.hidden_size, device=dev, dtype=dtype)
    ids = torch.randint(0, c.vocab_size, (n,), device=dev)
    cos, sin = model.rotary(pos)
    qkv = F.linear(h, w.qkv)
    width = (c.num_heads + c.num_kv_heads) * c.head_dim
    q = qkv[:, : c.num_heads * c.head_dim].view(n, c.num_heads, c.head_dim)
    k = qkv[:, c.num_heads * c.head_dim : width].view(n, c.num_kv_heads, c.head_dim)
    gate_up = F.linear(h, w.gate_up)
    act = silu_mul(gate_up)

    qk = qkv[:, :width].view(n, -1, c.head_dim)

    def attend() -> torch.Tensor:
        return sparse_query_attention(q, cache.k[0], cache.v[0], pos, positions_sorted=True)

    def layer() -> torch.Tensor:
        attention = CacheAttention(cache, AttentionMode.BY_POSITION, CONTEXT - 1, "auto")
        return run_layers(model, ids, pos, attention, num_layers=1)[0]

    rows = [
        timed("rms_norm", lambda: F.rms_norm(h, (c.hidden_size,), w.attn_norm, 1e-5)),
        timed("qkv GEMM", lambda: F.linear(h, w.qkv)),
        timed("RoPE q+k (Triton, in place)", lambda: apply_rotary_(qk, cos, sin)),
        timed("RoPE q+k (PyTorch)", lambda: apply_rotary_(qk, cos, sin, backend="never")),
        timed("K write (index_copy_)", lambda: cache.k[0].index_copy_(0, pos, k)),
        timed("sparse attention (split keys + combine)", attend),
        timed("silu*mul (Triton)", lambda: silu_mul(gate_up)),
        timed("silu*mul (PyTorch)", lambda: silu_mul(gate_up, backend="never")),
        timed("down GEMM + residual (addmm)", lambda: torch.addmm(h, act, w.down.t())),
        timed("whole probe layer, eager", layer, reps=100),
    ]
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        layer()
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        layer()
    rows.append(timed("whole probe layer, CUDA graph replay", graph.replay, reps=100))
    print(f"{device_name(dev)}, Llama-3.1-8B layer shapes, bf16, {n} probe tokens over a {CONTEXT}-token cache\n")
    print(markdown_table(rows, ["op", "host_us", "wall_us"]))


if __name__ == "__main__":
    main()

"""Sparse-query attention throughput: Triton kernel vs PyTorch reference vs dense SDPA vs FlexAttention.

python3 benchmarks/sparse_attention.py            (GPU; Llama-3.1-8B heads: Hq 32, Hkv 8, D 128, bf16)

Useful work counts only unmasked query-key pairs: sum_i (q_pos[i] + 1) x Hq x D x 4 FLOPs.
Dense SDPA runs plain causal attention over all Skv queries (its own useful work is the
causal triangle); the comparison is throughput on useful work, the kernel's target being
>= 70% of dense SDPA's TFLOP/s at Sq = 2,400, Skv = 16,384.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import device_name, markdown_table  # noqa: E402

from fusionrag_integrations.kernels.sparse_attention import sparse_query_attention_ref  # noqa: E402
from fusionrag_integrations.kernels.sparse_attention_launch import sparse_query_attention_triton  # noqa: E402


def bench_ms(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def selected_positions(sq: int, skv: int, gen: torch.Generator) -> torch.Tensor:
    """FusionRAG-like: a 64-token question at the end plus chunk tokens spread over the context."""
    tail = torch.arange(skv - 64, skv)
    spread = torch.randperm(skv - 64, generator=gen)[: sq - 64]
    return torch.sort(torch.cat((spread, tail))).values


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sq", type=int, nargs="+", default=[800, 2400, 4800])
    p.add_argument("--skv", type=int, default=16384)
    p.add_argument("--hq", type=int, default=32)
    p.add_argument("--hkv", type=int, default=8)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--sweep", action="store_true", help="every tile config alone, per query count")
    args = p.parse_args()
    if args.sweep:
        return sweep(args)
    dev, dtype = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    hq, hkv, d, skv = args.hq, args.hkv, args.d, args.skv
    k = torch.randn(skv, hkv, d, device=dev, dtype=dtype)
    v = torch.randn(skv, hkv, d, device=dev, dtype=dtype)
    rows = []

    q_all = torch.randn(skv, hq, d, device=dev, dtype=dtype)
    dense_ms = bench_ms(
        lambda: F.scaled_dot_product_attention(
            q_all.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            is_causal=True,
            enable_gqa=True,
        )
    )
    dense_flops = 4.0 * hq * d * skv * (skv + 1) / 2
    rows.append(
        {
            "method": "dense SDPA (causal, all queries)",
            "sq": skv,
            "ms": dense_ms,
            "useful_tflops": dense_flops / dense_ms / 1e9,
            "vs_dense": 1.0,
        }
    )

    for sq in args.sq:
        pos = selected_positions(sq, skv, gen).to(dev)
        q = torch.randn(sq, hq, d, device=dev, dtype=dtype)
        useful = 4.0 * hq * d * float((pos + 1).sum())
        out = sparse_query_attention_triton(q, k, v, pos)
        ref = sparse_query_attention_ref(q.float(), k.float(), v.float(), pos)
        err = (out.float() - ref).abs().max().item()
        methods = {
            "triton kernel": lambda: sparse_query_attention_triton(q, k, v, pos),
            "torch reference": lambda: sparse_query_attention_ref(q, k, v, pos),
        }
        flex = flex_attention_fn(q, k, v, pos)
        if flex is not None:
            methods["FlexAttention (position mask)"] = flex
        for name, fn in methods.items():
            ms = bench_ms(fn)
            tf = useful / ms / 1e9
            rows.append(
                {
                    "method": name,
                    "sq": sq,
                    "ms": ms,
                    "useful_tflops": tf,
                    "vs_dense": tf / rows[0]["useful_tflops"],
                    "max_abs_err": err if name == "triton kernel" else None,
                }
            )
    print(f"\n{device_name(dev)}, Skv={skv}, Hq={hq}, Hkv={hkv}, D={d}, bf16\n")
    print(markdown_table(rows, ["method", "sq", "ms", "useful_tflops", "vs_dense", "max_abs_err"]))


def sweep(args) -> None:
    """Each autotune config alone (no tuning) per query count; the dense case (every position a query)
    shows the tile's own speed against SDPA's. (K/V loads through tensor descriptors were swept the same
    way in commit b4dbbf1, results/sparse_attention_sweep_tma_h100.log: no gain, not kept.)"""
    import triton

    from fusionrag_integrations.kernels import sparse_attention_launch as launch
    from fusionrag_integrations.kernels.sparse_attention_triton import _sparse_query_attn_fwd

    dev, dtype, gen = torch.device("cuda"), torch.bfloat16, torch.Generator().manual_seed(0)
    hq, hkv, d, skv = args.hq, args.hkv, args.d, args.skv
    k = torch.randn(skv, hkv, d, device=dev, dtype=dtype)
    v = torch.randn(skv, hkv, d, device=dev, dtype=dtype)
    tuned, rows = launch._sparse_query_attn_fwd_tuned, []
    extra = [(256, 128, 8, 2), (128, 64, 8, 4), (64, 128, 4, 3), (128, 32, 4, 3)]
    configs = list(launch._GPU_CONFIGS) + [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in extra
    ]
    for sq in [*args.sq, skv]:
        pos = selected_positions(sq, skv, gen).to(dev) if sq < skv else torch.arange(skv, device=dev)
        q = torch.randn(sq, hq, d, device=dev, dtype=dtype)
        useful = 4.0 * hq * d * float((pos + 1).sum())
        ref = sparse_query_attention_ref(q.float(), k.float(), v.float(), pos) if sq < skv else None
        for cfg in configs:
            launch._sparse_query_attn_fwd_tuned = triton.autotune(configs=[cfg], key=["HEAD_DIM", "GROUP_PAD"])(
                _sparse_query_attn_fwd
            )
            fn = lambda: sparse_query_attention_triton(q, k, v, pos, positions_sorted=True, num_splits=1)  # noqa: E731
            try:
                out = fn()
                err = (out.float() - ref).abs().max().item() if ref is not None else float("nan")
                ms = bench_ms(fn)
            except Exception as exc:  # a config the compiler rejects (shared memory) is reported, not fatal
                print(f"sq={sq} {cfg}: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            kw = cfg.kwargs
            rows.append({"sq": sq, "block_m": kw["BLOCK_M"], "block_n": kw["BLOCK_N"], "warps": cfg.num_warps,
                         "stages": cfg.num_stages, "ms": ms, "useful_tflops": useful / ms / 1e9,
                         "max_abs_err": err})  # fmt: skip
        launch._sparse_query_attn_fwd_tuned = tuned
        best = max((r for r in rows if r["sq"] == sq), key=lambda r: r["useful_tflops"], default=None)
        print(f"sq={sq}: best {best}", flush=True)
    print(f"\n{device_name(dev)}, Skv={skv}, Hq={hq}, Hkv={hkv}, D={d}, bf16, one config each\n")
    columns = ["sq", "block_m", "block_n", "warps", "stages", "ms", "useful_tflops", "max_abs_err"]
    print(markdown_table(rows, columns))


def flex_attention_fn(q, k, v, pos):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    sq, skv = q.shape[0], k.shape[0]

    def mask_mod(b, h, q_idx, kv_idx):
        return pos[q_idx] >= kv_idx

    try:
        block_mask = create_block_mask(mask_mod, None, None, sq, skv, device=q.device)
        compiled = torch.compile(flex_attention)
        qt, kt, vt = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
        compiled(qt, kt, vt, block_mask=block_mask, enable_gqa=True)
        return lambda: compiled(qt, kt, vt, block_mask=block_mask, enable_gqa=True)
    except Exception as exc:  # compile failures are reported, not fatal
        print(f"FlexAttention unavailable: {exc}")
        return None


if __name__ == "__main__":
    main()

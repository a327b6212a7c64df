"""Decode at batch > 1 (issue 17): what one step of B running requests costs, and what it would cost
one at a time.

For B requests whose caches hold `--context` tokens each (random K/V: attention cost does not depend
on the values), per step: the graphed batch step (runtime/batch_step.py), the eager batch step, and B
single-request graphed steps (today's one-at-a-time decode); and per layer the batched attention
kernel against an SDPA per row (the reference). GPU only (random bf16 weights in the 8B shape).

    python3 benchmarks/batch_decode.py [--context 16384] [--batches 1 4 8 16]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import LLAMA31_8B, device_name, markdown_table, median_ms, random_hf_llama  # noqa: E402

from fusionrag_integrations.kernels.batch_decode import batch_decode_attention, batch_decode_attention_ref  # noqa: E402
from fusionrag_integrations.kernels.cache_table import CacheTable  # noqa: E402
from fusionrag_integrations.model.graphs import GraphCache  # noqa: E402
from fusionrag_integrations.model.loader import model_from_hf  # noqa: E402
from fusionrag_integrations.runtime.batch_step import BatchDecodeStep  # noqa: E402
from fusionrag_integrations.runtime.decode_step import GraphedDecodeStep  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=16384)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "batch_decode_gpu.json"))
    args = p.parse_args()
    device = torch.device("cuda")
    model = model_from_hf(random_hf_llama(dict(LLAMA31_8B), device, torch.bfloat16), device, torch.bfloat16)
    torch.cuda.empty_cache()
    graphs = GraphCache(model, "auto", True, True)
    step = BatchDecodeStep(model, graphs, "auto")
    c = model.config
    caches = []
    for _ in range(max(args.batches)):
        cache = model.new_cache(args.context + 64)
        cache.k.normal_()
        cache.v.normal_()
        caches.append(cache)
    rows = []
    for b in args.batches:
        batch = caches[:b]
        tokens, positions = [1] * b, [args.context] * b
        graphed = median_ms(lambda: step(batch, tokens, positions), device, repeats=20, warmup=2)
        eager = median_ms(lambda: step._eager(batch, tokens, positions), device, repeats=10)
        singles = [GraphedDecodeStep(graphs, cache) for cache in batch]
        one_by_one = median_ms(lambda: [s(1, args.context) for s in singles], device, repeats=10, warmup=2)
        q = torch.randn(b, c.num_heads, c.head_dim, device=device, dtype=model.dtype)
        kn = torch.randn(b, c.num_kv_heads, c.head_dim, device=device, dtype=model.dtype)
        table = CacheTable.of([x.k for x in batch], [x.v for x in batch], positions)
        kernel = median_ms(lambda: batch_decode_attention(q, kn, kn, table, 0), device, repeats=50)
        keys, values = [x.k[0] for x in batch], [x.v[0] for x in batch]
        per_row = median_ms(lambda: batch_decode_attention_ref(q, kn, kn, keys, values, positions), device, repeats=20)
        kv_bytes = 2 * b * (args.context + 1) * c.num_kv_heads * c.head_dim * 2
        rows.append({
            "batch": b, "context": args.context, "graphed_step_ms": graphed, "eager_step_ms": eager,
            "one_at_a_time_ms": one_by_one, "tokens_per_s": b / graphed * 1e3,
            "speedup_vs_one_at_a_time": one_by_one / graphed,
            "attn_kernel_us": kernel * 1e3, "attn_per_row_sdpa_us": per_row * 1e3,
            "attn_kernel_gb_s": kv_bytes / (kernel * 1e-3) / 1e9,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{device_name(device)}, Llama-3.1-8B shape (random bf16), {args.context}-token caches\n")
    print(markdown_table(rows, list(rows[0])))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

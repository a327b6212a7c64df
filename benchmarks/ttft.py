"""GPU time-to-first-token: HF full prefill vs ours vs fused chunk-KV reuse, one run, same weights.

python3 benchmarks/ttft.py                      # Llama-3.1-8B shape, random bf16 weights, 4K..32K
python3 benchmarks/ttft.py --contexts 16384 --repeats 3 --quick

Contexts are built from 512-token chunks (precomputed; GPU tier, and pinned-CPU tier for
the `cpu` rows) plus a 64-token question after a 16-token instruction. Each method's TTFT
is the median of >= 5 timed runs after warm-up, synchronised around each, and covers
everything after tokenisation: fetching chunk KV from the store, placing and re-rotating
it, selection, the recompute pass and the first token's logits. Writes
benchmarks/results/ttft_gpu.json and benchmarks/plots/ttft.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import LLAMA31_8B, device_name, markdown_table, median_ms, random_hf_llama, sync  # noqa: E402

from fusionrag_integrations.config import FusionConfig  # noqa: E402
from fusionrag_integrations.evaluation.variants import hybrid_variant, parse_spec  # noqa: E402
from fusionrag_integrations.fusion.hybrid import DeviationReference  # noqa: E402
from fusionrag_integrations.fusion.placement import PlacedChunk, build_context, place_chunks  # noqa: E402
from fusionrag_integrations.fusion.recompute import fused_prefill  # noqa: E402
from fusionrag_integrations.fusion.selectors import make_selector  # noqa: E402
from fusionrag_integrations.model.attention import AttentionMode  # noqa: E402
from fusionrag_integrations.model.graphs import GraphCache  # noqa: E402
from fusionrag_integrations.model.loader import model_from_hf  # noqa: E402
from fusionrag_integrations.runtime.precompute import PrecomputeJob, compute_entries, prefix_kv  # noqa: E402
from fusionrag_integrations.store.tiers import ChunkStore  # noqa: E402

CHUNK, QUESTION, INSTRUCTION = 512, 64, 16
SELECTORS = ["none", "epic", "cacheblend", "fusionrag", "qcfuse", "cacheclip", "hybrid", "full"]


KERNELS = "auto"  # Triton on CUDA, as the engine chooses there (model.attention.resolve_kernels)


def build_chunks(
    model, n_chunks: int, gen: torch.Generator, batch_tokens: int, neighbors: int = 0
) -> tuple[list, float]:
    """Precompute n_chunks random 512-token chunks; returns (entries, seconds per chunk).

    neighbors > 0: similarity-guided precompute, each chunk computed after `neighbors` other chunks
    (only its own KV kept): the cost FusionRAG's offline stage pays per chunk.
    """
    dev = model.device
    prefix = prefix_kv(model, [1], KERNELS)
    ids = [
        torch.randint(0, model.config.vocab_size, (CHUNK,), generator=gen, device=dev).tolist() for _ in range(n_chunks)
    ]
    jobs = []
    for i in range(n_chunks):
        context = [t for j in range(1, neighbors + 1) for t in ids[(i + j) % n_chunks]]
        jobs.append(
            PrecomputeJob(
                f"{i:032x}{neighbors:032x}", f"chunk{i}", context, ids[i], "standalone" if not neighbors else f"nbr:{i}"
            )
        )
    warm = jobs[: max(1, batch_tokens // (CHUNK * (neighbors + 1)))]  # compile / autotune happen here, untimed
    list(compute_entries(model, prefix, warm, "bench", batch_tokens, KERNELS))
    sync(dev)
    t = time.perf_counter()
    entries = [e for batch in compute_entries(model, prefix, jobs, "bench", batch_tokens, KERNELS) for e, _ in batch]
    sync(dev)
    return entries, (time.perf_counter() - t) / n_chunks


class Prompt:
    """Token layout: [instruction][chunk 0]...[chunk n-1][question]."""

    def __init__(self, model, n_chunks: int, gen: torch.Generator) -> None:
        dev, vocab = model.device, model.config.vocab_size
        self.instruction = torch.randint(0, vocab, (INSTRUCTION,), generator=gen, device=dev)
        self.question = torch.randint(0, vocab, (QUESTION,), generator=gen, device=dev)
        self.n_chunks = n_chunks

    def ids(self, entries: list) -> torch.Tensor:
        return torch.cat([self.instruction, *[e.token_ids.to(self.instruction.device) for e in entries], self.question])

    def starts(self) -> list[int]:
        return [INSTRUCTION + i * CHUNK for i in range(self.n_chunks)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--selector-context", type=int, default=16384)
    p.add_argument("--quick", action="store_true", help="skip HF and the CPU tier (kernel iteration)")
    p.add_argument("--breakdown", action="store_true", help="time the phases of fused fusionrag@0.15")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of one fused fusionrag@0.15 call")
    p.add_argument(
        "--neighbors",
        type=int,
        nargs="*",
        default=[],
        help="also time similarity-guided precompute with these neighbour counts (e.g. 3)",
    )
    p.add_argument("--kv-formats", nargs="*", default=[], choices=["fp8", "int4"],
                   help="also fusionrag@0.15 from chunks stored in these formats (GPU and CPU tier)")  # fmt: skip
    p.add_argument("--redis-server", help="a redis-server binary: also fusionrag@0.15 with every chunk read from "
                   "Redis on loopback (no memory tier), per stored format (native and --kv-formats)")  # fmt: skip
    p.add_argument(
        "--selectors",
        nargs="+",
        default=SELECTORS,
        help="selectors or variants (evaluation/variants.py) timed at 0.15 at --selector-context",
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "ttft_gpu.json"))
    args = p.parse_args()
    dev, dtype = torch.device("cuda"), torch.bfloat16
    hf = random_hf_llama(LLAMA31_8B, dev, dtype)
    model = model_from_hf(hf, dev, dtype)
    if args.quick:
        del hf
        hf = None
    gen = torch.Generator(device=dev).manual_seed(0)
    name = device_name(dev)
    rows: list[dict] = []

    max_chunks = max(args.contexts) // CHUNK
    entries, s_per_chunk = build_chunks(model, max_chunks, gen, batch_tokens=8192)
    print(f"precompute: {s_per_chunk * 1e3:.1f} ms per {CHUNK}-token chunk (batches of 16, {max_chunks} chunks)")
    rows.append(
        {
            "device": name,
            "context_tokens": CHUNK,
            "method": "precompute",
            "selector": None,
            "ratio": None,
            "kv_tier": None,
            "ttft_ms": s_per_chunk * 1e3,
            "peak_mem_gib": None,
        }
    )
    for k in args.neighbors:
        _, s_nbr = build_chunks(model, min(max_chunks, 32), gen, batch_tokens=8192, neighbors=k)
        print(f"precompute with {k} neighbours: {s_nbr * 1e3:.1f} ms per {CHUNK}-token chunk")
        rows.append(
            {
                "device": name,
                "context_tokens": CHUNK,
                "method": f"precompute_{k}_neighbors",
                "selector": None,
                "ratio": None,
                "kv_tier": None,
                "ttft_ms": s_nbr * 1e3,
                "peak_mem_gib": None,
            }
        )
    gpu_store = ChunkStore("bench", dev, 64 << 30, 0, None)
    cpu_store = ChunkStore(
        "bench", dev, 0, 64 << 30, None
    )  # nothing fits the GPU tier: every get copies from pinned CPU
    for e in entries:
        gpu_store.put(e)
        cpu_store.put(e)
    compact = {f: (ChunkStore("bench", dev, 64 << 30, 0, None), ChunkStore("bench", dev, 0, 64 << 30, None))
               for f in args.kv_formats}  # fmt: skip
    for f, stores in compact.items():
        for e in entries:
            for store in stores:
                store.put(e.compacted(f))
    remote, redis_proc = {}, None
    if args.redis_server:
        import tempfile

        from redis_tier import redis_stores

        remote, redis_proc = redis_stores(entries, ["native", *args.kv_formats], args.redis_server, dev,
                                          tempfile.mkdtemp())  # fmt: skip
    cfg = FusionConfig()
    graphs = GraphCache(model, KERNELS, decode=True, probe=True)  # what the engine's runner owns

    def record(context: int, method: str, fn, selector=None, ratio=None, tier=None) -> None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        ms = median_ms(fn, dev, args.repeats, warmup=2)
        peak = torch.cuda.max_memory_allocated() / 2**30
        rows.append(
            {
                "device": name,
                "context_tokens": context,
                "method": method,
                "selector": selector,
                "ratio": ratio,
                "kv_tier": tier,
                "ttft_ms": ms,
                "peak_mem_gib": peak,
            }
        )
        print(
            f"{context:>6} {method:<10} {str(selector):<10} {str(ratio):<5} {str(tier):<4} "
            f"{ms:9.1f} ms {peak:6.1f} GiB",
            flush=True,
        )

    for context in args.contexts:
        n_chunks = (context - INSTRUCTION - QUESTION) // CHUNK
        prompt = Prompt(model, n_chunks, gen)
        keys = [e.key for e in entries[:n_chunks]]
        ids = prompt.ids(entries[:n_chunks])
        n = int(ids.numel())

        def hf_full():
            with torch.inference_mode():
                return hf(ids[None], use_cache=True, logits_to_keep=1).logits

        def ours_full():
            cache = model.new_cache(n + 1)
            mode = AttentionMode.CAUSAL_FROM_ZERO
            return model.forward(ids, torch.arange(n, device=dev), cache, mode, n - 1, backend=KERNELS)

        def fused(selector_name: str, ratio: float, store: ChunkStore):
            name, options = parse_spec(selector_name)
            selector = hybrid_variant(cfg, options, DeviationReference()) if options else make_selector(name, cfg)

            def run():
                with torch.inference_mode():
                    store.prefetch(keys)  # one batched read where the backend batches (Redis); else nothing
                    placed = [PlacedChunk(store.get(k), s) for k, s in zip(keys, prompt.starts())]
                    cache = model.new_cache(n + 1)
                    return fused_prefill(model, cache, ids, placed, selector, ratio, None, KERNELS, graphs)[0]

            return run

        if hf is not None:
            record(context, "hf_full", hf_full)
        record(context, "ours_full", ours_full)
        for ratio in (0.0, 0.05, 0.15, 0.30):
            record(context, "fused", fused("fusionrag", ratio, gpu_store), "fusionrag", ratio, "gpu")
        if not args.quick:
            record(context, "fused", fused("fusionrag", 0.15, cpu_store), "fusionrag", 0.15, "cpu")
        for f, (gpu_f, cpu_f) in compact.items():  # stored compact, dequantised where placed
            record(context, f"fused_{f}", fused("fusionrag", 0.15, gpu_f), "fusionrag", 0.15, "gpu")
            record(context, f"fused_{f}", fused("fusionrag", 0.15, cpu_f), "fusionrag", 0.15, "cpu")
        for f, store in remote.items():  # every chunk fetched from Redis, verified, moved to the GPU
            record(context, "fused" if f == "native" else f"fused_{f}", fused("fusionrag", 0.15, store), "fusionrag",
                   0.15, "redis")  # fmt: skip
        if context == args.selector_context:
            for sel in args.selectors:
                if sel != "fusionrag":
                    record(context, "fused", fused(sel, 0.15, gpu_store), sel, 0.15, "gpu")
            if args.breakdown:
                breakdown(model, gpu_store, keys, prompt, ids, cfg, args.repeats, graphs)
            if args.profile:
                from torch.profiler import ProfilerActivity, profile

                run = fused("fusionrag", 0.15, gpu_store)
                run()
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    run()
                    sync(dev)
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20))
                print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))

    table_rows = []
    for r in rows:
        ref = next(
            (x["ttft_ms"] for x in rows if x["context_tokens"] == r["context_tokens"] and x["method"] == "hf_full"),
            None,
        )
        table_rows.append({**r, "speedup_vs_hf": (ref / r["ttft_ms"]) if ref and r["method"] != "precompute" else None})
    print()
    print(
        markdown_table(
            table_rows,
            ["context_tokens", "method", "selector", "ratio", "kv_tier", "ttft_ms", "speedup_vs_hf", "peak_mem_gib"],
        )
    )
    if redis_proc is not None:
        redis_proc.terminate()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    plot(rows, out.parent.parent / "plots" / "ttft.png")


def breakdown(model, store, keys, prompt, ids, cfg, repeats, graphs) -> None:
    """Where fused fusionrag@0.15's time goes: fetch+place, probe (selection), recompute pass."""
    from fusionrag_integrations.fusion.recompute import recompute

    dev, n = model.device, int(ids.numel())
    selector = make_selector("fusionrag", cfg)
    with torch.inference_mode():
        placed = [PlacedChunk(store.get(k), s) for k, s in zip(keys, prompt.starts())]
        cache = model.new_cache(n + 1)
        place_ms = median_ms(lambda: place_chunks(model, cache, placed, KERNELS), dev, repeats)
        ctx = build_context(model, cache, ids, placed, 0, KERNELS, graphs)
        budget = round(0.15 * int(ctx.chunk_positions.numel()))
        select_ms = median_ms(lambda: selector.select(ctx, budget), dev, repeats)
        chosen = selector.select(ctx, budget)
        recompute_ms = median_ms(lambda: recompute(ctx, chosen), dev, repeats)
    print(
        f"breakdown fusionrag@0.15: place {place_ms:.1f} ms, select (probe) {select_ms:.1f} ms, "
        f"recompute {recompute_ms:.1f} ms"
    )


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = {"HF full prefill (SDPA)": ("hf_full", None), "ours full prefill": ("ours_full", None)}
    for r in (0.0, 0.05, 0.15, 0.30):
        series[f"fused fusionrag @ {r:.2f}"] = ("fused", r)
    for label, (method, ratio) in series.items():
        pts = sorted(
            (x["context_tokens"], x["ttft_ms"])
            for x in rows
            if x["method"] == method
            and x["kv_tier"] in (None, "gpu")
            and (ratio is None or (x["ratio"] == ratio and x["selector"] == "fusionrag"))
        )
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context tokens")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title(f"Llama-3.1-8B shape, bf16, {rows[0]['device']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

"""Throughput and latency under load: the continuous-batching engine with fusion, the same scheduler
with selector `full`, and the one-at-a-time engine, on a RAG workload (issue 17); the same engine
behind `fusionrag serve`'s app over HTTP, clients in another process (`fusion_http`, issue 18).

Workload: a pool of precomputed ~512-token chunks; each request retrieves `--chunks` of them (Zipf
popularity: some chunks are shared across requests, as in a real corpus), adds a 64-token question,
and generates `--output-tokens` tokens (no early EOS). Closed-loop clients at each concurrency, and
an open-loop Poisson sweep. Per method and load: requests/s, output tokens/s, TTFT p50/p99, time per
output token p50/p99 (client side: from submission to the first / between later pieces).

GPU (the issue's numbers): python3 benchmarks/serving.py --shape llama3-8b --tokenizer DIR
    (random bf16 weights in the Llama-3.1-8B shape, vocab cut to the tokenizer's; DIR: any HF
    tokenizer folder, e.g. the converted SmolLM2's)
CPU smoke run: python benchmarks/serving.py --pool 24 --chunks 4 --concurrency 1 4 --requests 8
HTTP layer: --methods fusion fusion_http fusion_think --concurrency 1 4 16 --rates 3 --repeats 3
    (fusion_think: in-process clients pausing --think-ms between requests, as a network would)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import LLAMA31_8B, device_name, markdown_table, random_hf_llama  # noqa: E402
from load_clients import HTTPServer, http_clients, http_open_loop, run_clients, run_open_loop  # noqa: E402

from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path  # noqa: E402
from fusionrag_integrations.model.identity import model_fingerprint, tokenizer_fingerprint  # noqa: E402
from fusionrag_integrations.model.loader import LoadedModel, load_tokenizer, model_from_hf  # noqa: E402
from fusionrag_integrations.response_format import ResponseFormat  # noqa: E402

ANSWER_FORMAT = ResponseFormat.json_schema(
    {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
)


def build_engine_parts(args) -> LoadedModel:
    if args.shape == "smollm2":
        engine = FusionEngine.from_pretrained(
            default_model_path(), device=args.device, config=EngineConfig(persist=False)
        )
        loaded = engine.loaded
        return LoadedModel(loaded.model, loaded.tokenizer, frozenset(), loaded.name, loaded.model_dir,
                           loaded.model_fingerprint, loaded.tokenizer_fingerprint)  # fmt: skip
    tokenizer = load_tokenizer(Path(args.tokenizer))
    device = torch.device(args.device)
    shape = dict(LLAMA31_8B, vocab_size=len(tokenizer))
    model = model_from_hf(random_hf_llama(shape, device, torch.bfloat16), device, torch.bfloat16)
    torch.cuda.empty_cache()
    return LoadedModel(model, tokenizer, frozenset(), "llama3-8b-random", Path(args.tokenizer),
                       model_fingerprint(model), tokenizer_fingerprint(tokenizer))  # fmt: skip


def random_text(tokenizer, n_tokens: int, rng: np.random.Generator) -> str:
    """Text of about n_tokens tokens: random words of the vocabulary, so nothing repeats across chunks."""
    vocab = [t for t in tokenizer.get_vocab() if t.isalpha() and len(t) > 3][:20000]
    words = rng.choice(vocab, size=n_tokens).tolist()
    return " ".join(w.lstrip("Ġ▁") for w in words)


class Workload:
    def __init__(self, tokenizer, pool: int, per_request: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.chunks = [random_text(tokenizer, 440, rng) for _ in range(pool)]  # ~512 tokens (SmolLM2 tokenizer)
        self.per_request, self.rng, self.tokenizer = per_request, rng, tokenizer
        ranks = np.arange(1, pool + 1)
        self.popularity = (1.0 / ranks**0.8) / (1.0 / ranks**0.8).sum()  # Zipf-like

    def request(self) -> tuple[list[dict], list[str]]:
        picked = self.rng.choice(len(self.chunks), size=self.per_request, replace=False, p=self.popularity)
        chunks = [self.chunks[i] for i in picked]
        question = random_text(self.tokenizer, 50, self.rng)
        prompt = "Answer from the passages.\n\n" + "\n\n".join(chunks) + f"\n\nQuestion: {question}\nAnswer:"
        return prompt, chunks


def closed_loop(engine, workload, settings, concurrency: int, total: int, ramp_s=0.0, think_s=0.0) -> list[dict]:
    """`concurrency` clients, each sending its next request when the last one finished; client i
    starts after i x ramp_s (clients started in one instant stay in lock-step: their requests finish
    together and come back together, a burst no independent users would make)."""
    work = [workload.request() for _ in range(total)]
    if isinstance(engine, HTTPServer):
        return engine.clients.submit(http_clients, engine.url, work, settings, concurrency, ramp_s).result()
    return run_clients(engine, work, settings, concurrency, ramp_s, think_s)


def open_loop(engine, workload, settings, rate: float, total: int) -> list[dict]:
    work = [workload.request() for _ in range(total)]
    gaps = np.random.default_rng(1).exponential(1.0 / rate, size=total).tolist()
    if isinstance(engine, HTTPServer):
        return engine.clients.submit(http_open_loop, engine.url, work, gaps, settings).result()
    return run_open_loop(engine, work, gaps, settings)


def scheduler_stats(scheduler) -> dict:
    """Rows per decode step and the split of the step loop's time since the last call."""
    stats = {"decode_steps": scheduler.steps, "rows_per_step": scheduler.batched_rows / max(scheduler.steps, 1),
             "peak_running": scheduler.peak_running, "requeued": scheduler.requeued,
             "prefill_s": scheduler.seconds["prefill"], "decode_s": scheduler.seconds["decode"]}  # fmt: skip
    scheduler.steps = scheduler.batched_rows = scheduler.peak_running = scheduler.requeued = 0
    scheduler.seconds = {"prefill": 0.0, "decode": 0.0}
    return stats


def summarize(results: list[dict], skip: int = 0, **labels) -> dict:
    """skip: the first requests by submission time are left out (closed loop: the first round, sent all
    at once when the clients start, measures the start-up burst, not the steady state)."""
    results = sorted(results, key=lambda r: r["t0"])[skip:]
    start, end = min(r["t0"] for r in results), max(r["end"] for r in results)
    q = lambda xs, p: float(np.percentile(xs, p)) * 1e3  # noqa: E731
    ttft, tpot = [r["ttft"] for r in results], [r["tpot"] for r in results]
    return {
        **labels,
        "requests": len(results),
        "req_per_s": len(results) / (end - start),
        "out_tok_s": sum(r["tokens"] for r in results) / (end - start),
        "ttft_p50_ms": q(ttft, 50),
        "ttft_p99_ms": q(ttft, 99),
        "tpot_p50_ms": q(tpot, 50),
        "tpot_p99_ms": q(tpot, 99),
        "prefill_p50_ms": float(np.median([r["prefill"] for r in results])),  # the model's work, queueing left out
        "engine_ttft_p50_ms": float(np.median([r["server_ttft"] for r in results])),  # submission -> first token
    }


def medians(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["load"], row["output_tokens"]), []).append(row)
    numeric = [k for k, v in rows[0].items() if isinstance(v, float)]
    median = lambda g, k: float(np.median([r[k] for r in g]))  # noqa: E731
    return [{"method": m, "load": load, "output_tokens": out, **{k: median(g, k) for k in numeric}}
            for (m, load, out), g in groups.items()]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=["smollm2", "llama3-8b"], default="smollm2")
    p.add_argument("--tokenizer", help="HF tokenizer folder (llama3-8b shape)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--pool", type=int, default=500)
    p.add_argument("--chunks", type=int, default=32, help="chunks per request (32 x 512 = 16K context)")
    p.add_argument("--output-tokens", type=int, nargs="+", default=[32])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--rates", type=float, nargs="*", default=[], help="open-loop Poisson arrival rates (req/s)")
    p.add_argument("--requests", type=int, default=0, help="requests per load point (default 3 x concurrency, >= 16)")
    p.add_argument("--ramp-s", type=float, default=0.15, help="closed loop: client i starts after i x this")
    p.add_argument("--think-ms", type=float, default=10.0, help="fusion_think: client pause between requests")
    p.add_argument("--methods", nargs="+", default=["fusion", "full", "one_at_a_time"])
    p.add_argument("--repeats", type=int, default=1, help="rounds over the methods, interleaved (medians printed)")
    p.add_argument("--gpu-tier-gib", type=float, default=8.0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "serving.json"))
    args = p.parse_args()
    loaded = build_engine_parts(args)
    common = dict(persist=False, gpu_cache_bytes=int(args.gpu_tier_gib * 2**30), cpu_cache_bytes=96 << 30)
    engine = FusionEngine(loaded, EngineConfig(**common))
    workload = Workload(loaded.tokenizer, args.pool, args.chunks)
    t = time.perf_counter()
    engine.precompute(workload.chunks, show_progress=False)
    print(f"precomputed {args.pool} chunks in {time.perf_counter() - t:.1f} s", flush=True)
    # fusion: the engine and its chunk store; full: an engine with an empty chunk store, so every prompt is
    # prefilled in full (prompt-prefix cache on) and nothing is fetched or placed: a server without reuse;
    # one_at_a_time: an engine whose loop runs one request at a time (its own store, the same chunks)
    plain = FusionEngine(loaded, EngineConfig(**common))
    http = HTTPServer(engine) if "fusion_http" in args.methods else None
    turns = None
    if "one_at_a_time" in args.methods:
        turns = FusionEngine(loaded, EngineConfig(**common, max_running_requests=1))
        turns.precompute(workload.chunks, show_progress=False)
    methods = {
        "fusion": (engine, {"recompute_ratio": 0.15}),
        "fusion_http": (http, {"recompute_ratio": 0.15}),
        "fusion_think": (engine, {"recompute_ratio": 0.15}),  # in-process, --think-ms between requests
        "full": (plain, {"selector": "full"}),
        # every answer constrained to {"answer": <string>}: the grammar's mask in each batched decode step
        "fusion_json": (engine, {"recompute_ratio": 0.15, "response_format": ANSWER_FORMAT}),
        "one_at_a_time": (turns, {"recompute_ratio": 0.15}),
    }
    rows = []
    for out_tokens, repeat, name in itertools.product(args.output_tokens, range(args.repeats), args.methods):
        server, settings = methods[name]
        scheduler = engine.scheduler if name.startswith("fusion") else server.scheduler
        settings = {**settings, "max_new_tokens": out_tokens}
        if repeat == 0:  # warm-up: kernels, autotuning, graphs of each batch size, allocator
            warm = min(max(args.concurrency), 16)
            closed_loop(server, workload, settings, warm, warm)
            closed_loop(server, workload, settings, 1, 3)  # and the single-request path (graphs per layout)
        scheduler_stats(scheduler)
        labels = dict(method=name, context_tokens=args.chunks * 512, output_tokens=out_tokens, repeat=repeat)
        for c in args.concurrency:
            think = args.think_ms / 1e3 if name == "fusion_think" else 0.0
            res = closed_loop(server, workload, settings, c, args.requests or max(16, 3 * c), args.ramp_s, think)
            rows.append(summarize(res, skip=c if c > 1 else 0, load=f"c={c}", **labels,
                                  **scheduler_stats(scheduler)))  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        for rate in args.rates:
            res = open_loop(server, workload, settings, rate, args.requests or 32)
            rows.append(summarize(res, load=f"rate={rate}", **labels, **scheduler_stats(scheduler)))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{device_name(torch.device(args.device))}, {args.shape}\n")
    cols = ["method", "load", "repeat", "output_tokens", "req_per_s", "out_tok_s", "ttft_p50_ms", "ttft_p99_ms",
            "tpot_p50_ms", "tpot_p99_ms", "prefill_p50_ms", "engine_ttft_p50_ms", "rows_per_step", "prefill_s",
            "decode_s"]  # fmt: skip
    print(markdown_table(rows, cols))
    if args.repeats > 1:
        print("\nmedians over the repeats\n")
        print(markdown_table(medians(rows), ["method", "load", "output_tokens", "req_per_s", "ttft_p50_ms",
                                             "ttft_p99_ms", "engine_ttft_p50_ms", "prefill_p50_ms"]))  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

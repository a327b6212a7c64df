"""GPU correctness checks of the serving core (random weights in a small Llama shape, bf16, the
bundled tokenizer): run before the gate in the same device call.

1. tiers: a GPU tier of 3 chunks (chunks demoted to the pinned CPU tier, promoted back on a side
   stream) answers exactly as a GPU tier holding everything;
2. batched == unbatched: 8 requests decoded together vs one at a time (greedy);
3. sliced prefill: a 64-token step budget vs the whole prompt in one step;
4. graphed recompute: a short recompute pass (selector none) replayed from a CUDA graph vs eager, the
   first token's logits (relative error).
bf16 rounding may differ between batch shapes (2, 3): those report the first differing token.

    python3 benchmarks/gpu_checks.py --tokenizer DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import LLAMA31_8B, random_hf_llama  # noqa: E402
from serving import random_text  # noqa: E402

from fusionrag_integrations import EngineConfig, FusionEngine  # noqa: E402
from fusionrag_integrations.model.identity import model_fingerprint, tokenizer_fingerprint  # noqa: E402
from fusionrag_integrations.model.loader import LoadedModel, load_tokenizer, model_from_hf  # noqa: E402

SMALL = dict(LLAMA31_8B, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=4)  # fmt: skip


def first_difference(a: list[int], b: list[int]) -> int | None:
    diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return diff if diff is not None or len(a) == len(b) else min(len(a), len(b))


def compare(name: str, ref: list[list[int]], got: list[list[int]]) -> dict:
    diffs = [first_difference(a, b) for a, b in zip(ref, got)]
    row = {"check": name, "identical": sum(d is None for d in diffs), "requests": len(ref), "first_differences": diffs}
    print(json.dumps(row), flush=True)
    return row


def graphed_recompute(loaded: LoadedModel, chunks: list[str], prompts: list[str], graphed, base: dict) -> dict:
    """The first token's logits of a short recompute (selector none) replayed from a graph vs eager."""
    eager = FusionEngine(loaded, EngineConfig(**base, gpu_cache_bytes=2 << 30, cuda_graph_probe=False))
    eager.precompute(chunks)
    errors = []
    for prompt in prompts[:4]:
        ref = eager.prefill(prompt, selector="none").logits.float()
        for _ in range(3):  # the first sighting runs eagerly, the second captures, the third replays
            got = graphed.prefill(prompt, selector="none").logits.float()
        errors.append(float((got - ref).norm() / ref.norm()))
    eager.loop.stop()
    replays = graphed.runner.graphs.replays["recompute"]
    row = {"check": "graphed recompute vs eager (first-token logits)", "max_rel_error": max(errors), "replays": replays}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the script (no GPU tier there)")
    args = p.parse_args()
    tokenizer = load_tokenizer(Path(args.tokenizer))
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = model_from_hf(random_hf_llama(dict(SMALL, vocab_size=len(tokenizer)), device, dtype), device, dtype)
    loaded = LoadedModel(model, tokenizer, frozenset(), "small-random", Path(args.tokenizer),
                         model_fingerprint(model), tokenizer_fingerprint(tokenizer))  # fmt: skip
    rng = np.random.default_rng(3)
    chunks = [random_text(tokenizer, 440, rng) for _ in range(24)]
    prompts = []
    for i in range(8):
        picked = [chunks[j] for j in rng.choice(24, size=6, replace=False)]
        prompts.append("Passages:\n\n" + "\n\n".join(picked) + f"\n\nQuestion {i}: {random_text(tokenizer, 30, rng)}")
    entry_bytes = 2 * SMALL["num_hidden_layers"] * SMALL["num_key_value_heads"] * 64 * 2 * 560
    base = dict(persist=False, cpu_cache_bytes=4 << 30)
    engines = {
        "big_tier_alone": FusionEngine(loaded, EngineConfig(**base, gpu_cache_bytes=2 << 30, max_running_requests=1)),
        "small_tier_alone": FusionEngine(
            loaded, EngineConfig(**base, gpu_cache_bytes=3 * entry_bytes, max_running_requests=1)
        ),  # fmt: skip
        "batched": FusionEngine(loaded, EngineConfig(**base, gpu_cache_bytes=2 << 30)),
        "sliced": FusionEngine(loaded, EngineConfig(**base, gpu_cache_bytes=2 << 30, max_prefill_tokens=64)),
    }
    for engine in engines.values():
        engine.precompute(chunks)
    settings = {"max_new_tokens": 24}
    alone = {name: e for name, e in engines.items() if name != "batched"}
    out = {name: [e.generate(q, **settings).token_ids for q in prompts] for name, e in alone.items()}
    together: list = [None] * len(prompts)

    def run(i: int) -> None:
        together[i] = engines["batched"].generate(prompts[i], **settings).token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    small = engines["small_tier_alone"].chunks.event_counts()
    rows = [
        {**compare("tiers: 3-chunk GPU tier vs all on the GPU", out["big_tier_alone"], out["small_tier_alone"]),
         "demoted": small.get("demoted", 0), "cpu_hits": small.get("cpu", 0), "gpu_hits": small.get("gpu", 0)},
        compare("batched (8 together) vs one at a time", out["big_tier_alone"], together),
        compare("sliced prefill (64-token steps) vs one step", out["big_tier_alone"], out["sliced"]),
    ]  # fmt: skip
    rows.append(graphed_recompute(loaded, chunks, prompts, engines["big_tier_alone"], base))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    for engine in engines.values():
        engine.loop.stop()


if __name__ == "__main__":
    main()

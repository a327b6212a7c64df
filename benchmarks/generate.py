"""Prefill time and decode speed: our engine vs transformers, same weights, same run.

CPU:  python benchmarks/generate.py                       (bundled SmolLM2, 512-token prompt)
GPU:  python benchmarks/generate.py --shape llama3-8b --prompt-tokens 4096 16384
Prints a markdown table; writes benchmarks/results/generate_<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import LLAMA31_8B, device_name, markdown_table, median_ms, random_hf_llama, sync  # noqa: E402

from fusionrag_integrations.model.attention import AttentionMode  # noqa: E402
from fusionrag_integrations.model.graphs import GraphCache  # noqa: E402
from fusionrag_integrations.model.loader import model_from_hf  # noqa: E402
from fusionrag_integrations.runtime.decode_step import make_decode_step  # noqa: E402


def load_models(shape: str, device: torch.device, dtype: torch.dtype):
    if shape == "smollm2":
        from transformers import AutoModelForCausalLM

        from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path

        engine = FusionEngine.from_pretrained(default_model_path(), device=device, dtype=dtype, config=EngineConfig())
        hf = AutoModelForCausalLM.from_pretrained(engine.loaded.model_dir, dtype=dtype, attn_implementation="sdpa")
        return engine.model, hf.to(device).eval()
    hf = random_hf_llama(LLAMA31_8B, device, dtype)
    return model_from_hf(hf, device, dtype), hf


@torch.inference_mode()
def bench(ours, hf, n_prompt: int, n_decode: int, repeats: int, device: torch.device) -> list[dict]:
    runner = SimpleNamespace(backend="auto", graphs=GraphCache(ours, "auto", decode=True, probe=True))  # as the engine
    vocab = ours.config.vocab_size
    ids = torch.randint(0, vocab, (n_prompt,), device=device, generator=torch.Generator(device).manual_seed(0))

    def ours_prefill():
        cache = ours.new_cache(n_prompt + n_decode)
        positions = torch.arange(n_prompt, device=device)
        mode = AttentionMode.CAUSAL_FROM_ZERO
        return ours.forward(ids, positions, cache, mode, n_prompt - 1, backend=runner.backend), cache

    def hf_prefill():
        out = hf(ids[None], use_cache=True, logits_to_keep=1)
        return out.logits[0], out.past_key_values

    def ours_decode(cuda_graph: bool):
        logits, cache = ours_prefill()
        step = make_decode_step(ours, cache, runner.graphs if cuda_graph else None, runner.backend)
        sync(device)
        t = time.perf_counter()
        tok = int(logits[-1].argmax())
        for i in range(n_decode):  # a new cache layout captures on its first step (timed); later runs replay
            tok = int(step(tok, n_prompt + i).argmax())
        sync(device)
        return (time.perf_counter() - t) * 1e3

    def hf_decode():
        logits, past = hf_prefill()
        sync(device)
        t = time.perf_counter()
        tok = logits[-1].argmax()
        for _ in range(n_decode):
            out = hf(tok.view(1, 1), past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
            tok = torch.tensor(tok, device=device)
        sync(device)
        return (time.perf_counter() - t) * 1e3

    rows = []
    # interleave the engines so drift in clocks or thermal state hits all alike
    prefill = {"ours": median_ms(ours_prefill, device, repeats), "transformers": median_ms(hf_prefill, device, repeats)}
    decoders = {"transformers": hf_decode, "ours": lambda: ours_decode(False)}
    if runner.graphs.decode:
        decoders["ours_cuda_graph"] = lambda: ours_decode(True)
    decode = {
        name: sorted(fn() for _ in range(max(3, repeats // 2)))[max(3, repeats // 2) // 2]
        for name, fn in decoders.items()
    }
    for name in decoders:
        engine_prefill = prefill["ours" if name.startswith("ours") else name]
        rows.append(
            {
                "engine": name,
                "prompt_tokens": n_prompt,
                "prefill_ms": engine_prefill,
                "decode_tok_s": n_decode / (decode[name] / 1e3),
                "prefill_speedup_vs_hf": prefill["transformers"] / engine_prefill,
                "decode_speedup_vs_hf": decode["transformers"] / decode[name],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["smollm2", "llama3-8b"], default="smollm2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[512])
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    ours, hf = load_models(args.shape, device, dtype)
    rows = []
    for n in args.prompt_tokens:
        rows += bench(ours, hf, n, args.decode_tokens, args.repeats, device)
    for r in rows:
        r.update(device=device_name(device), shape=args.shape, dtype=str(dtype).replace("torch.", ""))
    print(
        f"\n{device_name(device)}, {args.shape}, {dtype}, decode {args.decode_tokens} tokens, "
        f"median of {args.repeats}\n"
    )
    print(
        markdown_table(
            rows,
            ["engine", "prompt_tokens", "prefill_ms", "decode_tok_s", "prefill_speedup_vs_hf", "decode_speedup_vs_hf"],
        )
    )
    out = Path(args.out or Path(__file__).parent / "results" / f"generate_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Where one fused request's time to first token goes, phase by phase, through `engine.generate`.

    python3 benchmarks/phases.py --tokenizer DIR                # 8B shape, random bf16, 16K and 32K
    python benchmarks/phases.py --shape tiny --contexts 2048    # CPU smoke run of the script itself

The same setup as the gate's end-to-end rows (chunks in the GPU tier, a new 48-token question per call).
Each phase is one function of the request's path, timed with the device synchronised before and after
it, so a phase's figure is its own work (the synchronisation takes away the overlap the unsynchronised
path has: the table also gives the plain end-to-end time of the same prompts):

    prepare    render, size check, splitting the text at the chunks (caller's thread; less the next two)
    detect     finding the stored chunks in the prompt's text
    tokenise   tokenising the text between chunks
    lookup     the layout: missing entries named, entries looked up, token ids laid out
    cache      the request's KV cache allocated
    place      chunks' KV copied into it, keys re-rotated
    context    positions of chunks, fresh text and question sent to the device
    select     the selector's own work less the next two (for hybrid: key norms, the picks)
    probe      the question run over the placed cache up to the critical layer, its attention read
    deviation  hybrid's deviation sample: sampled chunk tokens through the first layers, one host sync
    recompute  the pass over fresh + selected tokens, the last token's logits
    first      the first token: sampling, stats, the decode state
    other      the rest of the wall time: queueing, the step loop's bookkeeping, thread hand-offs

For the model phases it gives the achieved TFLOP/s (recompute: 2 x non-embedding parameters per token
plus attention over the keys before each token, and the lm head once) and GB/s (place: chunk KV read
and written), and the share of the graphable passes (the probe, a short recompute) that replayed a CUDA
graph over the setting's calls (benchmarks/graph_counter.py: a miss runs eagerly or captures). Writes
results/phases_<gpu>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from allocator_counter import AllocatorCounter  # noqa: E402
from common import device_name, markdown_table, sync  # noqa: E402
from gate import build  # noqa: E402
from graph_counter import GraphCounter  # noqa: E402
from serving import random_text  # noqa: E402

from fusionrag_integrations import EngineConfig, FusionEngine  # noqa: E402
from fusionrag_integrations.fusion import hybrid as hybrid_module  # noqa: E402
from fusionrag_integrations.fusion import layout as layout_module  # noqa: E402
from fusionrag_integrations.fusion.selector_base import Selector  # noqa: E402
from fusionrag_integrations.runtime import executor as executor_module  # noqa: E402
from fusionrag_integrations.runtime import prefill_task as task_module  # noqa: E402
from fusionrag_integrations.runtime import runner as runner_module  # noqa: E402
from fusionrag_integrations.store import registry as registry_module  # noqa: E402

PHASES = ["prepare", "detect", "tokenise", "lookup", "cache", "place", "context", "select", "probe", "deviation"]
PHASES += ["recompute", "first"]
NESTED = {"detect": "prepare", "tokenise": "prepare", "probe": "select", "deviation": "select"}  # child: parent


class PhaseTimer:
    """Wraps the request path's functions; each call adds its synchronised wall time to its phase."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.ms = device, defaultdict(float)
        self.active = False
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            if not self.active:
                return original(*args, **kwargs)
            sync(self.device)
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                sync(self.device)
                self.ms[phase] += (time.perf_counter() - t0) * 1e3

        self._undo.append((owner, name, original))
        setattr(owner, name, timed)

    def install(self) -> None:
        self.wrap(layout_module.PromptLayout, "prepare", "prepare")
        self.wrap(registry_module.ChunkRegistry, "find", "detect")
        self.wrap(layout_module, "encode_text", "tokenise")
        self.wrap(layout_module, "encode_texts", "tokenise")
        self.wrap(layout_module.PromptLayout, "missing", "lookup")
        self.wrap(layout_module.PromptLayout, "build", "lookup")
        self.wrap(runner_module.ModelRunner, "new_cache", "cache")
        self.wrap(task_module, "place_chunks", "place")
        self.wrap(task_module, "build_context", "context")
        for cls in selector_classes():
            if "select" in vars(cls):
                self.wrap(cls, "select", "select")
        self.wrap(hybrid_module, "probe_attention", "probe")
        self.wrap(hybrid_module, "chunk_deviation", "deviation")
        self.wrap(task_module.PrefillTask, "run", "recompute")
        self.wrap(executor_module.StepExecutor, "_first_token", "first")

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()


def selector_classes() -> list[type]:
    found, todo = [], [Selector]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def recompute_flops(cfg, tokens: int, context: int) -> float:
    """2 x parameters per token through every layer, attention over ~context/2 keys on average (the
    recomputed tokens are spread over the prompt), the lm head for the last token."""
    d, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
    per_layer = d * (d + 2 * kv) + d * d + 3 * d * cfg.intermediate_size
    attention = 4 * cfg.num_heads * cfg.head_dim * (context / 2)
    return tokens * cfg.num_layers * (2 * per_layer + attention) + 2 * d * cfg.vocab_size


def kernel_table(engine: FusionEngine, head: str, questions, top: int, settings: dict) -> None:
    """torch.profiler's kernels of one call at the last context, by device time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if engine.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        engine.generate(head + next(questions) + "\nAnswer:", max_new_tokens=1, **settings)
        sync(engine.device)
    key = "self_cuda_time_total" if engine.device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=top))


def host_profile(engine: FusionEngine, call, setting: str, calls: int) -> None:
    """cProfile of `calls` requests, top functions by own time; and the caching allocator's device mallocs
    and frees. Python 3.12's cProfile (sys.monitoring) sees every thread and allows one profiler at a time:
    one profile covers the caller and the step loop's thread. Before 3.12 the loop's steps get their own."""
    import cProfile
    import io
    import pstats

    from fusionrag_integrations.serving.loop import StepLoop

    caller, loop = cProfile.Profile(), cProfile.Profile()
    one_profiler = sys.version_info >= (3, 12)
    original = StepLoop.step

    def profiled(self) -> None:
        loop.enable()
        try:
            original(self)
        finally:
            loop.disable()

    if not one_profiler:
        StepLoop.step = profiled
    allocator = AllocatorCounter(engine.device)
    try:
        with allocator:
            for _ in range(calls):
                caller.enable()
                call(setting)
                caller.disable()
    finally:
        StepLoop.step = original
    for name, total in allocator.totals.items():
        print(f"{setting}: {name} +{total} over {calls} calls")
    profiles = [("all threads", caller)] if one_profiler else [("caller", caller), ("loop", loop)]
    for name, prof in profiles:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
        print(f"--- {setting}: {name}, {calls} calls, by own time")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:8000])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=["llama3-8b", "tiny"], default="llama3-8b")
    p.add_argument("--tokenizer", required=True, help="an HF tokenizer folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--contexts", type=int, nargs="+", default=[16384, 32768])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--settings", nargs="+", default=["default", "r005", "none"], choices=["default", "r005", "none"])
    p.add_argument("--kernel-setting", default="default", choices=["default", "r005", "none"])
    p.add_argument("--host-profile", type=int, default=0, help="also cProfile this many calls per setting")
    p.add_argument(
        "--interleave-hf",
        action="store_true",
        help="a transformers prefill before each call, as the gate's e2e rows run (the caching allocator sees both)",
    )
    p.add_argument("--kernels", type=int, default=0, help="also the top N GPU kernels of one default call")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args()
    loaded, hf = build(args)
    if not args.interleave_hf:
        del hf
    tok, cfg = loaded.tokenizer, loaded.model.config
    engine = FusionEngine(loaded, EngineConfig(persist=False, gpu_cache_bytes=16 << 30, cpu_cache_bytes=16 << 30))
    settings = {"default": {}, "r005": {"recompute_ratio": 0.05}, "none": {"selector": "none"}}
    timer, rows, rng = PhaseTimer(engine.device), [], np.random.default_rng(7)
    print(f"device: {device_name(engine.device)}", flush=True)
    for context in args.contexts:
        chunks = [random_text(tok, 440, rng) for _ in range(context // 512)]
        engine.precompute(chunks)
        head = "Answer from the passages.\n\n" + "\n\n".join(chunks) + "\n\nQuestion: "
        questions = iter([random_text(tok, 48, rng) for _ in range(400)])

        def call(setting: str):
            if args.interleave_hf:
                ids = tok(head + "x", return_tensors="pt")["input_ids"].to(engine.device)
                with torch.inference_mode():
                    hf.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
            sync(engine.device)
            t0 = time.perf_counter()
            out = engine.generate(head + next(questions) + "\nAnswer:", max_new_tokens=1, **settings[setting])
            sync(engine.device)
            return (time.perf_counter() - t0) * 1e3, out.stats, out.usage

        for setting in args.settings:
            for _ in range(3):  # warm-up: kernels, graphs, the critical layer's profile
                call(setting)
            graphs = GraphCounter()  # over the plain and the synchronised calls alike
            graphs.install()
            plain = statistics.median(call(setting)[0] for _ in range(args.repeats))
            timer.install()
            timer.active, phases, walls = True, defaultdict(list), []
            recomputed = []
            for _ in range(args.repeats):
                timer.ms.clear()
                wall, stats, usage = call(setting)
                walls.append(wall)
                for child, parent in NESTED.items():  # every phase exclusive: a parent less its children
                    timer.ms[parent] -= timer.ms[child]
                for phase in PHASES:
                    phases[phase].append(timer.ms[phase])
                fresh = usage.prompt_tokens - stats.tokens_reused - stats.tokens_recomputed
                recomputed.append((stats.tokens_recomputed + fresh, usage.prompt_tokens))
            timer.active = False
            timer.uninstall()
            graphs.uninstall()
            row = {"context": context, "setting": setting, "e2e_ms": round(plain, 2),
                   "synced_wall_ms": round(statistics.median(walls), 2)}  # fmt: skip
            for phase in PHASES:
                row[f"{phase}_ms"] = round(statistics.median(phases[phase]), 2)
            row["other_ms"] = round(row["synced_wall_ms"] - sum(row[f"{ph}_ms"] for ph in PHASES), 2)
            tokens, n = (int(statistics.median(x)) for x in zip(*recomputed))
            row["recomputed_tokens"] = tokens
            if row["recompute_ms"] > 0:
                row["recompute_tflops"] = round(recompute_flops(cfg, tokens, n) / row["recompute_ms"] / 1e9, 1)
            kv_bytes = engine.runner.kv_bytes_per_token() * (stats.tokens_reused + stats.tokens_recomputed)
            if row["place_ms"] > 0:
                row["place_gb_s"] = round(2 * kv_bytes / row["place_ms"] / 1e6, 1)
            share = graphs.replayed_share()
            row["graph_replayed"] = "-" if share is None else round(share, 2)  # of the graphable passes
            row["graphs"] = graphs.summary()
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.host_profile:
                host_profile(engine, call, setting, args.host_profile)
    columns = ["context", "setting", "e2e_ms", "synced_wall_ms", *(f"{ph}_ms" for ph in PHASES), "other_ms",
               "recomputed_tokens", "recompute_tflops", "place_gb_s", "graph_replayed"]  # fmt: skip
    print(markdown_table(rows, columns))
    if args.kernels:
        kernel_table(engine, head, questions, args.kernels, settings[args.kernel_setting])
    engine.loop.stop()
    out = Path(args.out_dir) / f"phases_{'gpu' if engine.device.type == 'cuda' else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device_name(engine.device), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

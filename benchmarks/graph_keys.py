"""Which of the gate's graphable passes would replay a CUDA graph if the allocator never moved a cache.

The gate's end-to-end call sequence (benchmarks/gate.py: the same chunks, questions and order, three
warm-up calls per method, then `repeats` interleaved rounds), run on the CPU with a small random model
and the real tokenizer, layout and selectors, the engine's graphs switched on with a stand-in capture
(a CPU has no CUDA graphs: the pass runs eagerly and is recorded as captured), and each cache's layout
reduced to its rounded shape, as if the allocator always handed a same-sized cache the same buffers.
What misses then comes from the keys alone: a fresh-token count in a bucket not seen twice yet, or a
graph pushed out of the LRU. benchmarks/graph_counter.py names each miss's reason.

    python benchmarks/graph_keys.py --tokenizer DIR --contexts 16384 32768

Prints, per context and setting, the replayed share and the misses by reason over the timed rounds,
and the fresh-token buckets seen; writes results/graph_keys_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import markdown_table  # noqa: E402
from gate import build  # noqa: E402
from graph_counter import MISSES, GraphCounter, bucket_of  # noqa: E402
from serving import random_text  # noqa: E402

from fusionrag_integrations import EngineConfig, FusionEngine  # noqa: E402
from fusionrag_integrations.config import FusionConfig  # noqa: E402
from fusionrag_integrations.model import graphs as graphs_module  # noqa: E402
from fusionrag_integrations.model.attention import KVCache  # noqa: E402

SETTINGS = {  # the gate's methods, in its order ("hf" draws a question and touches no graph)
    "hf": None,
    "default": {},
    "r005": {"recompute_ratio": 0.05},
    "full": {"selector": "full"},
    "none": {"selector": "none"},
    "guarded": {"fidelity": "guarded"},
}


class _Recorded:
    def replay(self) -> None:  # the stand-in's output already holds the pass's answer
        pass


def _stand_in_capture(run, device, what):
    first = run()
    return first, _Recorded(), first.clone()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="an HF tokenizer folder (the gate's)")
    p.add_argument("--contexts", type=int, nargs="+", default=[16384])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args()
    smoke = argparse.Namespace(tokenizer=args.tokenizer, shape="tiny", device="cpu")
    loaded, _ = build(smoke)  # the gate's own CPU smoke model (a 2-layer random Llama)
    tok, model = loaded.tokenizer, loaded.model
    never = FusionConfig(guard_threshold=1.01)
    engine = FusionEngine(loaded, EngineConfig(persist=False, gpu_cache_bytes=0, cpu_cache_bytes=4 << 30, fusion=never))
    graphs = engine.runner.graphs
    graphs.probe = graphs.recompute = True  # the GPU's setting; the capture is the stand-in below
    graphs_module.warm_up_and_capture = _stand_in_capture
    window = model.config.context_window
    plain_new_cache = engine.runner.new_cache
    engine.runner.new_cache = lambda n: plain_new_cache(graphs_module.graph_friendly_capacity(n, window))
    KVCache.layout = lambda cache: (0, 0, tuple(cache.k.shape), cache.k.dtype)  # the allocator never moves one
    buckets: Counter = Counter()
    original = graphs_module.GraphCache._replayed

    def noting_bucket(graph_cache, kind, cache, ids, positions, *rest, **kw):
        buckets[(kind[0], bucket_of(int(positions.numel())))] += 1
        return original(graph_cache, kind, cache, ids, positions, *rest, **kw)

    graphs_module.GraphCache._replayed = noting_bucket
    rng, rows = np.random.default_rng(7), []
    for context in args.contexts:
        chunks = [random_text(tok, 440, rng) for _ in range(context // 512)]
        engine.precompute(chunks, show_progress=False)
        head = "Answer from the passages.\n\n" + "\n\n".join(chunks) + "\n\nQuestion: "
        questions = iter([random_text(tok, 48, rng) for _ in range(200)])
        next(questions)  # the gate tokenises one prompt to count its tokens

        def call(settings: dict | None) -> None:
            text = head + next(questions) + "\nAnswer:"
            if settings is not None:
                engine.generate(text, max_new_tokens=1, **settings)

        for settings in SETTINGS.values():  # the gate's warm-up
            for _ in range(3):
                call(settings)
        counters = {name: GraphCounter() for name in SETTINGS}
        buckets.clear()
        for _ in range(args.repeats):
            for name, settings in SETTINGS.items():
                counters[name].install()
                call(settings)
                counters[name].uninstall()
        for name, counter in counters.items():
            share = counter.replayed_share()
            if share is None:
                continue
            passes = sum(c["passes"] for c in counter.counts.values())
            row = {"context": context, "setting": name, "passes": passes, "replayed": round(share, 2)}
            row.update({m: sum(c[m] for c in counter.counts.values()) for m in MISSES})
            rows.append(row)
        print(f"{context}: timed passes by (kind, bucket): {dict(sorted(buckets.items()))}", flush=True)
    engine.loop.stop()
    print(markdown_table(rows, list(rows[0])))
    out = Path(args.out_dir) / "graph_keys_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

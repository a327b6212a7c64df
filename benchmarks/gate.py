"""The GPU performance gate: the headline figures in one run, compared with a committed baseline.

Run it before landing any change to model/, runtime/, fusion/, store/, kernels/ or serving/ (one device
call, under 8 minutes on an H100), and quote its table:

    python3 benchmarks/gate.py --tokenizer DIR             # 8B shape, random bf16 weights
    python3 benchmarks/gate.py --tokenizer DIR --update-baseline   # only in a commit that says why
    python3 benchmarks/gate.py --tokenizer DIR --against /tmp/main.json  # vs main's run on this machine
    python benchmarks/gate.py --shape tiny                 # CPU smoke run of the script itself

What it measures, all on one model (Llama-3.1-8B shape, the tokenizer's vocabulary):
- end-to-end TTFT through `engine.generate` at 16K and 32K tokens (chunks in the GPU tier, a new
  48-token question per call, tokenising and detection included): the default selector at 0.15 and
  at 0.05, `full` and `none`, against transformers' `generate(max_new_tokens=1)` on the same weights
  and text (tokenising included); with, as info, the share of graphable passes that replayed a graph;
- serving: closed-loop clients at c=1 and c=16 (fusion, and `full` over an engine with no chunks), 32
  output tokens, over a pool of chunks at least 4x the GPU tier (8 GiB GPU tier, persist off);
- ingest: chunks/s of 512-token chunks, native (the pool) and int4.

Every row is `{"metric", "value", "unit", "baseline", "gated"}`; gated rows that fall more than 7%
behind the baseline (in their direction: ratios and rates up, latencies down) fail the run (exit 1).
Writes benchmarks/results/gate_<gpu>.json; the baseline is benchmarks/baselines/gate_<gpu>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from allocator_counter import AllocatorCounter  # noqa: E402
from common import LLAMA31_8B, device_name, random_hf_llama, sync  # noqa: E402
from graph_counter import GraphCounter  # noqa: E402
from load_clients import run_clients  # noqa: E402
from serving import Workload, random_text, summarize  # noqa: E402

from fusionrag_integrations import EngineConfig, FusionEngine  # noqa: E402
from fusionrag_integrations.config import FusionConfig  # noqa: E402
from fusionrag_integrations.model.identity import model_fingerprint, tokenizer_fingerprint  # noqa: E402
from fusionrag_integrations.model.loader import LoadedModel, load_tokenizer, model_from_hf  # noqa: E402

TOLERANCE = 0.07
TINY = dict(LLAMA31_8B, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)  # fmt: skip
LOWER_IS_BETTER = {"ms"}


class Gate:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, metric: str, value: float, unit: str, gated: bool = True) -> None:
        self.rows.append({"metric": metric, "value": round(float(value), 4), "unit": unit, "gated": gated})
        print(f"{metric}: {value:.4g} {unit}", flush=True)


def build(args) -> tuple[LoadedModel, torch.nn.Module]:
    tokenizer = load_tokenizer(Path(args.tokenizer))
    shape = dict(TINY if args.shape == "tiny" else LLAMA31_8B, vocab_size=len(tokenizer))
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hf = random_hf_llama(shape, device, dtype)
    model = model_from_hf(hf, device, dtype)  # copies (fused qkv / gate_up): the HF model stays usable
    loaded = LoadedModel(model, tokenizer, frozenset(), f"{args.shape}-random", Path(args.tokenizer),
                         model_fingerprint(model), tokenizer_fingerprint(tokenizer))  # fmt: skip
    return loaded, hf


def e2e_ttft(gate: Gate, loaded: LoadedModel, hf, args) -> None:
    """TTFT through engine.generate vs transformers, per context, median of `repeats` calls."""
    rng = np.random.default_rng(7)
    tok = loaded.tokenizer
    never = FusionConfig(guard_threshold=1.01)  # "guarded" below: the guard's signals, never an escalation
    engine = FusionEngine(loaded, EngineConfig(persist=False, gpu_cache_bytes=16 << 30, cpu_cache_bytes=16 << 30,
                                               fusion=never))  # fmt: skip
    for context in args.contexts:
        chunks = [random_text(tok, 440, rng) for _ in range(context // 512)]
        engine.precompute(chunks)
        head = "Answer from the passages.\n\n" + "\n\n".join(chunks) + "\n\nQuestion: "
        questions = iter([random_text(tok, 48, rng) for _ in range(200)])
        prompt = lambda: head + next(questions) + "\nAnswer:"  # noqa: E731 - a new question each call
        n_tokens = len(tok(prompt())["input_ids"])

        def ours(name: str, **settings) -> float:
            text = prompt()
            sync(engine.device)
            t0 = time.perf_counter()
            engine.generate(text, max_new_tokens=1, **settings)
            sync(engine.device)
            return (time.perf_counter() - t0) * 1e3

        def theirs() -> float:
            text = prompt()
            sync(engine.device)
            t0 = time.perf_counter()
            ids = tok(text, return_tensors="pt")["input_ids"].to(engine.device)
            with torch.inference_mode():
                hf.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
            sync(engine.device)
            return (time.perf_counter() - t0) * 1e3

        methods = {
            "hf": theirs,
            "default": lambda: ours("default"),
            "r005": lambda: ours("r005", recompute_ratio=0.05),
            "full": lambda: ours("full", selector="full"),
            "none": lambda: ours("none", selector="none"),
            "guarded": lambda: ours("guarded", fidelity="guarded"),
        }
        for fn in methods.values():  # warm-up: kernels, graphs, the critical layer's profile
            for _ in range(3):
                fn()
        samples: dict[str, list[float]] = {name: [] for name in methods}
        graphed = {name: GraphCounter() for name in methods}  # replayed graphs: a bimodal row's first suspect
        allocator = {name: AllocatorCounter(engine.device) for name in methods}  # the second suspect
        for _ in range(args.repeats):  # interleaved: a drift of the GPU's clocks hits every method alike
            for name, fn in methods.items():
                graphed[name].install()
                with allocator[name]:
                    samples[name].append(fn())
                graphed[name].uninstall()
        times = {name: statistics.median(values) for name, values in samples.items()}
        k = f"{context // 1024}k"
        print(f"{k}: {n_tokens} prompt tokens", flush=True)
        for name, ms in times.items():
            gate.add(f"e2e_{k}_{name}_ms", ms, "ms", gated=False)
            print(f"{k} {name} samples ms: {[round(x, 1) for x in samples[name]]}; allocator per call: "
                  f"{allocator[name].per_call()}", flush=True)  # fmt: skip
            gate.add(f"e2e_{k}_{name}_device_allocs", allocator[name].per_call()["device_allocs"], "per call",
                     gated=False)  # fmt: skip
        for name in ("default", "r005", "full", "none"):
            gate.add(f"e2e_{k}_{name}_x_hf", times["hf"] / times[name], "x")
        for name, share in ((n, c.replayed_share()) for n, c in graphed.items() if c.replayed_share() is not None):
            gate.add(f"e2e_{k}_{name}_graph_replayed", share, "share", gated=False)
            print(f"{k} {name} graphable passes: {graphed[name].summary()}", flush=True)  # misses by why
        gate.add(f"e2e_{k}_guard_cost", times["guarded"] / times["default"] - 1, "share", gated=False)
    engine.loop.stop()


def serving(gate: Gate, loaded: LoadedModel, args) -> None:
    tier = int(args.gpu_tier_gib * 2**30)
    config = dict(persist=False, gpu_cache_bytes=tier, cpu_cache_bytes=int(args.cpu_tier_gib * 2**30))
    engine = FusionEngine(loaded, EngineConfig(**config))
    workload = Workload(loaded.tokenizer, args.pool, args.chunks)
    sync(engine.device)
    t0 = time.perf_counter()
    engine.precompute(workload.chunks)
    sync(engine.device)
    gate.add("ingest_native_chunks_s", args.pool / (time.perf_counter() - t0), "chunks/s")
    tokens = sum(len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in workload.chunks)
    gate.add("serving_pool_over_gpu_tier", tokens * engine.runner.kv_bytes_per_token() / tier, "x", gated=False)
    plain = FusionEngine(loaded, EngineConfig(**config))  # no chunks: every prompt prefilled in full
    runs = {"fusion": (engine, {}), "full": (plain, {"selector": "full"})}
    for name, (server, settings) in runs.items():
        settings = {**settings, "max_new_tokens": args.output_tokens}
        run_clients(server, [workload.request() for _ in range(16)], settings, 16, 0.0)  # warm-up: graphs, allocator
        for c in (1, 16) if name == "fusion" else (16,):
            n = max(12, 3 * c)
            res = run_clients(server, [workload.request() for _ in range(n)], settings, c, args.ramp_s)
            s = summarize(res, skip=c if c > 1 else 0)
            gate.add(f"serving_c{c}_{name}_req_s", s["req_per_s"], "req/s")
            gate.add(f"serving_c{c}_{name}_ttft_p50_ms", s["ttft_p50_ms"], "ms", gated=c == 1 and name == "fusion")
            gate.add(f"serving_c{c}_{name}_ttft_p99_ms", s["ttft_p99_ms"], "ms", gated=False)
            gate.add(f"serving_c{c}_{name}_tpot_p50_ms", s["tpot_p50_ms"], "ms", gated=False)
        if name == "fusion":
            fidelity_cost(gate, server, workload, settings, args)
        server.loop.stop()
    fusion = next(r["value"] for r in gate.rows if r["metric"] == "serving_c16_fusion_req_s")
    full = next(r["value"] for r in gate.rows if r["metric"] == "serving_c16_full_req_s")
    gate.add("serving_c16_fusion_over_full", fusion / full, "x")
    del engine, plain
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def fidelity_cost(gate: Gate, engine: FusionEngine, workload: Workload, settings: dict, args) -> None:
    """Serving c=16 with fidelity shadows on (rate 0.02 and 0.2) beside the same engine with them off,
    interleaved: the throughput a shadow's full prefill takes from users (it runs in spare capacity)."""
    counts = {}
    for rate in (0.0, 0.02, 0.2, 0.0):
        engine.fidelity.sample_rate = rate
        before = sum(e.n for e in engine.fidelity.report().estimates)
        res = run_clients(engine, [workload.request() for _ in range(48)], settings, 16, args.ramp_s)
        s = summarize(res, skip=16)
        deadline = time.monotonic() + 60.0  # the shadows left when the clients stop run in the idle loop
        while engine.fidelity.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        measured = sum(e.n for e in engine.fidelity.report().estimates) - before
        counts.setdefault(rate, []).append((s["req_per_s"], s["tpot_p50_ms"], measured))
    engine.fidelity.sample_rate = 0.0
    off = statistics.mean(r for r, _, _ in counts[0.0])
    for rate in (0.02, 0.2):
        req_s, tpot, measured = counts[rate][0]
        tag = f"fidelity{str(rate).replace('.', '')}"
        gate.add(f"serving_c16_{tag}_over_off", req_s / off, "x", gated=False)
        gate.add(f"serving_c16_{tag}_tpot_p50_ms", tpot, "ms", gated=False)
        gate.add(f"serving_c16_{tag}_shadows", measured, "samples", gated=False)
    gate.add("serving_c16_fidelity_off_req_s", off, "req/s", gated=False)


def ingest_int4(gate: Gate, loaded: LoadedModel, args) -> None:
    rng = np.random.default_rng(11)
    texts = [random_text(loaded.tokenizer, 440, rng) for _ in range(args.int4_chunks + 16)]
    engine = FusionEngine(loaded, EngineConfig(persist=False, kv_format="int4", gpu_cache_bytes=4 << 30))
    engine.precompute(texts[:16])  # warm-up: kernels and quantisers
    sync(engine.device)
    t0 = time.perf_counter()
    engine.precompute(texts[16:])
    sync(engine.device)
    gate.add("ingest_int4_chunks_s", args.int4_chunks / (time.perf_counter() - t0), "chunks/s")
    engine.loop.stop()


def compare(rows: list[dict], baseline_path: Path) -> list[dict]:
    """Each row with its baseline value and whether it dropped past the tolerance."""
    base = {r["metric"]: r["value"] for r in json.loads(baseline_path.read_text())} if baseline_path.is_file() else {}
    for row in rows:
        row["baseline"] = base.get(row["metric"])
        ref = row["baseline"]
        if ref:
            change = (ref / row["value"] if row["unit"] in LOWER_IS_BETTER else row["value"] / ref) - 1
            row["change"] = round(change, 4)
            row["dropped"] = bool(row["gated"] and change < -TOLERANCE)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=["llama3-8b", "tiny"], default="llama3-8b")
    p.add_argument("--tokenizer", help="an HF tokenizer folder (default: the bundled model's, converted)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--contexts", type=int, nargs="+", default=[16384, 32768])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--pool", type=int, default=520, help="serving: chunks in the pool (520 x 512 tokens: 35 GB, 4x the tier)"
    )
    p.add_argument("--chunks", type=int, default=32, help="serving: chunks per request (16K context)")
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--gpu-tier-gib", type=float, default=8.0)
    p.add_argument("--cpu-tier-gib", type=float, default=96.0)
    p.add_argument("--ramp-s", type=float, default=0.15)
    p.add_argument("--int4-chunks", type=int, default=128)
    sections = ["e2e", "serving", "ingest"]
    p.add_argument("--sections", nargs="+", choices=sections, default=sections,
                   help="run only these (a partial run when device time is short; not for a baseline)")  # fmt: skip
    p.add_argument("--update-baseline", action="store_true", help="write this run as the baseline")
    p.add_argument("--against", help="compare with this gate output (a run of the reference code on the same "
                   "machine, e.g. main's, minutes before) instead of the committed baseline")  # fmt: skip
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args()
    if args.update_baseline and len(args.sections) < 3:
        p.error("--update-baseline needs every section")
    if args.update_baseline and args.against:
        p.error("--update-baseline writes the committed baseline: not with --against")
    if args.against and not Path(args.against).is_file():
        p.error(f"--against: no such file {args.against}")
    if args.tokenizer is None:
        from fusionrag_integrations import default_model_path
        from fusionrag_integrations.config import default_model_cache_dir
        from fusionrag_integrations.model.loader import convert_gguf

        args.tokenizer = str(convert_gguf(default_model_path(), default_model_cache_dir()))
    if args.shape == "tiny":  # a CPU smoke run of the script: small everything
        args.contexts, args.repeats, args.pool, args.chunks, args.int4_chunks = [2048], 2, 24, 4, 8
        args.output_tokens, args.gpu_tier_gib = 4, 0.001
    started = time.perf_counter()
    gpu = device_name(torch.device(args.device))
    slug = "".join(w for w in gpu.lower().split() if w.startswith(("h100", "h200", "a100", "l4", "b200"))) or "cpu"
    slug = slug if args.shape == "llama3-8b" else f"{slug}_{args.shape}"
    gate = Gate()
    loaded, hf = build(args)
    if "e2e" in args.sections:
        e2e_ttft(gate, loaded, hf, args)
    del hf
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    if "serving" in args.sections:
        serving(gate, loaded, args)
    if "ingest" in args.sections:
        ingest_int4(gate, loaded, args)
    reference = Path(args.against) if args.against else HERE / "baselines" / f"gate_{slug}.json"
    rows = compare(gate.rows, reference)
    print(f"\n{gpu}, {args.shape}, {time.perf_counter() - started:.0f} s, against {reference}\n")
    print("| metric | value | unit | baseline | change | gated |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        change = f"{r['change']:+.1%}" if "change" in r else "-"
        flag = ("DROP" if r.get("dropped") else "ok") if r["gated"] else "info"
        base = f"{r['baseline']:.4g}" if r["baseline"] else "-"
        print(f"| {r['metric']} | {r['value']:.4g} | {r['unit']} | {base} | {change} | {flag} |")
    out = Path(args.out_dir) / f"gate_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    if args.update_baseline:
        path = HERE / "baselines" / f"gate_{slug}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{k: r[k] for k in ("metric", "value", "unit", "gated")} for r in rows], indent=1))
        print(f"baseline written: {path}")
    dropped = [r["metric"] for r in rows if r.get("dropped")]
    if dropped:
        print(f"\nGATE FAILED: {', '.join(dropped)} fell more than {TOLERANCE:.0%} behind the baseline")
        sys.exit(1)
    print("\ngate passed" if any(r["baseline"] for r in rows) else "\nno baseline for this GPU yet")


if __name__ == "__main__":
    main()

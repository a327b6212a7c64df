"""xgrammar vs llguidance for constrained decoding: what each costs per grammar and per token.

For each grammar kind (JSON schema, any JSON object, regex, choice) and each library: the cold compile
(a new grammar, nothing cached), the per-token mask fill and token accept while a valid answer is
teacher-forced through the matcher (p50 / p99 over the answer's tokens), and applying a batch of masks
to [B, vocab] logits on the device. The tokenizer is the real one the engine serves (`--tokenizer`).

    python3 benchmarks/grammar.py --tokenizer DIR [--device cuda] [--vocab 128256] [--engine]

--engine adds our own mask apply (runtime/grammar.apply_bitmask, what the engine runs) on the same
batch and, on CPU, the bundled SmolLM2's time per output token with and without a JSON schema, greedy
(interleaved repeats, medians).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import device_name, markdown_table, sync

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
CASES = {  # kind -> (spec, a valid answer)
    "json_schema": (PERSON, '{"name": "Alice", "age": 30, "tags": ["engineer", "climber", "reader"]}'),
    "json_object": (None, '{"city": "Paris", "population": 2102650, "rivers": ["Seine"], "capital": true}'),
    "regex": (r"\d{3}-\d{4}( ext\. \d{1,5})?", "555-1234 ext. 42"),
    "choice": (["positive", "negative", "neutral"], "neutral"),
}


def xgrammar_case(tokenizer, vocab: int, kind: str, spec):
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    t0 = time.perf_counter()
    if kind == "json_schema":
        compiled = compiler.compile_json_schema(json.dumps(spec), any_whitespace=False, strict_mode=True)
    elif kind == "json_object":
        compiled = compiler.compile_builtin_json_grammar()
    elif kind == "regex":
        compiled = compiler.compile_regex(spec)
    else:
        compiled = compiler.compile_grammar("root ::= " + " | ".join(json.dumps(c) for c in spec))
    compile_ms = (time.perf_counter() - t0) * 1e3
    matcher = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, vocab)
    return compile_ms, lambda: matcher.fill_next_token_bitmask(mask, 0), matcher.accept_token, mask


def llguidance_case(tokenizer, vocab: int, kind: str, spec):
    import llguidance
    import llguidance.hf
    import llguidance.torch

    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    t0 = time.perf_counter()
    if kind == "json_schema":
        grammar = llguidance.grammar_from("json_schema", json.dumps(spec))
    elif kind == "json_object":
        grammar = llguidance.grammar_from("json_schema", json.dumps({"type": "object"}))
    elif kind == "regex":
        grammar = llguidance.grammar_from("regex", spec)
    else:
        grammar = llguidance.grammar_from("lark", "start: " + " | ".join(json.dumps(c) for c in spec))
    matcher = llguidance.LLMatcher(lltok, grammar)
    assert not matcher.is_error(), matcher.get_error()
    compile_ms = (time.perf_counter() - t0) * 1e3
    mask = llguidance.torch.allocate_token_bitmask(1, vocab)
    fill = lambda: llguidance.torch.fill_next_token_bitmask(matcher, mask, 0)  # noqa: E731
    return compile_ms, fill, matcher.consume_token, mask


def apply_ms(library: str, masks: torch.Tensor, rows: int, vocab: int, device: torch.device) -> float:
    if library == "xgrammar":
        from xgrammar import apply_token_bitmask_inplace
    else:
        from llguidance.torch import apply_token_bitmask_inplace
    logits = torch.randn(rows, vocab, device=device)
    batch = masks.repeat(rows, 1).to(device)
    for _ in range(3):
        apply_token_bitmask_inplace(logits, batch)
    sync(device)
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        apply_token_bitmask_inplace(logits, batch)
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def engine_rows(device: torch.device, rows: int, vocab: int, repeats: int = 5) -> list[dict]:
    from fusionrag_integrations import FusionEngine, default_model_path
    from fusionrag_integrations.runtime.grammar import apply_bitmask

    masks = torch.randint(-(1 << 31), (1 << 31) - 1, (rows, (vocab + 31) // 32), dtype=torch.int64).to(torch.int32)
    logits, masks = torch.randn(rows, vocab, device=device), masks.to(device)
    times = []
    for _ in range(50):
        sync(device)
        t0 = time.perf_counter()
        apply_bitmask(logits.clone(), masks)
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    out = [{"what": f"ours: apply_bitmask, {rows} rows x {vocab} (a clone included)", "ms": statistics.median(times)}]
    if device.type != "cpu":  # the bundled model is a CPU model (its GGUF ships in a pip package)
        return out
    engine = FusionEngine.from_pretrained(default_model_path(), device=str(device))
    ask = [{"role": "user", "content": "Describe a person called Alice as JSON."}]
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "bio": {"type": "string"}}}
    per_token: dict[str, list[float]] = {"free text": [], "json_schema": []}
    for _ in range(repeats):
        for name, fmt in (
            ("free text", None),
            ("json_schema", {"type": "json_schema", "json_schema": {"schema": schema}}),
        ):
            g = engine.generate(ask, chunks=[], max_new_tokens=64, response_format=fmt)
            per_token[name].append(g.stats.decode_ms / max(1, g.usage.completion_tokens - 1))
    out += [{"what": f"SmolLM2 decode ms/token, {name}", "ms": statistics.median(v)} for name, v in per_token.items()]
    return out


def batch_fill_rows(tokenizer, vocab: int, rows: int, steps: int = 32, seed: int = 0) -> list[dict]:
    """A decode step's mask fill for `rows` requests answering {"answer": <string>}, each walked by tokens
    drawn at random from its own mask (what random weights sample): one row after another (the reference)
    vs all rows at once on llguidance's threads (its LLExecutor, as vLLM fills a batch), on the same states."""
    from llguidance import LLExecutor
    from llguidance.torch import fill_next_token_bitmask_par

    from fusionrag_integrations.request import SamplingParams
    from fusionrag_integrations.response_format import ResponseFormat
    from fusionrag_integrations.runtime.grammar import Grammars, apply_bitmask

    fmt = ResponseFormat.json_schema({"type": "object", "properties": {"answer": {"type": "string"}}})
    grammars = Grammars(tokenizer, vocab, frozenset({tokenizer.eos_token_id}))
    constraints = [grammars.constraint(SamplingParams(response_format=fmt)) for _ in range(rows)]
    executor, gen, words = LLExecutor(), torch.Generator().manual_seed(seed), (vocab + 31) // 32
    serial, parallel = [], []
    for _ in range(steps):
        live = [c for c in constraints if not c.done]
        one = torch.empty((len(live), words), dtype=torch.int32)
        t0 = time.perf_counter()
        for i, c in enumerate(live):
            c.fill(one, i)
        t1 = time.perf_counter()
        together = torch.empty((len(live), words), dtype=torch.int32)
        fill_next_token_bitmask_par(executor, [(c.matcher, i) for i, c in enumerate(live)], together)
        t2 = time.perf_counter()
        assert torch.equal(one, together), "the parallel fill differs from the reference"
        serial.append((t1 - t0) * 1e3)
        parallel.append((t2 - t1) * 1e3)
        allowed = apply_bitmask(torch.zeros(len(live), vocab), one).isfinite()
        allowed[:, tokenizer.eos_token_id] = False
        for c, row in zip(live, allowed):
            choices = row.nonzero()[:, 0]
            if choices.numel():
                c.accept(int(choices[torch.randint(0, choices.numel(), (1,), generator=gen)]))

    def q(times: list[float], p: float) -> float:
        return sorted(times)[min(len(times) - 1, int(p * len(times)))]

    ways = (("one row after another", serial), ("llguidance's threads", parallel))
    label = f"mask fill, {rows} rows, %s, ms a step p50 / p99"
    return [{"what": label % name, "ms": f"{q(t, 0.5):.3f} / {q(t, 0.99):.3f}"} for name, t in ways]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocab", type=int, default=0, help="the model's logits width (0: the tokenizer's)")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--out", default="")
    ap.add_argument("--engine", action="store_true", help="also our apply and SmolLM2's TPOT with a grammar")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    vocab = args.vocab or len(tokenizer)
    device = torch.device(args.device)
    rows = []
    for kind, (spec, answer) in CASES.items():
        ids = tokenizer.encode(answer, add_special_tokens=False)
        for library, case in (("xgrammar", xgrammar_case), ("llguidance", llguidance_case)):
            compile_ms, fill, accept, mask = case(tokenizer, vocab, kind, spec)
            fills, accepts = [], []
            for token in ids:
                t0 = time.perf_counter()
                fill()
                t1 = time.perf_counter()
                ok = accept(token)
                fills.append((t1 - t0) * 1e3)
                accepts.append((time.perf_counter() - t1) * 1e3)
                assert ok is not False, f"{library} refused a token of the valid {kind} answer"
            fills.sort()
            p99 = fills[min(len(fills) - 1, int(0.99 * len(fills)))]
            rows.append({
                "kind": kind, "library": library, "compile_ms": compile_ms, "tokens": len(ids),
                "fill_p50_ms": statistics.median(fills), "fill_p99_ms": p99,
                "accept_p50_ms": statistics.median(accepts),
                f"apply_{args.rows}rows_ms": apply_ms(library, mask, args.rows, vocab, device),
            })  # fmt: skip
    print(f"# {device_name(device)}, vocab {vocab}, {args.rows} rows per mask apply")
    print(markdown_table(rows, list(rows[0])))
    extra = batch_fill_rows(tokenizer, vocab, args.rows) + (
        engine_rows(device, args.rows, vocab) if args.engine else []
    )
    if extra:
        print(markdown_table(extra, ["what", "ms"]))
    out = Path(args.out or Path(__file__).parent / f"results/grammar_{device.type}.json")
    out.write_text(json.dumps({"device": device_name(device), "vocab": vocab, "rows": rows, "engine": extra}, indent=1))


if __name__ == "__main__":
    main()

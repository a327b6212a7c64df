"""Run selectors x ratios against full attention on each example; append one JSON line per run.

For every example: precompute its passages, run the `full` baseline (a plain prefill of the
same token sequence, which is the quality ceiling), then each (selector, ratio): first-token
logits -> KL to full and top-1 agreement; 32 greedy tokens -> agreement with full's,
ROUGE-L to full's answer, F1 / exact match to the gold answers; TTFT and the share of chunk
tokens recomputed. Rows already in the output file are skipped, so a run can be resumed.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..engine import FusionEngine
from .data import Example
from .metrics import exact_match, f1_score, kl_divergence, prefix_agreement, rouge_l, teacher_forced_agreement
from .prompts import musique_messages
from .variants import build_selector

METRICS = ("kl", "top1", "agree", "tf_agree", "rougeL", "f1", "em", "ttft_ms", "recomputed")


def run_key(example_id: str, selector: str, ratio: float) -> tuple[str, str, float]:
    return (str(example_id), selector, round(float(ratio), 4))


def completed(path: Path) -> set[tuple[str, str, float]]:
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            done.add(run_key(row["example"], row["selector"], row["ratio"]))
    return done


class NearestPassages:
    """Each passage's k most similar passages of a pool (MiniLM cosine, itself excluded), farthest first:
    the neighbours a vector store with precompute="similar" picks from a collection holding the pool.
    pool None: the example's own passages (its retrieved set: the most optimistic case); a dataset's
    every passage is what a store holding the whole dataset would pick from."""

    def __init__(self, pool: list[str] | None = None) -> None:
        self.pool = list(dict.fromkeys(pool)) if pool is not None else None
        self._pool_embeddings: Any = None  # a torch tensor once the pool is encoded (torch imported lazily)

    def __call__(self, passages: list[str], k: int) -> list[list[str]]:
        import torch

        from ..embeddings import shared_encoder

        encoder = shared_encoder()
        pool = self.pool if self.pool is not None else passages
        if self.pool is None:
            pool_emb = torch.tensor(encoder.encode(pool))
        else:
            if self._pool_embeddings is None:
                self._pool_embeddings = torch.tensor(encoder.encode(pool))
            pool_emb = self._pool_embeddings
        sim = torch.tensor(encoder.encode(passages)) @ pool_emb.T
        index = {text: j for j, text in enumerate(pool)}
        for i, text in enumerate(passages):
            sim[i, index[text]] = float("-inf")
        order = torch.argsort(sim, dim=1, descending=True)[:, :k]
        return [[pool[j] for j in row.tolist()][::-1] for row in order]


def evaluate(
    engine: FusionEngine,
    examples: list[Example],
    selectors: Iterable[str],
    ratios: Iterable[float],
    out_path: Path,
    max_new_tokens: int = 32,
    progress: bool | None = None,
    precompute: str = "standalone",
    neighbors: int = 3,
    nearest: Callable[[list[str], int], list[list[str]]] | None = None,
) -> list[dict]:
    """Append rows for every (example, selector spec, ratio) not yet in out_path; return all rows.

    precompute="similar": each passage's KV is computed after its `neighbors` most similar passages
    (`nearest`, default: of the same example; FusionRAG's offline stage); `full` is unaffected by it.
    Selector specs may name variants (variants.py); rows keep the spec as their selector.
    """
    nearest = nearest or NearestPassages()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = completed(out_path)
    runs = [("full", 1.0), ("none", 0.0)] + [(s, r) for s in selectors if s not in ("full", "none") for r in ratios]
    with out_path.open("a") as out:
        for ex in tqdm(examples, desc="examples", disable=progress is False):
            todo = [(s, r) for s, r in runs if run_key(ex.id, s, r) not in done]
            if not todo:
                continue
            messages = musique_messages(ex)
            if precompute == "similar":
                engine.precompute(ex.passages, neighbors=nearest(ex.passages, neighbors))
            else:
                engine.precompute(ex.passages)
            full_pre = engine.prefill(messages, selector="full", max_new_tokens=max_new_tokens)
            full_logits = full_pre.logits.clone()
            full = engine.decode(full_pre, max_new_tokens=max_new_tokens)
            for selector, ratio in todo:
                chosen = build_selector(engine, selector)
                pre = engine.prefill(messages, selector=chosen, recompute_ratio=ratio, max_new_tokens=max_new_tokens)
                logits = pre.logits.clone()
                gen = full if selector == "full" else engine.decode(pre, max_new_tokens=max_new_tokens)
                s = gen.stats if selector != "full" else full.stats
                chunk_tokens = s.tokens_reused + s.tokens_recomputed
                row = {
                    "example": ex.id,
                    "selector": selector,
                    "ratio": ratio,
                    "kl": kl_divergence(full_logits, logits),
                    "top1": float(full_logits.argmax() == logits.argmax()),
                    "agree": prefix_agreement(full.token_ids, gen.token_ids),
                    "tf_agree": teacher_forced(engine, messages, gen.token_ids, logits),
                    "rougeL": rouge_l(full.text, gen.text),
                    "f1": f1_score(gen.text, ex.answers),
                    "em": exact_match(gen.text, ex.answers),
                    "ttft_ms": pre.stats.ttft_ms,
                    "recomputed": s.tokens_recomputed / max(chunk_tokens, 1),
                    "prompt_tokens": len(pre.token_ids),
                    "chunks_found": s.chunks_found,
                    "text": gen.text,
                }
                out.write(json.dumps(row) + "\n")
                out.flush()
    return [json.loads(line) for line in out_path.read_text().splitlines() if line.strip()]


def teacher_forced(engine: FusionEngine, messages, answer: list[int], first_logits=None, judge=None) -> float:
    """Teacher-forced agreement of `answer` with full attention: a full prefill, then the answer fed back
    one decode step at a time (the path the serving shadow does not take: its check). An empty answer is
    judged on its first token: full attention's likeliest against `first_logits` (the fused one's).
    `judge`: the prefill's arguments when another prefill judges (an escalated request's fused one)."""
    import torch

    from ..model.attention import resolve_kernels
    from ..runtime.decode_step import make_decode_step

    pre = engine.prefill(messages, **(judge or {"selector": "full"}), max_new_tokens=max(len(answer), 1))
    if not answer:
        return float(int(pre.logits.argmax()) == int(first_logits.argmax()))
    step = make_decode_step(engine.model, pre.cache, None, resolve_kernels(engine.config.use_triton, engine.device))
    rows, position = [pre.logits], len(pre.token_ids)
    for token in answer[:-1]:
        rows.append(step(token, position))
        position += 1
    return teacher_forced_agreement(torch.stack(rows), answer)


def summarize(rows: list[dict]) -> list[dict]:
    """Mean of every metric per (selector, ratio), with TTFT relative to full on the same examples."""
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["selector"], row["ratio"])].append(row)
    full_ttft = {r["example"]: r["ttft_ms"] for r in groups.get(("full", 1.0), [])}
    table = []
    for (selector, ratio), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "full", kv[0][0] != "none", kv[0])):
        entry = {"selector": selector, "ratio": ratio, "n": len(rs)}
        for m in METRICS:
            entry[m] = statistics.fmean(r[m] for r in rs)
        speedups = [full_ttft[r["example"]] / r["ttft_ms"] for r in rs if r["example"] in full_ttft]
        entry["ttft_speedup"] = statistics.fmean(speedups) if speedups else float("nan")
        table.append(entry)
    return table


def markdown(table: list[dict]) -> str:
    cols = [
        "selector",
        "ratio",
        "n",
        "kl",
        "top1",
        "agree",
        "rougeL",
        "f1",
        "em",
        "recomputed",
        "ttft_ms",
        "ttft_speedup",
    ]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    return head + "\n".join("| " + " | ".join(fmt(row[c]) for c in cols) + " |" for row in table)

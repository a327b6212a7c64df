"""`chain.batch` of 4 RAG questions on the bundled model (CPU, issue 17): served in one batched schedule
by the continuous-batching engine, against 4 sequential `invoke`s and against `batch` on the
one-at-a-time engine (max_running_requests=1: LangChain's thread pool, requests taking turns).

Each question's prompt carries 4 demo passages (precomputed: fusion on, default selector); 32 new
tokens, greedy. Reports the median wall time of `--repeats` runs, the speed-up, and the scheduler's
rows per decode step during the batch (4 = every step decoded all four).

    python benchmarks/chain_batch.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import device_name, markdown_table  # noqa: E402

from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path  # noqa: E402
from fusionrag_integrations.demo_corpus import PASSAGES, QUESTIONS  # noqa: E402
from fusionrag_integrations.langchain import ChatFusionRAG  # noqa: E402

EXTRA_QUESTION = "When did Voyager 1 cross the heliopause?"


def prompts() -> list[list[tuple[str, str]]]:
    out = []
    for i, question in enumerate([*QUESTIONS, EXTRA_QUESTION]):
        passages = "\n\n".join(PASSAGES[(i + j) % len(PASSAGES)] for j in range(4))
        out.append([("system", "Answer from the passages."), ("human", f"{passages}\n\nQuestion: {question}")])
    return out


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "chain_batch_cpu.json"))
    args = p.parse_args()
    work = prompts()
    cache = tempfile.mkdtemp(prefix="fusionrag-chain-batch-")
    batched = FusionEngine.from_pretrained(default_model_path(), config=EngineConfig(cache_dir=cache))
    turns = FusionEngine(batched.loaded, EngineConfig(cache_dir=cache, max_running_requests=1))
    batched.precompute(PASSAGES, show_progress=False)
    chat = ChatFusionRAG(engine=batched, max_tokens=32)
    chat_turns = ChatFusionRAG(engine=turns, max_tokens=32)
    chat.invoke(work[0])  # warm-up: first-call costs are not timed
    runs = {"sequential invoke": [], "batch (one at a time)": [], "batch (continuous batching)": []}
    rows_per_step = []
    answers = {}
    for _ in range(args.repeats):
        t, answers["sequential"] = timed(lambda: [chat.invoke(m).content for m in work])
        runs["sequential invoke"].append(t)
        t, _ = timed(lambda: chat_turns.batch(work))
        runs["batch (one at a time)"].append(t)
        scheduler = batched.scheduler
        scheduler.steps = scheduler.batched_rows = 0
        t, together = timed(lambda: chat.batch(work))
        runs["batch (continuous batching)"].append(t)
        rows_per_step.append(scheduler.batched_rows / max(scheduler.steps, 1))
        answers["batch"] = [m.content for m in together]
    base = statistics.median(runs["sequential invoke"])
    rows = [
        {"method": name, "wall_s": statistics.median(times), "speedup_vs_sequential": base / statistics.median(times)}
        for name, times in runs.items()
    ]
    rows[-1]["rows_per_decode_step"] = statistics.median(rows_per_step)
    same = answers["batch"] == answers["sequential"]
    print(f"\n{device_name(batched.device)}, SmolLM2-135M, 4 questions x 4 passages, 32 new tokens\n")
    print(markdown_table(rows, ["method", "wall_s", "speedup_vs_sequential", "rows_per_decode_step"]))
    print(f"\nbatched answers identical to sequential ones: {same}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "answers_identical": same}, indent=2))


if __name__ == "__main__":
    main()

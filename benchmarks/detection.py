"""Drop-in detection time per prompt vs the number of stored chunks.

`python benchmarks/detection.py` stores 100 and 10,000 random ~1 KB chunk texts, builds a
prompt of 8 of them between template text, and times ChunkIndex.find (median of 200).
The target: < 5 ms per prompt on CPU, and about the same for 100 and 10,000 chunks.
"""

from __future__ import annotations

import random
import statistics
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fusionrag_integrations.store.detect import ChunkIndex  # noqa: E402


def random_text(rng: random.Random, words: int = 160) -> str:
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(words))


def main() -> None:
    rng = random.Random(0)
    corpus = [random_text(rng) for _ in range(10_000)]
    print("| stored chunks | prompt chars | chunks found | detection ms (median) | p90 ms |")
    print("|---|---|---|---|---|")
    for n in (100, 10_000):
        index = ChunkIndex(window=32)
        for text in corpus[:n]:
            index.add(text)
        chosen = rng.sample(corpus[:n], 8)
        prompt = "<|im_start|>user\nContext information is below.\n---------------------\n" + "\n\n".join(chosen)
        prompt += "\n---------------------\nQuery: what?\nAnswer: <|im_end|>"
        for _ in range(10):
            index.find(prompt)
        times = []
        for _ in range(200):
            t = time.perf_counter()
            found = index.find(prompt)
            times.append((time.perf_counter() - t) * 1e3)
        assert [m.text for m in found] == chosen
        p90 = sorted(times)[int(0.9 * len(times))]
        print(f"| {n:,} | {len(prompt):,} | {len(found)} | {statistics.median(times):.2f} | {p90:.2f} |")


if __name__ == "__main__":
    main()

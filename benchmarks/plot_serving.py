"""Throughput vs p99 time to first token from benchmarks/serving.py's rows, one line per method.

python benchmarks/plot_serving.py [results/serving_gpu.json] [--out plots/serving.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="?", default=str(HERE / "results" / "serving_gpu.json"))
    p.add_argument("--out", default=str(HERE / "plots" / "serving.png"))
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(Path(args.rows).read_text())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tokens in sorted({r["output_tokens"] for r in rows}):
        for method in dict.fromkeys(r["method"] for r in rows):
            points = [r for r in rows if r["method"] == method and r["output_tokens"] == tokens]
            points = sorted((r for r in points if r["load"].startswith("c=")), key=lambda r: int(r["load"][2:]))
            if len(points) < 2:
                continue
            xs, ys = [r["req_per_s"] for r in points], [r["ttft_p99_ms"] / 1e3 for r in points]
            ax.plot(xs, ys, marker="o", label=f"{method}, {tokens} out")
            for r, x, y in zip(points, xs, ys):
                ax.annotate(r["load"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("requests / s (closed loop)")
    ax.set_ylabel("p99 TTFT (s, log)")
    ax.set_yscale("log")
    ax.set_title("16K-token RAG requests, Llama-3.1-8B shape, H100")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

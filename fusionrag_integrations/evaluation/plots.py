"""Plots of a summary table: quality vs recompute ratio per selector, and TTFT speedup vs quality."""

from __future__ import annotations

from pathlib import Path


def plot_summary(table: list[dict], out_dir: Path, title: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    selectors = sorted({r["selector"] for r in table} - {"full", "none"})
    baseline = {r["selector"]: r for r in table if r["selector"] in ("full", "none")}
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric, label in zip(
        axes,
        ("kl", "agree", "f1"),
        ("first-token KL to full (lower is better)", "greedy agreement with full", "F1 vs gold"),
    ):
        for sel in selectors:
            pts = sorted((r["ratio"], r[metric]) for r in table if r["selector"] == sel)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=sel)
        for name, style in (("none", ":"), ("full", "--")):
            if name in baseline:
                ax.axhline(baseline[name][metric], color="gray", linestyle=style, label=name)
        ax.set_xlabel("recompute ratio")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    paths.append(out_dir / "quality_vs_ratio.png")
    fig.savefig(paths[-1], dpi=110)

    fig, ax = plt.subplots(figsize=(6, 4))
    for sel in selectors + [s for s in ("none", "full") if s in baseline]:
        points = [(r["ttft_speedup"], r["kl"], r["ratio"]) for r in table if r["selector"] == sel]
        ax.scatter([p[0] for p in points], [p[1] for p in points], label=sel)
        for x, y, ratio in points:
            if sel not in ("none", "full"):
                ax.annotate(f"{ratio:g}", (x, y), fontsize=6)
    ax.set_xlabel("TTFT speedup over full prefill (same examples)")
    ax.set_ylabel("first-token KL to full")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "ttft_vs_quality.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close("all")
    return paths

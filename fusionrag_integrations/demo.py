"""`make demo`: the bundled SmolLM2 answers questions with streaming output, TTFT and tokens/s."""

from __future__ import annotations

from . import EngineConfig, FusionEngine, default_model_path

QUESTIONS = [
    "What is the capital of France? Answer in one sentence.",
    "Give two tips for writing clear documentation.",
]


def main(model: str | None = None, device: str = "auto") -> int:
    engine = FusionEngine.from_pretrained(model or default_model_path(), device=device, config=EngineConfig())
    print(f"model: {engine.model_name} on {engine.device} ({engine.model.dtype})\n")
    for question in QUESTIONS:
        print(f"Q: {question}\nA: ", end="", flush=True)
        last = None
        for piece in engine.stream([{"role": "user", "content": question}], max_new_tokens=96):
            print(piece.text, end="", flush=True)
            last = piece
        s = last.stats
        tps = last.usage.completion_tokens / (s.decode_ms / 1e3) if s.decode_ms else 0.0
        print(f"\n   [TTFT {s.ttft_ms:.0f} ms | {last.usage.prompt_tokens} prompt tokens | "
              f"{last.usage.completion_tokens} tokens at {tps:.1f} tokens/s | finish: {last.finish_reason}]\n")
    return 0

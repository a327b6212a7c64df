"""Shared fixtures: the bundled SmolLM2 engine is loaded once per test session.

Nothing may reach a model hub: the offline variables are set before transformers loads.
TRITON_INTERPRET must be set before any Triton kernel is defined, so CPU runs exercise the
real kernels; the engine itself uses Triton only on CUDA tensors.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # chromadb

import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"  # no GPU: run the real kernels in Triton's interpreter

from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path  # noqa: E402
from fusionrag_integrations.config import default_model_cache_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Converted models live in the one shared model cache (the GGUF conversion takes ~12 s, once per
# user); chunk KV for tests goes to temporary directories, or to .cache/test for shared engines.
MODELS = default_model_cache_dir()
# Under pytest-xdist each worker process gets its own KV folder: tests on the shared engines count what
# their store computed and loaded, and a second process writing into the same folder would change the counts.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
TEST_CACHE = Path(os.environ.get("FUSIONRAG_TEST_CACHE", REPO / ".cache" / "test")) / _WORKER


def shared_config(**settings) -> EngineConfig:
    """The configuration of the tests' shared engines: the shared model cache, KV under .cache/test."""
    return EngineConfig(**{"cache_dir": TEST_CACHE, "model_cache_dir": MODELS, **settings})


@pytest.fixture(scope="session")
def smol_engine(tmp_path_factory) -> FusionEngine:
    engine = FusionEngine.from_pretrained(default_model_path(), device="cpu", config=shared_config())
    return engine


@pytest.fixture(scope="session")
def hf_smol(smol_engine):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smol_engine.loaded.model_dir, dtype=torch.float32).eval()


TINY_SHAPE = dict(
    vocab_size=49152,  # SmolLM2's tokenizer is copied in, so real text works
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    initializer_range=0.08,  # large enough that logits vary: a near-constant model would hide bugs
)


def tiny_llama(device: str, dtype: torch.dtype):
    """Our model over a random Llama with head_dim 64 (a size the Triton kernels support), no files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from fusionrag_integrations.model.loader import model_from_hf

    # the shared tiny shape, widened so that head_dim = 256 / 4 = 64
    shape = dict(TINY_SHAPE, vocab_size=512, hidden_size=256, intermediate_size=384, max_position_embeddings=4096)
    torch.manual_seed(0)
    return model_from_hf(LlamaForCausalLM(LlamaConfig(**shape)).eval(), torch.device(device), dtype)


def tiny_fused_prompt(model, seed: int = 5, question_tokens: int = 9):
    """A fused-prompt layout over precomputed random chunks: (token ids, chunk entries, chunk starts).
    6 fresh tokens, three chunks of 40, 33 and 47 tokens, then the question."""
    from fusionrag_integrations.runtime.precompute import PrecomputeJob, compute_entries, prefix_kv

    g = torch.Generator().manual_seed(seed)
    chunk_ids = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (40, 33, 47)]
    jobs = [PrecomputeJob(f"c{i}", f"c{i}", [], ids, "standalone") for i, ids in enumerate(chunk_ids)]
    by_key = {e.key: e for batch in compute_entries(model, prefix_kv(model, [1]), jobs, "t", 4096) for e, _ in batch}
    entries = [by_key[job.key] for job in jobs]  # batches come sorted by length
    head = torch.randint(0, 512, (6,), generator=g).tolist()
    question = torch.randint(0, 512, (question_tokens,), generator=g).tolist()
    ids = torch.tensor(head + [t for c in chunk_ids for t in c] + question, device=model.device)
    return ids, entries, [6, 46, 79]


TINY_FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "llama3_rope": (
        "LlamaConfig",
        dict(
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 128,
            },
        ),
    ),
    "llama_tied": ("LlamaConfig", dict(tie_word_embeddings=True)),
    "mistral": ("MistralConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", dict(head_dim=32)),
}


def make_tiny_model_dir(family: str, path: Path, tokenizer_dir: Path) -> Path:
    """A random model of one family saved with save_pretrained, with SmolLM2's tokenizer."""
    import transformers
    from transformers import AutoModelForCausalLM

    cls_name, extra = TINY_FAMILIES[family]
    config = getattr(transformers, cls_name)(**TINY_SHAPE, **extra)
    torch.manual_seed(hash(family) % 1000)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # default init makes norms 1 and biases 0: perturb so they are exercised
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(path)
    for f in [*tokenizer_dir.glob("tokenizer*"), *tokenizer_dir.glob("chat_template*")]:
        shutil.copy(f, path)
    for f in ("special_tokens_map.json", "generation_config.json"):
        if (tokenizer_dir / f).exists() and not (path / f).exists():
            shutil.copy(tokenizer_dir / f, path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, smol_engine) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {f: make_tiny_model_dir(f, root / f, smol_engine.loaded.model_dir) for f in TINY_FAMILIES}


@pytest.fixture(scope="session")
def tiny_engines(tiny_model_dirs) -> dict[str, FusionEngine]:
    return {
        f: FusionEngine.from_pretrained(d, device="cpu", config=shared_config()) for f, d in tiny_model_dirs.items()
    }


# -- RAG material for fusion tests -------------------------------------------------------

DOCS = [
    "The Varn Institute was founded in 1894 by the chemist Amelia Varn in the harbour town of Kellersby. "
    "It is known for its work on crystal growth and for a library of rare minerals from the northern coast.",
    "Kellersby lies at the mouth of the river Tull. Its lighthouse, built from grey granite, was painted red "
    "in 1921 after a ship ran aground in fog, and the town's fish market opens every morning at five.",
    "Amelia Varn studied at the University of Osterholm, where she met the physicist Jonas Brekke. Together "
    "they measured how quickly salt crystals grow in cold water, and their notebooks are kept at the institute.",
    "The password for the archive room of the institute is swordfish. Visitors must sign the register at the "
    "front desk, and no bags or umbrellas are allowed inside the reading room of the archive.",
]
QUESTION = "What is the password for the archive room?"


def rag_messages(docs: list[str], question: str = QUESTION, sep: str = "\n\n") -> list[dict]:
    context = sep.join(docs)
    return [
        {"role": "system", "content": "Answer the question using the passages."},
        {"role": "user", "content": f"Passages:\n{context}\n\nQuestion: {question}\nAnswer:"},
    ]


def engine_on(loaded, cache_dir: Path, **config) -> FusionEngine:
    """A new engine over already-loaded weights with its own (empty) chunk store."""
    return FusionEngine(loaded, EngineConfig(cache_dir=cache_dir, **config))


@pytest.fixture
def smol(smol_engine, tmp_path) -> FusionEngine:
    return engine_on(smol_engine.loaded, tmp_path / "cache")


# -- a real Chroma HTTP server for the vector-store adapters ---------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real Chroma HTTP server (the `chroma run` that ships with chromadb) on a free local port."""
    port = free_port()
    chroma = Path(sys.executable).with_name("chroma")
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(tmp_path_factory.mktemp("chroma-srv")), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import chromadb

    deadline = time.time() + 60
    while True:
        try:
            client = chromadb.HttpClient(host="127.0.0.1", port=port)
            client.heartbeat()
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("chroma server did not start") from None
            time.sleep(0.3)
    yield client
    proc.terminate()
    proc.wait(timeout=10)


# -- helpers shared by adapter tests ---------------------------------------------------------


def tracked_changes() -> str | None:
    """`git status` of tracked files (None outside a git checkout): examples must leave them alone."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except OSError:
        return None
    return out.stdout if out.returncode == 0 else None


def run_example(name: str, tmp_path: Path, plots: bool = True) -> str:
    """Run examples/<name> as a user would (a subprocess, default output paths); return stdout. The plot
    lands in .cache/examples, and no tracked file (the committed plots included) is modified. Answers are
    capped at 12 tokens (`--max-tokens`): what the examples show is reuse, and decoding 48 tokens a call
    was most of their time in the suite."""
    cache = tmp_path / "cache"
    cache.mkdir()
    plot = REPO / ".cache" / "examples" / name.replace(".py", "_ttft.png")
    plot.unlink(missing_ok=True)
    before = tracked_changes()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), "--cache-dir", str(cache), "--max-tokens", "12"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert not plots or plot.stat().st_size > 10_000
    assert tracked_changes() == before
    return out.stdout


class LoopTicker:
    """Counts event-loop turns while async work runs: a blocked loop would not tick."""

    def __init__(self) -> None:
        self.ticks = 0

    async def __aenter__(self) -> LoopTicker:
        import asyncio

        async def tick() -> None:
            while True:
                await asyncio.sleep(0.01)
                self.ticks += 1

        self._task = asyncio.create_task(tick())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()

"""Engine and fusion settings: validated pydantic models with documented defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config_env import with_environment
from .errors import InvalidConfigError

SelectorName = Literal["full", "none", "epic", "cacheblend", "fusionrag", "qcfuse", "cacheclip", "hybrid"]


def default_cache_dir() -> Path:
    """Per-user cache root: $FUSIONRAG_CACHE_DIR, else $XDG_CACHE_HOME/fusionrag, else ~/.cache/fusionrag."""
    import os

    if env := os.environ.get("FUSIONRAG_CACHE_DIR"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "fusionrag"


def default_model_cache_dir() -> Path:
    """Where converted models live, one copy per model for every cache directory of this user:
    $FUSIONRAG_MODEL_CACHE, else <default_cache_dir()>/models."""
    import os

    if env := os.environ.get("FUSIONRAG_MODEL_CACHE"):
        return Path(env).expanduser()
    return default_cache_dir() / "models"


def _expand_path(value, name: str):
    """'~' expanded (a literal './~' folder is never what was meant); an empty path refused (Path('') is
    the working directory, and the cache would spill into it)."""
    if isinstance(value, (str, Path)):
        if not str(value).strip():
            raise ValueError(f"{name} is empty; pass a directory or leave it out for the default")
        return Path(value).expanduser()
    return value


class _Settings(BaseModel):
    """pydantic validation, reported as the package's own InvalidConfigError (pydantic's message,
    which names the field, is kept)."""

    def __init__(self, **data) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise InvalidConfigError(str(err)) from None


class FusionConfig(_Settings):
    """How cached chunks are fused into a prompt and which of their tokens are recomputed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    selector: SelectorName = Field(
        "hybrid",
        description="Token selector used when a call names none (hybrid: the measured best, benchmarks/RESULTS.md "
        "'Quality defaults').",
    )
    recompute_ratio: float = Field(
        0.15, ge=0.0, le=1.0, description="Share of chunk tokens recomputed (question tokens always are)."
    )
    check_layer: int = Field(
        1, ge=0, description="CacheBlend: layer whose K/V deviation ranks tokens (hybrid: measures each chunk's)."
    )
    hybrid_budget: Literal["deviation", "length", "global"] = Field(
        "global",
        description="hybrid: how a request's budget is split over its chunks: by each chunk's measured KV "
        "deviation, by length, or not at all (global: the question's attention over every chunk token).",
    )
    sink_tokens: int = Field(4, ge=0, description="hybrid: each chunk's first tokens, recomputed inside its budget.")
    sink_scope: Literal["context", "all"] = Field(
        "context",
        description="hybrid: recompute the sink tokens of chunks whose KV was computed after other text (context: "
        "similarity-guided or seen in a prompt) or of every chunk (all; measured worse over standalone KV).",
    )
    adaptive_ratio: bool = Field(
        False,
        description="hybrid: scale each request's budget by where its measured KV deviation ranks among the "
        "engine's recent requests (x0.5 to x1.5), so easy prompts recompute less and hard ones more at the same "
        "mean ratio.",
    )
    critical_layer: int | None = Field(
        None,
        ge=0,
        description="QCFuse: probing layer; None = profiled on the first qcfuse request and kept per model in "
        "cache_dir/profiles.json (fusion/probe.py).",
    )
    aux_model: str | None = Field(
        None,
        description="CacheClip: a small model with the same tokenizer (HF directory, .gguf or cached hub id) whose "
        "attention ranks chunk tokens; loaded on first use. None = the model itself.",
    )
    min_chunk_chars: int = Field(
        32, ge=8, description="Texts shorter than this are not indexed for drop-in detection (too ambiguous)."
    )
    fidelity: Literal["off", "guarded"] = Field(
        "off",
        description="Default for requests that name none: guarded = a fused request whose predicted divergence from "
        "full attention reaches guard_threshold is prefilled again in full before its first token (docs/fidelity.md).",
    )
    guard_threshold: float = Field(
        0.7,
        ge=0.0,
        le=1.01,
        description="The guard escalates at this predicted P(diverged) or above (1.01: never); the default leaves "
        "most requests fused under the shipped calibration (fidelity/calibrated.py). fidelity_target moves it.",
    )
    guard_explore: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="Share of flagged requests that the shadow samples which are answered fused anyway, so some "
        "flagged requests are judged on their own fused answers (an escalated one is judged on full attention's).",
    )
    fidelity_target: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Teacher-forced agreement with full attention to hold: the engine moves the guard threshold and "
        "the base recompute ratio (within ratio_bounds) to meet it at the least recompute, from the live shadow "
        "samples. Makes guarded the default and needs fidelity_sample_rate > 0.",
    )
    fidelity_confidence: float = Field(
        0.8,
        ge=0.5,
        lt=1.0,
        description="fidelity_target: the one-sided confidence with which the controller holds the served "
        "agreement at the target (0.5: on average only; higher escalates more while the evidence is thin).",
    )
    ratio_bounds: tuple[float, float] = Field(
        (0.05, 0.5), description="The controller's range for the base recompute ratio (fidelity_target)."
    )

    @field_validator("aux_model", mode="before")
    @classmethod
    def _aux_path(cls, value):
        return str(_expand_path(value, "aux_model")) if isinstance(value, (str, Path)) else value

    @field_validator("ratio_bounds")
    @classmethod
    def _bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] <= value[1] <= 1.0:
            raise ValueError(f"ratio_bounds must be (low, high) with 0 <= low <= high <= 1, got {value}")
        return value


class EngineConfig(_Settings):
    """Everything about an engine that is not the model itself."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="Root of the persistent chunk-KV cache (cache_dir/kv)."
    )
    model_cache_dir: Path = Field(
        default_factory=default_model_cache_dir,
        description="Converted models (GGUF dequantised to safetensors, verified on load), shared by every "
        "cache_dir: one copy per model. Default $FUSIONRAG_MODEL_CACHE or ~/.cache/fusionrag/models.",
    )
    gpu_cache_bytes: int = Field(4 << 30, ge=0, description="Byte budget of the GPU tier of the chunk-KV store.")
    cpu_cache_bytes: int = Field(8 << 30, ge=0, description="Byte budget of the CPU tier of the chunk-KV store.")
    persist: bool = Field(True, description="Write chunk KV to disk under cache_dir/kv (the persistent tier).")
    kv_format: Literal["native", "fp8", "int4"] = Field(
        "native",
        description="How chunk KV is stored in every tier and on disk (kernels/codecs.py): native = the model's dtype; "
        "fp8 = e4m3 with a scale per token and head (52% of bf16); int4 = 4-bit with a scale and zero per 64 "
        "tokens and channel (28%). Dequantised where a chunk is placed. Each format is its own store.",
    )
    kv_backend: str | None = Field(
        None, pattern=r"^(redis|rediss|unix)://", description="A Redis URL (redis://host:6379/0): chunk KV persists "
        "there, shared by every engine that names it, instead of under cache_dir (the local tiers stay in front).",
    )  # fmt: skip
    disk_cache_bytes: int | None = Field(
        None, ge=0, description="Byte budget of the persistent tier: least recently used entries are deleted "
        "after each write batch. None: no limit.",
    )  # fmt: skip
    chunk_prefix: str = Field(
        "",
        description="Text placed after BOS and before every chunk at precompute time. With BOS it forms the shared "
        "prefix that absorbs the attention sink, so a chunk's first tokens do not become one (CacheClip).",
    )
    prefix_cache_entries: int = Field(
        16,
        ge=0,
        description="Prompt prefixes (the text before the first chunk: system prompt, template head) "
        "whose KV is kept in memory and reused exactly; 0 turns prefix caching off.",
    )
    learn_chunks: bool = Field(
        False,
        description="Keep the KV of long paragraphs of every prompt (blank-line separated) so that later prompts "
        "containing them reuse it: chunk reuse with any vector store, no precompute step. Changes tokenisation "
        "at paragraph boundaries (as any chunk boundary does).",
    )
    learn_min_chars: int = Field(200, ge=32, description="Shortest paragraph kept by learn_chunks.")
    precompute_batch_tokens: int = Field(8192, ge=1, description="Token budget of one batched precompute pass.")
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="Serve at most this many tokens (prompt + answer) per request, below the model's window (vLLM's "
        "--max-model-len): longer requests are refused with ContextLengthError. None: the model's window.",
    )
    max_running_requests: int | None = Field(
        None,
        ge=1,
        description="Requests decoded together by the continuous-batching scheduler (serving/scheduler.py); "
        "1 = no scheduler: requests take turns step by step. None: 8 on CPU, 64 on a GPU.",
    )
    max_prefill_tokens: int | None = Field(
        None,
        ge=1,
        description="Prompt tokens computed per scheduler step (a fused prefill counts only what it recomputes): "
        "a longer prefill runs in pieces with a decode step of the running requests between them, and more "
        "waiting prefills are admitted in the next step. None: 8192 on a GPU (a piece of ~0.25 s for an 8B "
        "model), 256 on CPU (about as long there for a small model, where 8192 froze other streams for 20 s).",
    )
    tpot_target_ms: float | None = Field(
        None,
        gt=0,
        description="Time per output token the scheduler protects: while requests decode, a step takes only as "
        "many prefill tokens as fit beside their forward within this target (measured as it runs; at least "
        "15% of the target's time, so prefills still finish). None: max_prefill_tokens every step, which "
        "favours time to first token and throughput.",
    )
    mixed_steps: bool = Field(
        False,
        description="Run a step's prefill slices and its decode rows in one forward (the weights read once; attention "
        "stays per request). Off: each slice and the decode batch run apart, the decode graphed (as fast at 16K).",
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="The share of the GPU's memory this engine may use, weights included (vLLM's name): the running "
        "requests' KV budget is what it leaves after the weights, the GPU tier and 4 GiB of temporaries (never "
        "more than is free). None: 90% of the free memory. A GPU setting; running_kv_bytes, when given, wins.",
    )
    running_kv_bytes: int | None = Field(
        None,
        ge=1,
        description="Memory for the KV caches of running requests: a request that does not fit waits for others "
        "to finish (never an out-of-memory crash). None: 4 GiB on CPU; on a GPU, 90% of what is free when the "
        "engine starts, less the GPU tier (gpu_cache_bytes) and 4 GiB for a prefill's temporaries.",
    )
    fidelity_sample_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of fused requests also run with full attention (a shadow, in the step loop's spare "
        "capacity, after the answer was delivered) to measure how far fused answers drift: first-token KL, "
        "top-1 and teacher-forced agreement, reported by FusionEngine.fidelity_report(), the server's /metrics "
        "and /v1/fidelity. 0: off (nothing is measured or kept).",
    )
    fidelity_max_share: float = Field(
        0.03,
        gt=0.0,
        le=1.0,
        description="The most of the engine's busy time (steps with users' work) that fidelity shadows may take; "
        "beyond it they wait for idle steps, and sampled requests that find 32 waiting are not measured "
        "(report.dropped). Idle steps are the shadows' freely.",
    )
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    use_triton: Literal["auto", "always", "never"] = Field(
        "auto", description="Sparse-attention kernel choice: Triton on CUDA when 'auto'."
    )
    cuda_graph_decode: bool = Field(
        True,
        description="On CUDA, replay the decode step from a CUDA graph (decoding is launch-bound without), captured "
        "on the first token of the first request of each cache layout and shared by later ones; needs the Triton "
        "kernel (head_dim 64 or 128).",
    )
    cuda_graph_probe: bool = Field(
        True,
        description="On CUDA, replay a fused prefill's launch-bound passes (the selection probe, a recompute of at "
        "most 256 positions) from CUDA graphs once a prompt layout recurs (model/graphs.py).",
    )

    @model_validator(mode="before")
    @classmethod
    def _environment(cls, values):  # FUSIONRAG_<FIELD> for the sizes and limits (config_env.py)
        return with_environment(values)

    @field_validator("cache_dir", "model_cache_dir", mode="before")
    @classmethod
    def _expand(cls, value, info):
        return _expand_path(value, info.field_name)

    @model_validator(mode="after")
    def _target_needs_samples(self) -> EngineConfig:
        if self.fusion.fidelity_target is not None and self.fidelity_sample_rate <= 0.0:
            raise ValueError("fusion.fidelity_target needs fidelity_sample_rate > 0 (the controller steers by it)")
        return self

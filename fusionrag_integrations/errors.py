"""The package's exceptions: one base class, one subclass per kind of bad input.

Callers (and the framework adapters) can catch `FusionRAGError` for everything, or a
specific subclass. Subclasses also inherit the builtin a Python user would expect
(`FileNotFoundError`, `ValueError`), so generic handlers keep working.
"""

from __future__ import annotations


class FusionRAGError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelNotFoundError(FusionRAGError, FileNotFoundError):
    """The model path does not exist, or a hub id is not in the local cache."""


class UnsupportedModelError(FusionRAGError, ValueError):
    """The checkpoint's architecture (or its RoPE variant) is not one the engine implements."""


class EmptyPromptError(FusionRAGError, ValueError):
    """The prompt renders to no tokens at all."""


class ContextLengthError(FusionRAGError, ValueError):
    """Prompt tokens plus `max_new_tokens` (or one chunk) do not fit the model's context window."""


class InvalidSamplingError(FusionRAGError, ValueError):
    """A sampling argument is out of range (negative temperature, top_p outside (0, 1], ...)."""


class ChatTemplateError(FusionRAGError, ValueError):
    """Chat messages were given but the tokenizer has no chat template, or a message is malformed."""


class ChunkNotFoundError(FusionRAGError, ValueError):
    """A chunk passed explicitly with `chunks=` does not occur in the prompt."""


class InvalidArgumentError(FusionRAGError, TypeError, ValueError):
    """An argument has the wrong type or value (a string where a list belongs, an unknown selector,
    text that is not valid Unicode). Also a TypeError and a ValueError, so either generic handler works."""


class InvalidConfigError(FusionRAGError, ValueError):
    """EngineConfig / FusionConfig rejected a setting (pydantic's message names the field)."""


class OutOfMemoryError(FusionRAGError, MemoryError):
    """A request needs more device memory than is free even with nothing else running (a shorter
    prompt, fewer new tokens or a smaller GPU tier helps); under load requests wait instead."""


class EngineUnavailableError(FusionRAGError, RuntimeError):
    """The engine could not serve this request: its step loop failed (it restarted; retrying is safe),
    it failed repeatedly and stopped, or it is shutting down. HTTP: 503, which OpenAI clients retry."""

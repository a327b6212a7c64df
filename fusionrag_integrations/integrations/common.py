"""Glue shared by the LangChain and LlamaIndex adapters (and only what is truly the same in both)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..engine import FusionEngine
from ..errors import EngineUnavailableError
from ..request import FUSION_FIELDS, SAMPLING_FIELDS, FusionParams, SamplingParams
from .chunk_keeper import ChunkKeeper
from .logprobs import pop_logprob_settings

T = TypeVar("T")
_engines: dict[tuple[str, str, str], FusionEngine] = {}
_lock = threading.Lock()


def model_path_text(value: Any) -> Any:
    """The adapters' `model=` field accepts what the engine accepts: a str or any os.PathLike
    (a pathlib.Path, e.g. default_model_path()), '~' expanded; stored as text so it serialises."""
    if isinstance(value, os.PathLike):
        return os.fspath(Path(value).expanduser())
    if isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    return value


# the adapters' fields that are engine settings, under the engine's names
ENGINE_FIELDS = {
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_p",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "selector",
    "recompute_ratio",
    "learn_chunks",
}


def request_settings(fields: Mapping[str, Any], call: Mapping[str, Any], stop: Sequence[str]) -> dict[str, Any]:
    """An adapter's fields (in our names) overridden by one call's keyword arguments -> the settings
    objects `engine.stream` takes. `max_tokens` (the OpenAI / LangChain name) means max_new_tokens;
    logprobs (a bool) with top_logprobs, as both frameworks name them, means the engine's count."""
    picked = {k: call[k] for k in (*SAMPLING_FIELDS, *FUSION_FIELDS, "top_logprobs") if k in call}
    values = pop_logprob_settings({**fields, **picked})
    values["max_new_tokens"] = call.get("max_new_tokens", call.get("max_tokens", fields["max_new_tokens"]))
    values["stop"] = list(stop)
    return {
        "sampling": SamplingParams(**{k: values[k] for k in SAMPLING_FIELDS if k in values}),
        "fusion": FusionParams(**{k: values.get(k) for k in FUSION_FIELDS}),
    }


def retrying(start: Callable[[], Iterator[T]], retries: int) -> Iterator[T]:
    """The stream `start()` returns, started again (up to `retries` times) when the engine answers
    EngineUnavailableError before its first piece: its step loop failed and restarted, and a request
    that produced nothing is safe to send again. Once a piece is out, an error is the caller's."""
    for attempt in range(retries + 1):
        started = False
        try:
            for item in start():
                started = True
                yield item
            return
        except EngineUnavailableError:
            if started or attempt == retries:
                raise


def shared_engine(model: str, device: str = "auto", dtype: str = "auto") -> FusionEngine:
    """One engine per (model, device, dtype) per process: framework model objects are constructed
    often (chains, standard tests), and each engine holds a model's weights and its chunk store."""
    key = (str(model), str(device), str(dtype))
    with _lock:
        if key not in _engines:
            _engines[key] = FusionEngine.from_pretrained(model, device=device, dtype=dtype)
        return _engines[key]


PRECOMPUTE_MODES = ("standalone", "similar")


def store_engine(engine: Any, server: str | None, api_key: str | None, store: str, llm: str) -> ChunkKeeper:
    """A vector store's engine: the local one given, or a `fusionrag serve` server's chunk API."""
    if engine is not None and server is not None:
        raise ValueError(f"{store}: give engine= or server=, not both")
    if server is not None:
        from .remote import RemoteEngine

        return RemoteEngine(server, api_key)
    if engine is None:
        raise ValueError(
            f"{store} needs engine= (a FusionEngine, e.g. {llm}(...).engine) or server= (a fusionrag serve URL)"
        )
    if not isinstance(engine, ChunkKeeper):
        raise TypeError(f"{store}: engine= must be a FusionEngine (a ChunkKeeper), got {type(engine).__name__}")
    return engine


def check_precompute_mode(mode: str, engine: ChunkKeeper | None, store: str, llm: str) -> None:
    """The vector stores' shared constructor checks, with the framework's own class names in the messages."""
    if engine is None:
        raise ValueError(f"{store} needs engine= (a FusionEngine, e.g. {llm}(...).engine)")
    if mode not in PRECOMPUTE_MODES:
        raise ValueError(f"precompute must be one of {PRECOMPUTE_MODES}, got {mode!r}")

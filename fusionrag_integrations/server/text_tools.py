"""POST /tokenize and /detokenize (vLLM's routes: count a prompt's tokens, check what a chat template
makes of messages, read token ids back, all without generating) and POST /v1/embeddings (OpenAI's:
sentence embeddings from the bundled MiniLM, or the model the server was given with
--embedding-model, loaded on first use), so a remote vector store needs no embedding model of its own.
Tokenizing uses the generation path's own rendering: /tokenize's count is the prompt_tokens a chat or
completion request for the same input reports."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import Field, model_validator

from ..engine import FusionEngine
from ..fusion.prompt import encode_text, render_prompt
from .engine_calls import in_thread
from .errors import APIError
from .openai_format import chat_prompt
from .schemas import ChatCompletionRequest, ChatMessage, Int, _Body
from .settings import ServerSettings


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[Int] = Field(max_length=1 << 20)


class EmbeddingsRequest(_Body):
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int | None = Field(None, ge=1)
    user: str | None = None


def register(app: FastAPI, engine: FusionEngine, model_name: str, settings: ServerSettings) -> None:
    tokenizer = engine.tokenizer
    embedding_path = Path(settings.embedding_model) if settings.embedding_model else None
    embedding_name = embedding_path.name if embedding_path else "all-MiniLM-L6-v2"

    def check_model(name: str | None, served: str) -> None:
        if name is not None and name != served:
            raise APIError(
                404, f"the model {name!r} does not exist here; this route serves {served!r}", "model_not_found", "model"
            )

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict:
        check_model(body.model, model_name)
        if body.messages is not None:
            request = ChatCompletionRequest(model=model_name, messages=body.messages, tools=body.tools)
            try:
                messages, extra = chat_prompt(request, tokenizer)
            except (ValueError, KeyError, TypeError) as err:
                raise APIError(400, f"messages: {err}", "invalid_value", "messages") from None
            text, special = render_prompt(tokenizer, messages, extra.get("tools"))
        else:
            assert body.prompt is not None  # exactly one of the two (the validator)
            text, special = render_prompt(tokenizer, body.prompt)
        ids = encode_text(tokenizer, text, special)
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.context_window}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict:
        check_model(body.model, model_name)
        bad = [t for t in body.tokens if not 0 <= t < len(tokenizer)]
        if bad:
            raise APIError(
                400,
                f"tokens: {bad[:5]} are not ids of this tokenizer (0 to {len(tokenizer) - 1})",
                "invalid_value",
                "tokens",
            )
        return {"prompt": tokenizer.decode(body.tokens)}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsRequest) -> dict:
        check_model(body.model, embedding_name)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if any(not isinstance(t, str) or not t for t in texts):
            raise APIError(400, "input: every input must be a non-empty string", "invalid_value", "input")
        encoder = await in_thread(lambda: _encoder(embedding_path))
        if body.dimensions is not None and body.dimensions != encoder.dimension:
            raise APIError(
                400,
                f"dimensions: this model's embeddings have {encoder.dimension} (it cannot shorten them)",
                "invalid_value",
                "dimensions",
            )
        vectors = await in_thread(lambda: encoder.encode(texts))
        tokens = sum(
            len(encoder.tokenizer(t, truncation=True, max_length=encoder.max_length)["input_ids"]) for t in texts
        )
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": embedding_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _encoder(path: Path | None):
    from ..embeddings import shared_encoder  # transformers' encoder: loaded on first use only

    return shared_encoder(path)


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    """OpenAI's base64 form: the float32 little-endian bytes, base64-encoded."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

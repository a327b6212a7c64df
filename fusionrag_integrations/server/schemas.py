"""The OpenAI request bodies the server accepts, validated by pydantic (a bad field is a 400 with the
field named, before any compute). Unknown fields are ignored, as OpenAI-compatible servers do, so
clients that send `user`, `logprobs: false` or `frequency_penalty: 0` keep working; `selector`,
`recompute_ratio` and `chunks` are our extra fields."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def text(self) -> str:
        """Text parts joined (images and audio are not supported by a text model: refused)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"only text content parts are supported, got {part.get('type')!r}")
            parts.append(part["text"])
        return "".join(parts)


class _Generation(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    selector: str | None = None  # ours: fusion settings per request
    recompute_ratio: float | None = Field(None, ge=0.0, le=1.0)
    chunks: list[str] | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        if isinstance(self.tool_choice, dict):
            name = self.tool_choice.get("function", {}).get("name")
            if not name or name not in {t.get("function", {}).get("name") for t in self.tools or []}:
                raise ValueError("tool_choice names no tool of the request")
        return self


class CompletionRequest(_Generation):
    prompt: str | list[str]

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: one prompt per request")
        return self

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ChunksRequest(_Body):
    """stream: progress events (server-sent) after every `batch_size` texts, then the result."""

    texts: list[str] = Field(min_length=1)
    neighbors: list[list[str]] | None = None
    stream: bool = False
    batch_size: int = Field(default=64, ge=1, le=4096)

    @model_validator(mode="after")
    def _aligned(self) -> ChunksRequest:
        if self.neighbors is not None and len(self.neighbors) != len(self.texts):
            raise ValueError("neighbors needs one list per text")
        return self


class ChunkKeysRequest(_Body):
    texts: list[str] = Field(min_length=1)


class ForgetRequest(_Body):
    """Forget by keys (what `keys` returned) or by texts (every stored entry of each)."""

    keys: list[str] | None = None
    texts: list[str] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ForgetRequest:
        if not self.keys and not self.texts:
            raise ValueError("give keys or texts")
        return self

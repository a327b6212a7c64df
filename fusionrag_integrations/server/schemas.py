"""The OpenAI request bodies the server accepts, validated by pydantic (a bad field is a 400 with the
field named, before any compute). Unknown fields are ignored, as OpenAI-compatible servers do, so
clients that send `user`, `logprobs: false` or `frequency_penalty: 0` keep working; `selector`,
`recompute_ratio` and `chunks` are our extra fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# numbers are numbers: `true` is not 1 (pydantic's lax mode would take it)
Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]


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

    @field_validator("tool_calls")
    @classmethod
    def _calls(cls, calls: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, call in enumerate(calls or []):
            function = call.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ValueError(f"tool_calls[{i}] needs a function with a name")
            if not isinstance(function.get("arguments", "{}"), (str, dict)):
                raise ValueError(f"tool_calls[{i}].function.arguments must be a JSON string")
        return calls

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
    max_tokens: Int | None = Field(None, ge=1)
    temperature: Float = Field(1.0, ge=0.0, le=2.0)
    top_p: Float = Field(1.0, gt=0.0, le=1.0)
    seed: Int | None = Field(None, ge=-(1 << 63), lt=1 << 64)
    stop: str | list[str] | None = None
    n: Int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    selector: str | None = None  # ours: fusion settings per request
    recompute_ratio: Float | None = Field(None, ge=0.0, le=1.0)
    chunks: list[str] | None = None
    cache_salt: str | None = None  # chunks are reused only among requests with the same salt (vLLM's name)
    fidelity: Literal["off", "guarded"] | None = None  # guarded: full prefill when divergence is predicted

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None

    @field_validator("tools")
    @classmethod
    def _tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, tool in enumerate(tools or []):
            function = tool.get("function")
            if tool.get("type", "function") != "function" or not isinstance(function, dict):
                raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
            if not isinstance(function.get("name"), str) or not function["name"]:
                raise ValueError(f"tools[{i}].function needs a name")
        return tools

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        names = {t["function"]["name"] for t in self.tools or []}
        choice = self.tool_choice
        if isinstance(choice, dict):
            function = choice.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if choice.get("type") != "function" or not isinstance(name, str):
                raise ValueError("tool_choice must be none, auto, required or {'type': 'function', 'function': "
                                 "{'name': ...}}")  # fmt: skip
            if name not in names:
                raise ValueError(f"tool_choice names {name!r}, which is no tool of the request")
        if choice == "required" and not names:
            raise ValueError("tool_choice is 'required' but the request has no tools")
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
    batch_size: Int = Field(default=64, ge=1, le=4096)
    cache_salt: str | None = None

    @model_validator(mode="after")
    def _aligned(self) -> ChunksRequest:
        if self.neighbors is not None and len(self.neighbors) != len(self.texts):
            raise ValueError("neighbors needs one list per text")
        return self


class ChunkKeysRequest(_Body):
    texts: list[str] = Field(min_length=1)
    cache_salt: str | None = None


class ForgetRequest(_Body):
    """Forget by keys (what `keys` returned) or by texts (every stored entry of each)."""

    keys: list[str] | None = None
    texts: list[str] | None = None
    cache_salt: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ForgetRequest:
        if not self.keys and not self.texts:
            raise ValueError("give keys or texts")
        return self

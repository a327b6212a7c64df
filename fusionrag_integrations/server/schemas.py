"""The OpenAI request bodies the server accepts, validated by pydantic (a bad field is a 400 with the
field named, before any compute). A field we do not honour is refused by name, never dropped:
OpenAI's fields that ask for something we do not do (audio, predicted outputs, web search, ...) are
accepted only at the value that asks for nothing, and a field OpenAI does not
define (a typo, another server's extension) is refused. Fields that change nothing a client could
observe here (`user`, `metadata`, ...) are accepted. `selector`, `recompute_ratio`, `chunks`,
`cache_salt` and `fidelity` are our extra fields; `top_k`, `min_p`, `repetition_penalty` and
`guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` are vLLM's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

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


# OpenAI fields that change nothing a client could observe here (identifiers for abuse tracking, tags,
# routing hints)
METADATA = frozenset({"user", "metadata", "safety_identifier", "prompt_cache_key"})
# OpenAI's (and vLLM's) fields we do not honour, with the values that ask for nothing: anything else
# is refused by name. None stands for "not sent".
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "modalities": (None, ["text"]),
    "store": (None, False),
    "parallel_tool_calls": (None, True),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None,),
    "service_tier": (None, "auto", "default"),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
    "functions": (None,),
    "function_call": (None,),
    "moderation": (None,),
    "prompt_cache_options": (None,),  # our prefix and chunk caches are automatic, with no per-request options
    "prompt_cache_retention": (None,),
}


def refused(field: str, message: str) -> PydanticCustomError:
    """A refusal that names its field, which the error's `param` reports (errors.py)."""
    # `message` goes in as context, substituted last: braces a client sent are never read as a template
    return PydanticCustomError("refused", "{message}", {"param": field, "message": message})


def _same(value: Any, neutral: Any) -> bool:
    """Equal and of the same kind (True is not 1 here; 0 and 0.0 are one number)."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return isinstance(value, bool) and isinstance(neutral, bool) and value == neutral
    return value == neutral


def refuse_what_is_not_honoured(
    data: Any, fields: Iterable[str], neutral: Mapping[str, tuple[Any, ...]] = NEUTRAL, metadata=METADATA
) -> Any:
    """A body's fields checked by name before validation: one that is neither a field of the schema nor
    metadata is refused, and one of `neutral` is taken only at a value that asks for nothing."""
    if not isinstance(data, dict):
        return data
    fields = set(fields)
    unknown = sorted(k for k in data if k not in fields and k not in metadata and k not in neutral)
    if unknown:
        raise refused(
            unknown[0],
            f"unsupported field(s): {', '.join(map(repr, unknown))}; this server refuses what it does not honour",
        )
    for name, values in neutral.items():
        if name in data and name not in fields and not any(_same(data[name], n) for n in values):
            shown = ", ".join(repr(n) for n in values if n is not None) or "none"
            raise refused(name, f"{name}={data[name]!r} is not supported (accepted: {shown})")
    return data


class _Generation(_Body):
    @model_validator(mode="before")
    @classmethod
    def _refuse_what_is_not_honoured(cls, data: Any) -> Any:
        return refuse_what_is_not_honoured(data, cls.model_fields)

    model: str
    max_tokens: Int | None = Field(None, ge=1)
    temperature: Float = Field(1.0, ge=0.0, le=2.0)
    top_p: Float = Field(1.0, gt=0.0, le=1.0)
    seed: Int | None = Field(None, ge=-(1 << 63), lt=1 << 64)
    stop: str | list[str] | None = None
    n: Int = Field(1, ge=1, le=16, description="choices, sampled independently (seed + i for choice i)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: Int | None = Field(None, ge=-1, description="vLLM's extension: -1 or 0 = off")
    presence_penalty: Float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: Float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: Float = Field(1.0, gt=0.0, le=10.0, description="vLLM's extension: 1 = off")
    min_p: Float = Field(0.0, ge=0.0, le=1.0, description="vLLM's extension: 0 = off")
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    response_format: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None  # vLLM's: the answer is JSON of this schema
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None  # a Lark grammar
    selector: str | None = None  # ours: fusion settings per request
    recompute_ratio: Float | None = Field(None, ge=0.0, le=1.0)
    chunks: list[str] | None = None
    cache_salt: str | None = None  # chunks are reused only among requests with the same salt (vLLM's name)
    fidelity: Literal["off", "guarded"] | None = None  # guarded: full prefill when divergence is predicted

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def logprob_count(self) -> int | None:
        """Alternatives to report per token (None: no logprobs); each endpoint spells the field its way."""
        raise NotImplementedError


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: Int | None = Field(None, ge=0, le=20)
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
                raise ValueError(
                    "tool_choice must be none, auto, required or {'type': 'function', 'function': {'name': ...}}"
                )
            if name not in names:
                raise ValueError(f"tool_choice names {name!r}, which is no tool of the request")
        if choice == "required" and not names:
            raise ValueError("tool_choice is 'required' but the request has no tools")
        if self.top_logprobs and not self.logprobs:  # 0 asks for nothing
            raise ValueError("top_logprobs: set logprobs to true to use it")
        return self

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


MAX_PROMPTS = 64  # a completions request's prompts: each with its n choices, all queued at once


class CompletionRequest(_Generation):
    prompt: str | list[str] = Field(
        description=f"one text, or a list of 1 to {MAX_PROMPTS} answered together (choice i x n + j answers prompt i)"
    )
    logprobs: Int | None = Field(None, ge=0, le=20, description="the likeliest alternatives per token")

    @field_validator("prompt", mode="before")
    @classmethod
    def _texts(cls, prompt: Any) -> Any:
        """Token-id prompts (a list of ints, or of lists) are refused by name: the engine reads text, and
        decoding ids back to text would not give the same ids again."""
        if isinstance(prompt, list) and any(isinstance(p, (int, list)) for p in prompt):
            raise ValueError("token ids are not supported: send the prompt as text")
        if isinstance(prompt, list) and not 1 <= len(prompt) <= MAX_PROMPTS:
            raise ValueError(f"a list of 1 to {MAX_PROMPTS} prompts, got {len(prompt)}")
        return prompt

    def texts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def logprob_count(self) -> int | None:
        return self.logprobs


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

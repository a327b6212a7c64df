"""FusionRAGLLM: a LlamaIndex LLM over FusionEngine.

Drop-in for `VectorStoreIndex.as_query_engine(llm=...)` and chat engines: the engine finds
the retrieved node texts inside the prompt LlamaIndex builds and reuses their cached KV.
Chat goes through the tokenizer's own chat template (is_chat_model=True, so query engines
send messages). Usage comes back OpenAI-style in `raw["usage"]` (LlamaIndex's
TokenCountingHandler reads it) with the fusion stats beside it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.program.function_program import FunctionCallingProgram, get_function_tool
from pydantic import AliasChoices, ConfigDict, Field, PrivateAttr, field_validator

from ..engine import FusionEngine
from ..inputs import check_stop
from ..integrations.common import (
    ENGINE_FIELDS,
    model_path_text,
    request_settings,
    shared_engine,
)
from ..integrations.tools import parse_tool_calls, prompt_with_tools, template_supports_tools, tool_call_format
from ..outputs import GenerationChunk
from ..threads import iterate_in_thread, run_in_thread
from . import stats as query_stats
from .messages import checked_messages, to_engine_messages
from .responses import logprobs_of, raw_of


class FusionRAGLLM(FunctionCallingLLM):
    """LlamaIndex LLM with chunk-KV reuse. Pass `engine=` (a FusionEngine) or `model=` (a local HF
    directory, a .gguf file or a cached hub id; default: the bundled SmolLM2).

    .. code-block:: python

        from fusionrag_integrations.llamaindex import FusionRAGLLM
        llm = FusionRAGLLM(model="path/to/model", max_new_tokens=256)
        query_engine = index.as_query_engine(llm=llm, similarity_top_k=4)
        response = query_engine.query("...")
        response.source_nodes, response.metadata
    """

    # a field we do not have is refused by name (a typo would otherwise change nothing, silently)
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str | None = Field(default=None, description="HF directory, .gguf file or cached hub id")
    model_name: str = Field(default="", description="Shown in metadata; defaults to the engine's model name")
    device: str = "auto"
    dtype: str = "auto"
    max_new_tokens: int = Field(
        default=256, gt=0, validation_alias=AliasChoices("max_new_tokens", "max_tokens"),
        description="also accepted as max_tokens (OpenAI's and OpenAILike's name)",
    )  # fmt: skip
    context_window: int | None = Field(
        default=None,
        gt=0,
        description="Cap below the model's window (LlamaIndex "
        "packs retrieved text to fit it); default: the model's own",
    )
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    logit_bias: dict[int, float] | None = None
    logprobs: bool = Field(default=False, description="each token's log-probability in the response's logprobs")
    top_logprobs: int = Field(default=0, ge=0, le=20, description="the likeliest alternatives per token")
    stop: list[str] = Field(default_factory=list)
    selector: str | None = None
    recompute_ratio: float | None = None
    learn_chunks: bool | None = Field(
        default=None, description="Keep long prompt paragraphs' KV (any vector store); None: the engine's config"
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_path(cls, value: Any) -> Any:
        return model_path_text(value)

    _engine: FusionEngine = PrivateAttr()

    def __init__(self, engine: FusionEngine | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if engine is None:
            from .. import default_model_path

            engine = shared_engine(self.model or str(default_model_path()), self.device, self.dtype)
        self._engine = engine
        query_stats.install()
        if not self.model_name:
            self.model_name = engine.model_name

    @classmethod
    def class_name(cls) -> str:
        return "FusionRAGLLM"

    @property
    def engine(self) -> FusionEngine:
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        window = min(self.context_window or self._engine.context_window, self._engine.context_window)
        return LLMMetadata(
            context_window=window,
            num_output=self.max_new_tokens,
            model_name=self.model_name,
            is_chat_model=True,
            is_function_calling_model=True,
        )

    # -- the engine call ---------------------------------------------------------------------

    def _pieces(self, prompt: str | list[dict], kwargs: dict[str, Any]) -> Iterator[GenerationChunk]:
        stop = [*check_stop(kwargs.get("stop")), *self.stop]
        settings = request_settings(self.model_dump(include=ENGINE_FIELDS), kwargs, stop)
        return self._engine.stream(prompt, tools=kwargs.get("template_tools"), **settings)

    def _completions(self, prompt: str | list[dict], kwargs: dict[str, Any]) -> Iterator[CompletionResponse]:
        text, logprobs = "", []
        for piece in self._pieces(prompt, kwargs):
            text += piece.text
            mine = logprobs_of(piece, self._engine.tokenizer)
            logprobs += mine or []
            if piece.finish_reason is None:
                if piece.text:
                    yield CompletionResponse(text=text, delta=piece.text, logprobs=mine)
            else:
                raw = raw_of(piece)
                query_stats.record(raw["stats"])
                yield CompletionResponse(text=text, delta=piece.text, raw=raw, additional_kwargs=dict(raw),
                                         logprobs=logprobs or None)  # fmt: skip

    def _prompt(self, prompt: str, formatted: bool) -> str | list[dict]:
        """An unformatted completion prompt goes through the chat template as a user turn (an instruct
        model expects its template); formatted=True sends the text exactly as given."""
        if formatted or not getattr(self._engine.tokenizer, "chat_template", None):
            return prompt
        return [{"role": "user", "content": prompt}]

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        *_, last = self._completions(self._prompt(prompt, formatted), kwargs)
        return last

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        yield from self._completions(self._prompt(prompt, formatted), kwargs)

    @staticmethod
    def _to_chat(r: CompletionResponse) -> ChatResponse:
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=r.text),
            delta=r.delta,
            raw=r.raw,
            additional_kwargs=r.additional_kwargs,
            logprobs=r.logprobs,
        )

    def _chat_prompt(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> list[dict]:
        native = template_supports_tools(self._engine.tokenizer)
        choice = "required" if kwargs.get("tool_required") else kwargs.get("tool_choice")
        tools = kwargs.get("tools")
        prompt, kwargs["template_tools"] = prompt_with_tools(
            to_engine_messages(messages, native), tools, choice, native
        )
        if kwargs.get("response_format") is None:  # a required call (structured_predict's) is constrained to it
            kwargs["response_format"] = tool_call_format(tools, choice, native)
        return prompt

    def _with_tool_calls(self, response: ChatResponse, kwargs: dict[str, Any]) -> ChatResponse:
        tools = kwargs.get("tools")
        if tools:
            parsed = parse_tool_calls(response.message.content or "", {t["function"]["name"] for t in tools})
            if parsed.tool_calls:
                response.message.content = parsed.content
                response.message.additional_kwargs["tool_calls"] = parsed.tool_calls
        return response

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(checked_messages(messages), **kwargs)

    @llm_chat_callback()
    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        *_, last = self._completions(self._chat_prompt(messages, kwargs), kwargs)
        return self._with_tool_calls(self._to_chat(last), kwargs)

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat(checked_messages(messages), **kwargs)

    @llm_chat_callback()
    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        for r in self._completions(self._chat_prompt(messages, kwargs), kwargs):
            yield self._with_tool_calls(self._to_chat(r), kwargs) if r.raw else self._to_chat(r)

    # -- function calling (agents): tools to the template or an instruction, calls parsed back -------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                user_msg if isinstance(user_msg, ChatMessage) else ChatMessage(role=MessageRole.USER, content=user_msg)
            )
        return {
            "messages": messages,
            "tools": [t.metadata.to_openai_tool() for t in tools],
            "tool_required": tool_required,
            **kwargs,
        }

    def _structured_stream_call(self, output_cls, prompt, llm_kwargs=None, **prompt_args):
        """LlamaIndex streams its function-calling program without requiring the call (the non-streaming one
        requires it); here the output class's tool is named, so the answer is constrained to the call."""
        return _named_program(self, output_cls, prompt).stream_call(llm_kwargs=llm_kwargs, **prompt_args)

    async def _structured_astream_call(self, output_cls, prompt, llm_kwargs=None, **prompt_args):
        return await _named_program(self, output_cls, prompt).astream_call(llm_kwargs=llm_kwargs, **prompt_args)

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not calls and error_on_no_tool_call:
            raise ValueError(f"expected a tool call from the model, got: {response.message.content!r}")
        return [ToolSelection(tool_id=c["id"], tool_name=c["name"], tool_kwargs=c["args"]) for c in calls]

    # -- real async: the engine works in a thread; the event loop keeps running ----------------

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await run_in_thread(lambda: list(self._completions(self._prompt(prompt, formatted), kwargs))[-1])

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        source = self._completions(self._prompt(prompt, formatted), kwargs)

        async def gen() -> AsyncGenerator[CompletionResponse, None]:
            async for r in iterate_in_thread(source):
                yield r

        return gen()

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await self._achat(checked_messages(messages), **kwargs)

    @llm_chat_callback()
    async def _achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        prompt = self._chat_prompt(messages, kwargs)
        last = await run_in_thread(lambda: list(self._completions(prompt, kwargs))[-1])
        return self._with_tool_calls(self._to_chat(last), kwargs)

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return await self._astream_chat(checked_messages(messages), **kwargs)

    @llm_chat_callback()
    async def _astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        source = self._completions(self._chat_prompt(messages, kwargs), kwargs)

        async def gen() -> AsyncGenerator[ChatResponse, None]:
            async for r in iterate_in_thread(source):
                yield self._with_tool_calls(self._to_chat(r), kwargs) if r.raw else self._to_chat(r)

        return gen()


def _named_program(llm: FusionRAGLLM, output_cls: type, prompt) -> FunctionCallingProgram:
    name = get_function_tool(output_cls).metadata.name
    return FunctionCallingProgram.from_defaults(output_cls=output_cls, prompt=prompt, llm=llm, tool_choice=name)

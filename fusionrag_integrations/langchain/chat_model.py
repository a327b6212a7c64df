"""ChatFusionRAG: a LangChain chat model over FusionEngine.

Drop-in: an existing chain (retriever | format_docs | prompt | llm | parser) keeps working;
the engine finds the retrieved chunks inside the rendered prompt and reuses their cached KV.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.base import LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, field_validator, model_validator

from ..engine import FusionEngine
from ..errors import FusionRAGError, InvalidArgumentError
from ..inputs import check_stop
from ..integrations.common import (
    ENGINE_FIELDS,
    model_path_text,
    request_settings,
    retrying,
    shared_engine,
)
from ..integrations.logprobs import chat_logprobs
from ..integrations.tools import parse_tool_calls, prompt_with_tools, template_supports_tools, tool_call_format
from ..outputs import GenerationChunk
from ..threads import iterate_in_thread, run_in_thread
from .messages import to_engine_messages
from .responses import final_chunk, tool_result_chunk
from .structured import structured_output


class ChatFusionRAG(BaseChatModel):
    """Chat model with chunk-KV reuse. Pass `engine=` (a FusionEngine) or `model=` (a local HF
    directory, a .gguf file or a cached hub id; default: the bundled SmolLM2).

    Setup:
        pip install fusionrag-integrations[langchain]

    Instantiate:
        .. code-block:: python

            from fusionrag_integrations.langchain import ChatFusionRAG
            llm = ChatFusionRAG(model="path/to/model", temperature=0, max_tokens=256)

    Invoke / stream / async:
        .. code-block:: python

            llm.invoke("Hello").content
            for chunk in llm.stream("Hello"): print(chunk.content, end="")
            await llm.ainvoke("Hello")

    Reuse statistics are in ``response_metadata["stats"]``; prompt tokens whose cached KV was
    reused are reported as ``usage_metadata["input_token_details"]["cache_read"]``.
    """

    # a field we do not have is refused by name (a typo would otherwise change nothing, silently)
    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, extra="forbid")

    engine: FusionEngine | None = Field(default=None, exclude=True)
    model: str | None = None
    model_name: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    temperature: float = 0.0
    max_tokens: int = 256
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    logit_bias: dict[int, float] | None = None
    logprobs: bool | None = None  # each token's log-probability in response_metadata["logprobs"], as ChatOpenAI
    top_logprobs: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = None
    max_retries: int = Field(2, ge=0)  # a request the engine could not start (its loop restarted) is sent again
    streaming: bool = False
    selector: str | None = None
    recompute_ratio: float | None = None
    learn_chunks: bool | None = None  # keep long prompt paragraphs' KV (any vector store); None: the engine's config

    @field_validator("model", mode="before")
    @classmethod
    def _model_path(cls, value: Any) -> Any:
        return model_path_text(value)

    @model_validator(mode="before")
    @classmethod
    def _api_key_has_no_effect(cls, values: Any) -> Any:
        """LangChain's standard parameters include api_key, so it is accepted, but never silently: the model
        runs in this process and takes no key (a `fusionrag serve` server: ChatOpenAI(base_url=...))."""
        if isinstance(values, dict) and values.pop("api_key", None) is not None:
            warnings.warn("ChatFusionRAG: api_key has no effect (the model runs in this process)", stacklevel=4)
        return values

    @model_validator(mode="after")
    def _load_engine(self) -> ChatFusionRAG:
        if self.engine is None:
            from .. import default_model_path

            self.engine = shared_engine(self.model or str(default_model_path()), self.device, self.dtype)
        if self.model_name is None:
            self.model_name = self.engine.model_name
        return self

    def _engine(self) -> FusionEngine:
        assert self.engine is not None  # loaded by the validator when not given
        return self.engine

    @property
    def _llm_type(self) -> str:
        return "fusionrag"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(
            ls_provider="fusionrag",
            ls_model_name=kwargs.get("model", self.model_name) or "",
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
            ls_stop=stop or self.stop,
        )

    def _convert_input(self, model_input: LanguageModelInput) -> PromptValue:
        """LangChain's conversion, with its errors for unusable input reported as our typed error."""
        try:
            return super()._convert_input(model_input)
        except FusionRAGError:
            raise
        except Exception as err:  # ValueError / NotImplementedError / TypeError from convert_to_messages
            raise InvalidArgumentError(f"input: {err}") from err

    # -- the engine call ---------------------------------------------------------------------

    def _engine_settings(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        fields = {**self.model_dump(include=ENGINE_FIELDS), "max_new_tokens": self.max_tokens}
        return request_settings(fields, kwargs, [*check_stop(stop), *check_stop(self.stop)])

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools go to the chat template (when it supports them) or into a system instruction; calls are
        parsed from the output (Hermes <tool_call> tags or a bare JSON object). tool_choice: None/"auto",
        "any"/"required", a tool name, or "none". A local model is asked, not forced, to call a tool."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice == "none":
            formatted = []
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: Any = None,
        *,
        method: str = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable:
        """ChatOpenAI's methods ("json_schema", "function_calling", "json_mode"), each enforced by a grammar
        (langchain/structured.py): the answer always parses."""
        return structured_output(self, schema, method, include_raw, strict, kwargs)

    def _pieces(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict) -> Iterator[GenerationChunk]:
        native = template_supports_tools(self._engine().tokenizer)
        tools, choice = kwargs.get("tools"), kwargs.get("tool_choice")
        prompt, template_tools = prompt_with_tools(
            to_engine_messages(messages, native_tools=native), tools, choice, native
        )
        if kwargs.get("response_format") is None:  # a required call is constrained to the tools' schemas
            kwargs["response_format"] = tool_call_format(tools, choice, native)
        settings = self._engine_settings(stop, kwargs)
        engine = self._engine()
        return retrying(lambda: engine.stream(prompt, tools=template_tools, **settings), self.max_retries)

    def _logprobs_json(self, pieces: list[GenerationChunk]) -> dict[str, Any] | None:
        decode = self._engine().tokenizer.decode
        lps = [lp for p in pieces for lp in p.logprobs]
        return chat_logprobs(lps, lambda t: decode([t])) if lps else None

    def _with_tool_calls(self, text: str, kwargs: dict) -> tuple[str, list[dict[str, Any]]]:
        tools = kwargs.get("tools") or None
        if not tools:
            return text, []
        parsed = parse_tool_calls(text, {t["function"]["name"] for t in tools})
        return parsed.content, parsed.tool_calls

    def _to_chunk(self, piece: GenerationChunk) -> ChatGenerationChunk:
        message = final_chunk(piece, self.model_name) if piece.finish_reason else AIMessageChunk(content=piece.text)
        info: dict[str, Any] = {"finish_reason": piece.finish_reason} if piece.finish_reason else {}
        if piece.logprobs:
            info["logprobs"] = self._logprobs_json([piece])
        return ChatGenerationChunk(message=message, generation_info=info or None)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if kwargs.get("tools"):  # a tool call is only known once complete: one chunk carries it all
            result = self._generate(messages, stop, run_manager, **kwargs)
            yield tool_result_chunk(result)
            return
        for piece in self._pieces(messages, stop, kwargs):
            chunk = self._to_chunk(piece)
            if run_manager and piece.text:
                run_manager.on_llm_new_token(piece.text, chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        pieces = list(self._pieces(messages, stop, kwargs))
        last = pieces[-1]
        final = final_chunk(last, self.model_name)
        content, calls = self._with_tool_calls("".join(p.text for p in pieces), kwargs)
        metadata = dict(final.response_metadata)
        info: dict[str, Any] = {"finish_reason": last.finish_reason}
        if (logprobs := self._logprobs_json(pieces)) is not None:
            metadata["logprobs"] = info["logprobs"] = logprobs
        message = AIMessage(
            content=content, tool_calls=calls, usage_metadata=final.usage_metadata, response_metadata=metadata
        )
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])

    # -- real async: the engine runs in a worker thread, the event loop never blocks ------------

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await asyncio.wait_for(
            run_in_thread(lambda: self._generate(messages, stop, None, **kwargs)), self.timeout
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if kwargs.get("tools"):
            yield tool_result_chunk(await self._agenerate(messages, stop, None, **kwargs))
            return
        async for piece in iterate_in_thread(self._pieces(messages, stop, kwargs)):
            chunk = self._to_chunk(piece)
            if run_manager and piece.text:
                await run_manager.on_llm_new_token(piece.text, chunk=chunk)
            yield chunk

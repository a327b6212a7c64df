"""FusionRAGLLM as a LlamaIndex LLM: MRO, streaming equals completing, chat, async, usage, stop strings."""

from __future__ import annotations

from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.llms import ChatMessage, MessageRole

from fusionrag_integrations.llamaindex import FusionRAGLLM
from tests.conftest import LoopTicker


def test_is_a_base_llm(li_engine):
    assert BaseLLM.__name__ in [b.__name__ for b in FusionRAGLLM.__mro__]
    llm = FusionRAGLLM(engine=li_engine)
    assert llm.metadata.is_chat_model and llm.metadata.context_window == li_engine.context_window == 8192
    assert llm.metadata.model_name == li_engine.model_name and llm.metadata.num_output == 256
    assert FusionRAGLLM(engine=li_engine, context_window=1000).metadata.context_window == 1000


def test_stream_complete_deltas_concatenate_to_complete(li_engine):
    llm = FusionRAGLLM(engine=li_engine, max_new_tokens=24)
    full = llm.complete("Write one sentence about the sea.")
    deltas = [r.delta for r in llm.stream_complete("Write one sentence about the sea.")]
    assert full.text and "".join(deltas) == full.text
    usage = full.raw["usage"]
    assert (
        usage["completion_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )
    assert full.raw["stats"]["ttft_ms"] > 0 and full.additional_kwargs["usage"] == usage


def test_chat_and_stream_chat(li_engine):
    llm = FusionRAGLLM(engine=li_engine, max_new_tokens=16)
    question = ChatMessage(role=MessageRole.USER, content="What is the capital of France?")
    reply = llm.chat([question])
    assert reply.message.role == MessageRole.ASSISTANT and "Paris" in reply.message.content
    messages = [ChatMessage(role=MessageRole.SYSTEM, content="You are a geography teacher."), question]
    with_system = llm.chat(messages)
    # the system turn reaches the template (SmolLM2 otherwise inserts its own, longer, default one)
    assert with_system.raw["usage"]["prompt_tokens"] != reply.raw["usage"]["prompt_tokens"]
    streamed = list(llm.stream_chat(messages))
    assert "".join(r.delta for r in streamed) == with_system.message.content == streamed[-1].message.content


def test_stop_strings(li_engine):
    llm = FusionRAGLLM(engine=li_engine, max_new_tokens=40)
    free = llm.complete("Count from 1 to 10, separated by commas.").text
    assert "4" in free
    stopped = llm.complete("Count from 1 to 10, separated by commas.", stop=["4"]).text
    assert "4" not in stopped and free.startswith(stopped)


def test_token_counting_handler_reads_usage(li_engine):
    counter = TokenCountingHandler()
    llm = FusionRAGLLM(engine=li_engine, max_new_tokens=8, callback_manager=CallbackManager([counter]))
    r = llm.complete("Say hello.")
    assert counter.completion_llm_token_count == r.raw["usage"]["completion_tokens"] > 0
    assert counter.prompt_llm_token_count == r.raw["usage"]["prompt_tokens"]


async def test_async_methods_do_not_block_the_loop(li_engine):
    llm = FusionRAGLLM(engine=li_engine, max_new_tokens=24)
    async with LoopTicker() as ticker:
        done = await llm.acomplete("Write one sentence about the sea.")
        deltas = [r.delta async for r in await llm.astream_complete("Write one sentence about the sea.")]
        reply = await llm.achat([ChatMessage(role=MessageRole.USER, content="What is the capital of France?")])
        chat_deltas = [
            r.delta async for r in await llm.astream_chat([ChatMessage(role=MessageRole.USER, content="Hi")])
        ]
    assert "".join(deltas) == done.text and "Paris" in reply.message.content and chat_deltas
    assert ticker.ticks > 10


def test_a_guarded_call_reports_the_guard_in_its_stats(li_engine):
    from tests.conftest import DOCS, rag_messages

    li_engine.precompute(DOCS)
    prompt = rag_messages(DOCS)[1]["content"]
    guarded = FusionRAGLLM(engine=li_engine, max_new_tokens=4).complete(prompt, fidelity="guarded")
    stats = guarded.raw["stats"]
    assert 0.0 < stats["guard_score"] < 1.0 and stats["escalated"] == (stats["selector"] == "full")
    assert FusionRAGLLM(engine=li_engine, max_new_tokens=4).complete(prompt).raw["stats"]["guard_score"] is None

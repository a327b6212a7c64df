"""The LangChain messages a ChatFusionRAG answer ends in: the last chunk with usage (cached prompt tokens
as `cache_read`) and the fusion statistics, and a tool call delivered as one streamed chunk."""

from __future__ import annotations

import json

from langchain_core.messages import AIMessage, AIMessageChunk, ToolCallChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from ..outputs import GenerationChunk


def final_chunk(piece: GenerationChunk, model_name: str | None) -> AIMessageChunk:
    """The one chunk that carries usage and metadata (so aggregation does not double count)."""
    usage, stats = piece.usage, piece.stats
    assert usage is not None and stats is not None, "only the last piece carries usage and statistics"
    return AIMessageChunk(
        content=piece.text,
        usage_metadata=UsageMetadata(
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            input_token_details={"cache_read": usage.cached_tokens},
        ),
        response_metadata={
            "model_name": model_name,
            "finish_reason": piece.finish_reason,
            "stats": stats.to_dict(),
            "model_provider": "fusionrag",
        },
        chunk_position="last",
    )


def tool_result_chunk(result: ChatResult) -> ChatGenerationChunk:
    """A generated answer with tool calls as one stream chunk (a call is only known once complete)."""
    message = result.generations[0].message
    assert isinstance(message, AIMessage)
    chunks: list[ToolCallChunk] = [
        ToolCallChunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
        for i, c in enumerate(message.tool_calls)
    ]
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content=message.content,
            tool_call_chunks=chunks,
            usage_metadata=message.usage_metadata,
            response_metadata=message.response_metadata,
            chunk_position="last",
        ),
        generation_info=result.generations[0].generation_info,
    )

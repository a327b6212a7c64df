"""POST /v1/chunks (ingest), /v1/chunks/keys (lookup), DELETE /v1/chunks: the chunk store over HTTP,
within the caller's cache space (its API key's, plus its cache_salt): a client can neither see nor
delete another space's chunks. Ingest runs on the step loop a batch per step, so streams being
decoded meanwhile keep their pace; a request holds at most `max_chunk_texts` texts."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from ..engine import FusionEngine
from . import errors
from .engine_calls import in_thread, request_salt
from .errors import APIError, as_api_error
from .schemas import ChunkKeysRequest, ChunksRequest, ForgetRequest
from .settings import ServerSettings
from .streaming import sse


def register(app: FastAPI, engine: FusionEngine, settings: ServerSettings) -> None:
    def check_count(texts: list[str]) -> None:
        if len(texts) > settings.max_chunk_texts:
            raise APIError(
                400,
                f"texts: {len(texts)} texts in one request; at most {settings.max_chunk_texts} (send several requests)",
                "too_many_texts",
                "texts",
            )

    @app.post("/v1/chunks")
    async def add_chunks(body: ChunksRequest, request: Request):
        """Precompute (idempotent): the keys, how many were computed now vs already cached, and how many are
        stored durably; with `stream`, a progress event after each batch first (a bulk add over a slow link
        shows progress and its finished batches stay stored if the client goes away)."""
        check_count(body.texts)
        salt = request_salt(request, body.cache_salt)
        if body.stream:
            return StreamingResponse(ingest_events(body, salt), media_type="text/event-stream")
        return await ingest_batch(body.texts, body.neighbors, salt)

    async def ingest_batch(texts: list[str], neighbors: list[list[str]] | None, salt: str | None) -> dict:
        report = await in_thread(lambda: engine.ingest(texts, None, neighbors, False, salt))
        distinct = report.computed + report.cached
        return {
            "object": "list",
            "keys": report.keys,
            "computed": report.computed,
            "cached": report.cached,
            "stored": report.stored,
            "not_stored": distinct - report.stored,
        }

    async def ingest_events(body: ChunksRequest, salt: str | None):
        total, step = len(body.texts), body.batch_size
        result = {"object": "list", "keys": [], "computed": 0, "cached": 0, "stored": 0, "not_stored": 0}
        try:
            for start in range(0, total, step):
                nbrs = body.neighbors[start : start + step] if body.neighbors is not None else None
                part = await ingest_batch(body.texts[start : start + step], nbrs, salt)
                result = {k: result[k] + part[k] if k != "object" else v for k, v in result.items()}
                done = min(start + step, total)
                yield sse(
                    {
                        "object": "chunks.progress",
                        "done": done,
                        "total": total,
                        "computed": result["computed"],
                        "cached": result["cached"],
                    }
                )
            yield sse(result)
        except Exception as exc:  # noqa: BLE001 - mid-stream: the status line is gone, the error is an event
            err = as_api_error(exc)
            yield sse(errors.error_body(err.status, err.message, err.code))
        yield "data: [DONE]\n\n"

    @app.post("/v1/chunks/keys")
    async def chunk_keys(body: ChunkKeysRequest, request: Request) -> dict:
        """Every stored key (standalone and context-aware) of these texts, in the caller's space."""
        check_count(body.texts)
        salt = request_salt(request, body.cache_salt)
        return {"object": "list", "keys": await in_thread(lambda: engine.keys_for(body.texts, salt))}

    @app.delete("/v1/chunks")
    async def forget_chunks(body: ForgetRequest, request: Request) -> dict:
        """Delete by keys or texts; only entries of the caller's space go."""
        salt = request_salt(request, body.cache_salt)
        check_count(body.texts or [])
        by_text = await in_thread(lambda: engine.keys_for(body.texts, salt)) if body.texts else []
        keys = list(body.keys or []) + by_text
        removed = await in_thread(lambda: engine.forget(keys, cache_salt=salt or "")) if keys else 0
        return {"object": "list", "removed": removed}

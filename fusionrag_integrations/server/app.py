"""`fusionrag serve`: the engine behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

Every request goes to the engine's continuous-batching scheduler, so concurrent clients are decoded
together; streams are server-sent events that end with `data: [DONE]`, and a client that goes away
cancels its request (its slot frees at the next step), streamed or not. Errors are OpenAI-style JSON
(errors.py). What reaches a route has passed the guard (guard.py: header count, API key before the
body, body deadline) and Starlette's body-size limit. Routes: generation.py (chat, completions),
responses.py (OpenAI's Responses API), chunks.py (chunk ingest, lookup, delete); health, version, models
and metrics here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from ..engine import FusionEngine
from ..fidelity.report import AGREEMENT_BUCKETS, KL_BUCKETS
from . import chunks, errors, generation, responses, text_tools
from .engine_calls import EngineCalls
from .guard import RequestGuard
from .metrics import Metrics
from .settings import ServerSettings

MAX_BODY_BYTES = 8 << 20


def create_app(
    engine: FusionEngine,
    model_name: str,
    settings: ServerSettings | None = None,
    on_fatal: Callable[[], None] | None = None,
) -> FastAPI:
    """on_fatal: called once if the engine's step loop stops for good (the CLI exits non-zero then, so a
    supervisor restarts the process); the health check says 503 from then on."""
    settings = settings or ServerSettings()
    metrics = Metrics(engine, model_name)
    app = FastAPI(title="fusionrag", docs_url="/docs", redoc_url=None, lifespan=_lifespan(engine, on_fatal))
    errors.install(app)
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=settings.max_body_bytes)
    app.add_middleware(RequestGuard, settings=settings)  # outermost: runs first

    @app.get("/health")
    async def health():
        status = engine.status()
        body = {"status": "ok" if status.healthy else "failed", "model": model_name}
        if not status.healthy:
            body["error"] = status.error
        return JSONResponse(body, status_code=200 if status.healthy else 503)

    @app.get("/version")
    async def package_version() -> dict:
        try:
            return {"version": version("fusionrag-integrations")}
        except PackageNotFoundError:
            return {"version": "unknown"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "fusionrag"}],
        }

    @app.get("/metrics")
    async def metrics_page():
        return metrics.response()

    @app.get("/v1/fidelity")
    async def fidelity() -> dict:
        """How far fused answers drift from full attention (shadowed requests: --fidelity-sample-rate)."""
        report = engine.fidelity_report().to_dict()
        bounds = {"kl_bucket_bounds": KL_BUCKETS, "agreement_bucket_bounds": AGREEMENT_BUCKETS}
        return {"object": "fidelity_report", **report, **bounds}

    calls = EngineCalls(engine, model_name, metrics)
    generation.register(app, calls)
    responses.register(app, calls)
    chunks.register(app, engine, settings)
    text_tools.register(app, engine, model_name, settings)
    app.state.metrics = metrics
    return app


def _lifespan(engine: FusionEngine, on_fatal: Callable[[], None] | None):
    """Watches the engine while the app runs; at shutdown (after uvicorn let running requests finish
    within its graceful timeout) stops the step loop, failing whatever is left so no thread waits."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        watcher = asyncio.create_task(_watch(engine, on_fatal))
        try:
            yield
        finally:
            watcher.cancel()
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    return lifespan


async def _watch(engine: FusionEngine, on_fatal: Callable[[], None] | None) -> None:
    while engine.status().healthy:
        await asyncio.sleep(1.0)
    errors.log.error("the engine's step loop stopped (%s): the server reports 503", engine.status().error)
    if on_fatal is not None:
        on_fatal()

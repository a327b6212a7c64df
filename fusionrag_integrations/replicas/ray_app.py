"""`fusionrag serve --replicas N`: engine replicas on Ray Serve behind one OpenAI-compatible endpoint.

    gateway (FastAPI ingress, no model) --affinity--> chunk-aware router --> engine replica x N
                                                                             (server/app.py each)
    every replica: its own GPU / CPU tiers, the shared Redis KV tier and catalog (kv_backend)

The gateway reads a request, finds its chunks (affinity.py: the shared catalog's texts inside its
messages) and forwards it whole to the engine deployment; the router (routing.py) sends it to the
replica that owns most of those chunks. Each replica runs the unchanged single-server app in-process
(asgi_call.py), so errors, streams, usage and /metrics are the same as `fusionrag serve`. A replica that
dies is restarted by Ray; a request it held gets a 503, which OpenAI clients retry.

Also a Ray Serve application builder: `serve run fusionrag_integrations.replicas.ray_app:build_app
replicas=2 kv_backend=redis://127.0.0.1:6379/0` (keys: ReplicaSettings' fields).
"""

# no `from __future__ import annotations`: Ray Serve resolves the ingress methods' annotations itself
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.exceptions import RayError
from ray.serve.config import RequestRouterConfig

from ..server import errors
from ..server.command import engine_flags
from .affinity import routing_tokens
from .asgi_call import call_asgi

if TYPE_CHECKING:
    from ..store.detect import ChunkIndex
    from ..store.redis_catalog import RedisCatalog

log = logging.getLogger(__name__)
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "host"}


class ReplicaSettings(BaseModel):
    """One engine replica's settings, and how many replicas there are."""

    model: str | None = Field(None, description="HF directory, .gguf file or cached hub id (None: bundled SmolLM2)")
    device: str = "auto"
    dtype: str = "auto"
    engine: dict[str, Any] = Field(default_factory=dict, description="EngineConfig fields (kv_backend, ...)")
    served_model_name: str | None = None
    api_key: str | None = None
    max_body_bytes: int = 8 << 20
    replicas: int = Field(2, ge=1)
    routing: str = Field("chunk", pattern="^(chunk|round_robin)$")
    max_ongoing_requests: int = Field(32, ge=1, description="per replica; past it the router tries the next")
    replica_cpus: float = Field(1.0, ge=0)
    replica_gpus: float = Field(0.0, ge=0)
    torch_threads: int | None = Field(None, ge=1, description="CPU threads per replica (CPU replicas)")


@serve.deployment(name="FusionRAGEngine", health_check_period_s=1, health_check_timeout_s=30)
class EngineReplica:
    def __init__(self, settings: ReplicaSettings) -> None:
        import torch

        from .. import default_model_path
        from ..config import EngineConfig
        from ..engine import FusionEngine
        from ..server.app import create_app
        from ..server.settings import ServerSettings

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        model = settings.model or default_model_path()
        config = EngineConfig(**settings.engine)
        self.engine = FusionEngine.from_pretrained(model, device=settings.device, dtype=settings.dtype, config=config)
        name = settings.served_model_name or self.engine.loaded.name
        keys = (settings.api_key,) if settings.api_key else ()
        server = ServerSettings(api_keys=keys, max_body_bytes=settings.max_body_bytes, allow_unauthenticated=True)
        self.app = create_app(self.engine, name, server)
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def forward(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: list[tuple[str, str]],
        body: bytes,
        affinity: list | None = None,
    ):
        """The app's response: a dict with status and headers (this replica's id added), then body bytes."""
        async for part in call_asgi(self.app, method, path, query, headers, body):
            if isinstance(part, dict):
                part = {**part, "headers": [*part["headers"], ("x-fusionrag-replica", self.replica)]}
            yield part

    def store_namespace(self) -> dict[str, str | None]:
        """What the gateway needs to follow the shared chunk catalog."""
        return {"namespace": self.engine.chunks.namespace, "kv_backend": self.engine.config.kv_backend}


gateway_app = FastAPI(title="fusionrag", docs_url=None, redoc_url=None)


@serve.deployment(name="FusionRAGGateway", ray_actor_options={"num_cpus": 0})
@serve.ingress(gateway_app)
class Gateway:
    def __init__(self, engine, settings: ReplicaSettings) -> None:
        self.engine, self.settings = engine, settings
        self.catalog: RedisCatalog | None = None
        self.index: ChunkIndex | None = None
        self._seen, self._checked = 0, 0.0

    async def _follow_catalog(self) -> None:
        """Keep a detector over the shared catalog's texts (checked at most every 0.2 s; a Redis down is
        only less precise routing)."""
        if time.monotonic() - self._checked < 0.2:
            return
        self._checked = time.monotonic()
        try:
            if self.catalog is None:
                where = await self.engine.store_namespace.remote()
                if not where["kv_backend"]:
                    self._checked = float("inf")  # no shared catalog: paragraphs stand for chunks
                    return
                import redis

                from ..store.detect import ChunkIndex
                from ..store.redis_catalog import RedisCatalog

                client = redis.Redis.from_url(where["kv_backend"], socket_timeout=0.5, socket_connect_timeout=0.5)
                self.catalog = RedisCatalog(client, where["namespace"])  # a hung Redis costs 0.5 s, not the loop
                self.index = ChunkIndex()
            assert self.index is not None  # set with the catalog
            if self.catalog.changed():
                refs, self._seen = self.catalog.refs_since(self._seen)
                for ref in refs:
                    self.index.add(ref.text)
        except RayError as exc:
            log.warning("gateway: cannot reach an engine replica yet (%s)", exc)

    @gateway_app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def forward(self, path: str, request: Request):
        limit, received = self.settings.max_body_bytes, bytearray()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return errors.error_response(413, f"request body over {limit} bytes", "body_too_large")
        async for part in request.stream():  # a chunked body is counted as it arrives
            received += part
            if len(received) > limit:
                return errors.error_response(413, f"request body over {limit} bytes", "body_too_large")
        body = bytes(received)
        affinity = []
        if request.method == "POST" and body:
            await self._follow_catalog()
            try:
                affinity = routing_tokens("/" + path, json.loads(body), self.index)
            except (ValueError, TypeError, AttributeError):
                affinity = []  # not JSON: the replica's app answers with the proper 400
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]
        headers.append(("content-length", str(len(body))))  # whole now, whatever way it arrived
        call = self.engine.options(stream=True).forward
        parts = call.remote(request.method, "/" + path, request.url.query.encode(), headers, body, affinity=affinity)
        try:
            start = await parts.__anext__()
        except (RayError, StopAsyncIteration) as exc:  # RayActorError (replica died) is one
            return errors.error_response(
                503, f"the replica serving this request went away ({type(exc).__name__}); retry", "replica_unavailable"
            )
        kept = {k: v for k, v in start["headers"] if k.lower() not in _HOP_HEADERS}
        return StreamingResponse(self._rest(parts), status_code=start["status"], headers=kept)

    async def _rest(self, parts):
        try:
            async for part in parts:
                yield part
        except RayError as exc:  # mid-stream: the status line is gone, the error is an event
            yield f"data: {json.dumps(errors.error_body(503, f'the replica went away mid-stream ({exc})'))}\n\n"


def build(settings: ReplicaSettings):
    """The Ray Serve application: the gateway bound to N engine replicas behind the chosen router."""
    from .routing import ROUTERS

    # serve.deployment turns both classes into Deployments, which mypy cannot see through the decorator; Ray
    # declares the router field through its pydantic-compat layer, which mypy reads as a dict
    engine_replica: Any = EngineReplica
    gateway: Any = Gateway
    router: Any = ROUTERS[settings.routing]
    replica = engine_replica.options(
        num_replicas=settings.replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
        request_router_config=RequestRouterConfig(request_router_class=router),
    )
    return gateway.bind(replica.bind(settings), settings)


def build_app(args: dict[str, Any]):
    """`serve run fusionrag_integrations.replicas.ray_app:build_app key=value ...`: ReplicaSettings' fields;
    EngineConfig fields (kv_backend=..., kv_format=...) go to every replica's engine."""
    top = {k: v for k, v in args.items() if k in ReplicaSettings.model_fields}
    engine = {k: v for k, v in args.items() if k not in ReplicaSettings.model_fields}
    return build(ReplicaSettings(**top, engine={**top.get("engine", {}), **engine}))


def serve_from_cli(args, api_key: str | None) -> int:
    """`fusionrag serve --replicas N`: a local Ray cluster (or --ray-address), the app, until interrupted."""
    import ray
    import torch

    engine = {
        k: v
        for k, v in {
            "cache_dir": args.cache_dir,
            "kv_format": args.kv_format,
            "kv_backend": args.kv_backend,
            "fidelity_sample_rate": args.fidelity_sample_rate,
        }.items()
        if v
    }
    engine.update(engine_flags(args))
    gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    settings = ReplicaSettings(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        engine=engine,
        served_model_name=args.served_model_name,
        api_key=api_key,
        max_body_bytes=args.max_body_bytes,
        replicas=args.replicas,
        routing=args.routing,
        replica_gpus=1.0 if gpu else 0.0,
    )
    ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build(settings), name="fusionrag", route_prefix="/")
    print(
        f"fusionrag: {args.replicas} replicas on http://{args.host}:{args.port}/v1 ({args.routing} routing)",
        file=sys.stderr,
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0

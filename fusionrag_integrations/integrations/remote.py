"""The chunk-KV side of a `fusionrag serve` server, for vector stores that live in the application:
`FusionRAGChroma(..., server=URL)` / `FusionRAGChromaVectorStore(..., server=URL)` precompute and
forget through it (`/v1/chunks`) instead of a local engine, so an OpenAI client pointed at the same
server (`ChatOpenAI(base_url=URL + "/v1")`) then finds the chunks already computed."""

from __future__ import annotations

import os
from collections.abc import Sequence

import httpx

from ..errors import FusionRAGError


class RemoteChunkError(FusionRAGError, RuntimeError):
    """The server refused or failed a chunk request (its OpenAI-style error message is kept)."""


class RemoteEngine:
    """What the vector stores call on an engine (precompute, keys_for, forget), over HTTP."""

    def __init__(self, server: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        api_key = api_key or os.environ.get("FUSIONRAG_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.server = server.rstrip("/").removesuffix("/v1")
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, body: dict) -> dict:
        response = self._http.request(method, path, json=body)
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise RemoteChunkError(f"{method} {path} -> {response.status_code}: {message}")
        return response.json()

    def precompute(
        self, texts: Sequence[str], context: None = None, neighbors: Sequence[Sequence[str]] | None = None,
        show_progress: bool | None = None,
    ) -> list[str]:  # fmt: skip
        body = {"texts": list(texts), "neighbors": [list(n) for n in neighbors] if neighbors is not None else None}
        return self._call("POST", "/v1/chunks", body)["keys"]

    def keys_for(self, texts: Sequence[str]) -> list[str]:
        return self._call("POST", "/v1/chunks/keys", {"texts": list(texts)})["keys"]

    def forget(self, keys: Sequence[str]) -> int:
        return self._call("DELETE", "/v1/chunks", {"keys": list(keys)})["removed"] if keys else 0

    def close(self) -> None:
        self._http.close()

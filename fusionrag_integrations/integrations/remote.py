"""The chunk-KV side of a `fusionrag serve` server, for vector stores that live in the application:
`FusionRAGChroma(..., server=URL)` / `FusionRAGChromaVectorStore(..., server=URL)` precompute and
forget through it (`/v1/chunks`) instead of a local engine, so an OpenAI client pointed at the same
server (`ChatOpenAI(base_url=URL + "/v1")`) then finds the chunks already computed."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import httpx
from tqdm.auto import tqdm

from ..errors import FusionRAGError


class RemoteChunkError(FusionRAGError, RuntimeError):
    """The server refused or failed a chunk request (its OpenAI-style error message is kept)."""


class RemoteEngine:
    """What the vector stores call on an engine (a ChunkKeeper: precompute, keys_for, forget), over HTTP."""

    def __init__(self, server: str, api_key: str | None = None, timeout: float = 600.0, batch_size: int = 64) -> None:
        """batch_size: texts the server precomputes between two progress events."""
        api_key = api_key or os.environ.get("FUSIONRAG_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.server = server.rstrip("/").removesuffix("/v1")
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)
        self.batch_size = batch_size

    def _call(self, method: str, path: str, body: dict) -> dict:
        response = self._http.request(method, path, json=body)
        if response.status_code != 200:
            raise self._error(method, path, response)
        return response.json()

    @staticmethod
    def _error(method: str, path: str, response: httpx.Response) -> RemoteChunkError:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        return RemoteChunkError(f"{method} {path} -> {response.status_code}: {message}")

    def precompute(
        self,
        texts: Sequence[str],
        context: None = None,
        neighbors: Sequence[Sequence[str]] | None = None,
        show_progress: bool | None = None,
    ) -> list[str]:
        """The server precomputes in batches and streams its progress (a bar for large inputs on a terminal,
        as the local engine shows)."""
        texts = list(texts)
        body = {
            "texts": texts,
            "neighbors": [list(n) for n in neighbors] if neighbors is not None else None,
            "stream": True,
            "batch_size": self.batch_size,
        }
        hide = (not show_progress) if show_progress is not None else (len(texts) < 16 or None)
        with self._http.stream("POST", "/v1/chunks", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise self._error("POST", "/v1/chunks", response)
            with tqdm(total=len(texts), desc="precompute (server)", unit="chunk", disable=hide) as bar:
                for line in response.iter_lines():
                    event = json.loads(line[6:]) if line.startswith("data: {") else {}
                    if "error" in event:
                        raise RemoteChunkError(f"POST /v1/chunks: {event['error'].get('message')}")
                    if event.get("object") == "chunks.progress":
                        bar.update(event["done"] - bar.n)
                    elif "keys" in event:
                        return event["keys"]
        raise RemoteChunkError("POST /v1/chunks: the server's stream ended before its result")

    def keys_for(self, texts: Sequence[str]) -> list[str]:
        return self._call("POST", "/v1/chunks/keys", {"texts": list(texts)})["keys"]

    def forget(self, keys: Sequence[str]) -> int:
        return self._call("DELETE", "/v1/chunks", {"keys": list(keys)})["removed"] if keys else 0

    def close(self) -> None:
        self._http.close()

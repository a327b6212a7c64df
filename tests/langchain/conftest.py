"""LangChain fixtures: one engine over the session's SmolLM2 weights, with its own chunk store."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusionrag_integrations import EngineConfig, FusionEngine

ENGINE: FusionEngine | None = None  # set once per session; standard-test classes read it in a property


@pytest.fixture(scope="session", autouse=True)
def lc_engine(smol_engine, tmp_path_factory) -> FusionEngine:
    global ENGINE
    ENGINE = FusionEngine(smol_engine.loaded, EngineConfig(cache_dir=tmp_path_factory.mktemp("lc-cache")))
    return ENGINE


@pytest.fixture(scope="session")
def embeddings():
    from fusionrag_integrations.langchain import MiniLMEmbeddings

    return MiniLMEmbeddings()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real Chroma HTTP server (the `chroma run` that ships with chromadb) on a free local port."""
    port = free_port()
    chroma = Path(sys.executable).with_name("chroma")
    proc = subprocess.Popen([str(chroma), "run", "--path", str(tmp_path_factory.mktemp("chroma-srv")),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import chromadb

    deadline = time.time() + 60
    while True:
        try:
            client = chromadb.HttpClient(host="127.0.0.1", port=port)
            client.heartbeat()
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("chroma server did not start") from None
            time.sleep(0.3)
    yield client
    proc.terminate()
    proc.wait(timeout=10)

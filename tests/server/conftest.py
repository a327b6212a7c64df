"""A real `fusionrag serve` process on a loopback port (the bundled model, its own cache), started once
for the test session and stopped after it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

API_KEY = "test-key-0123456789"
server_pid: dict[str, int] = {}  # base URL -> the server process (tests read its memory)
MODEL = "smol"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """base URL of a running server (API key required)."""
    port = free_port()
    cache = tmp_path_factory.mktemp("server-cache")
    cmd = [sys.executable, "-m", "fusionrag_integrations.cli", "serve", "--port", str(port), "--device", "cpu",
           "--cache-dir", str(cache), "--api-key", API_KEY, "--served-model-name", MODEL,
           "--max-body-bytes", str(1 << 20)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("server did not start in 180 s")
    server_pid[url] = proc.pid
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def embeddings():
    from fusionrag_integrations.langchain import MiniLMEmbeddings

    return MiniLMEmbeddings()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")

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


class ServerProcess:
    """`fusionrag serve` in a child process; its stderr goes to a file the tests can read."""

    def __init__(self, directory, *args: str, key: str | None = API_KEY) -> None:
        self.port = free_port()
        self.log = directory / "server.log"
        cmd = [sys.executable, "-m", "fusionrag_integrations.cli", "serve", "--port", str(self.port), "--device",
               "cpu", "--cache-dir", str(directory / "cache"), "--served-model-name", MODEL, *args]  # fmt: skip
        if key is not None:
            cmd += ["--api-key", key]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=log)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, seconds: float = 180) -> ServerProcess:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.5)
        self.proc.kill()
        raise RuntimeError("server did not start in 180 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def server_process(tmp_path_factory):
    """The shared server (API key required)."""
    process = ServerProcess(tmp_path_factory.mktemp("server"), "--max-body-bytes", str(1 << 20)).wait_ready()
    server_pid[process.url] = process.proc.pid
    yield process
    process.stop()


@pytest.fixture(scope="session")
def server(server_process):
    """base URL of a running server (API key required)."""
    return server_process.url


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

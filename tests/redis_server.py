"""A real `redis-server` on loopback for the tests (started and stopped by them; no persistence unless
asked, so a restart is empty unless `appendonly`)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (make install)")


class RedisServer:
    def __init__(self, directory: Path, appendonly: bool = False) -> None:
        self.port, self.dir, self.appendonly, self.proc = free_port(), directory, appendonly, None

    def start(self) -> RedisServer:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence, "--dir", str(self.dir)]
        self.proc = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port).ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
            except redis.BusyLoadingError:  # reading its append-only file back
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=20)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(port=self.port)


def running(directory: Path, appendonly: bool = False):
    """A fixture body: a started server, stopped after the test if it still runs."""
    server = RedisServer(directory, appendonly).start()
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop()

"""Load-generating clients for benchmarks/serving.py: engine.stream in threads, or the same requests
through `fusionrag serve`'s app over HTTP from another process."""

from __future__ import annotations

import json
import threading
import time

from fusionrag_integrations.outputs import GenerationChunk, GenerationStats


def one_request(engine, prompt, chunks, settings, out: list) -> None:
    t0 = time.perf_counter()
    times = []
    n, prefill_ms, server_ttft_ms = 0, 0.0, 0.0
    for piece in engine.stream(prompt, **settings):  # drop-in: the engine finds the chunks in the prompt
        if piece.token_ids:
            times.append(time.perf_counter())
            n += len(piece.token_ids)
        if piece.stats is not None:
            prefill_ms, server_ttft_ms = piece.stats.prefill_ms, piece.stats.ttft_ms
    tpot = (times[-1] - times[0]) / (n - 1) if n > 1 else 0.0
    out.append({"t0": t0, "ttft": times[0] - t0, "tpot": tpot, "end": times[-1], "tokens": n, "prefill": prefill_ms,
                "server_ttft": server_ttft_ms})  # fmt: skip


class HTTPServer:
    """The engine behind `fusionrag serve`'s app, on a loopback port in this process (uvicorn thread, as
    `fusionrag serve` runs it); its clients run in another process (they are not in a server's process,
    and here they would share its interpreter lock)."""

    def __init__(self, engine) -> None:
        import multiprocessing
        import socket
        from concurrent.futures import ProcessPoolExecutor

        import uvicorn

        from fusionrag_integrations.server.app import create_app

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(engine, "m"), host="127.0.0.1", port=port,
                                                    log_level="warning"))  # fmt: skip
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.05)
        self.url, self.scheduler = f"http://127.0.0.1:{port}", engine.scheduler
        self.clients = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


class HTTPClient:
    """engine.stream's HTTP twin: /v1/completions with SSE, one httpx client per thread."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url, self._clients, self._httpx = url, threading.local(), httpx

    def stream(self, prompt: str, max_new_tokens: int, **fusion):
        client = getattr(self._clients, "client", None)
        if client is None:
            client = self._clients.client = self._httpx.Client(base_url=self.url, timeout=600)
        body = {"model": "m", "prompt": prompt, "max_tokens": max_new_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, **fusion}  # fmt: skip
        with client.stream("POST", "/v1/completions", json=body) as response:
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if event["choices"]:  # one event per decoded piece, even one whose text is held back
                    yield GenerationChunk(event["choices"][0]["text"], [0])
                if event.get("usage"):
                    stats = GenerationStats(**{k: v for k, v in event["fusionrag"].items()
                                               if k in GenerationStats.__dataclass_fields__})  # fmt: skip
                    yield GenerationChunk("", [], "stop", None, stats)


def http_clients(url: str, work: list, settings: dict, concurrency: int, ramp_s: float) -> list[dict]:
    """Runs in the client process."""
    return run_clients(HTTPClient(url), work, settings, concurrency, ramp_s)


def run_clients(engine, work: list, settings: dict, concurrency: int, ramp_s: float, think_s=0.0) -> list[dict]:
    """Closed loop; think_s: each client's pause before its next request (in-process clients otherwise
    send it in the instant the last one ended, before the scheduler's next step: a timing no client
    across a network has)."""
    results: list[dict] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        time.sleep(index * ramp_s)  # users arrive over time, not all in one instant
        while True:
            with lock:
                if not work:
                    return
                prompt, chunks = work.pop()
            one_request(engine, prompt, chunks, settings, results)
            time.sleep(think_s)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def run_open_loop(engine, work: list, gaps: list[float], settings: dict) -> list[dict]:
    """Poisson arrivals: request i is sent gaps[0..i-1] after the first, whatever is still running."""
    results: list[dict] = []
    threads = []
    for (prompt, chunks), gap in zip(work, gaps):
        t = threading.Thread(target=one_request, args=(engine, prompt, chunks, settings, results))
        t.start()
        threads.append(t)
        time.sleep(gap)
    for t in threads:
        t.join()
    return results


def http_open_loop(url: str, work: list, gaps: list[float], settings: dict) -> list[dict]:
    """Runs in the client process."""
    return run_open_loop(HTTPClient(url), work, gaps, settings)

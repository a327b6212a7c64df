"""Slow-client table: connections that never finish are closed at their configured timeouts while a
normal client keeps its latency.

A `fusionrag serve` process (CPU, the bundled model) runs with a 5 s head deadline, a 10 s body deadline
and 5 s keep-alive. For each kind of bad client, `--connections` of them are opened at once (1,000
idle ones for the last row), and while they are open a normal client sends `--requests` chat requests
(4 tokens each) one after another. Columns: how many bad connections the server closed, when (seconds
after each opened, p50 / max, against the configured limit), and the normal client's p50 / p99 latency
as a ratio of the same client's on an idle server (run first).

    python benchmarks/slow_clients.py [--connections 200] [--requests 40] [--out results/slow_clients_cpu.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import start_server

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789"
LIMITS = {"header": 5.0, "body": 10.0, "keep_alive": 5.0}
HEAD = (
    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
    f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
)


async def idle(writer) -> None:
    await asyncio.sleep(3600)


async def slow_header(writer) -> None:
    for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.5)


async def slow_body(writer) -> None:
    writer.write((HEAD + "Content-Length: 2000\r\n\r\n").encode())
    for _ in range(2000):
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.5)


async def endless_chunked(writer) -> None:
    writer.write((HEAD + "Transfer-Encoding: chunked\r\n\r\n").encode())
    while True:
        writer.write(b"a\r\n          \r\n")  # 10 bytes a chunk, never the last one
        await writer.drain()
        await asyncio.sleep(0.2)


async def length_lie(writer) -> None:
    writer.write((HEAD + 'Content-Length: 1000\r\n\r\n{"model": "m"').encode())
    await writer.drain()
    await asyncio.sleep(3600)


KINDS = {  # name: (behaviour, the limit that must close it)
    "idle (never a byte)": (idle, "header"),
    "slow header (1 byte / 0.5 s)": (slow_header, "header"),
    "slow body (1 byte / 0.5 s)": (slow_body, "body"),
    "never-ending chunked body": (endless_chunked, "body"),
    "Content-Length lie (1000, sends 13)": (length_lie, "body"),
    "1,000 idle connections": (idle, "header"),
}


async def one_bad(port: int, behaviour) -> float | None:
    """Seconds from connecting until the server closed the connection (None: still open at the end)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sending = asyncio.ensure_future(behaviour(writer))
    try:
        while await asyncio.wait_for(reader.read(65536), 120):
            pass
        return time.monotonic() - t0
    except (TimeoutError, asyncio.TimeoutError):
        return None
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - t0
    finally:
        sending.cancel()
        writer.close()


def normal_client(url: str, n: int, out: list[float]) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4, "temperature": 0}
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            client.post(f"{url}/v1/chat/completions", json=body).raise_for_status()
            out.append(time.perf_counter() - t0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_kind(port: int, url: str, behaviour, count: int, requests: int) -> tuple[list[float | None], list[float]]:
    latencies: list[float] = []

    async def main() -> list[float | None]:
        bad = [asyncio.ensure_future(one_bad(port, behaviour)) for _ in range(count)]
        await asyncio.sleep(0.5)  # all open before the normal client starts
        client = threading.Thread(target=normal_client, args=(url, requests, latencies))
        client.start()
        closed = await asyncio.gather(*bad)
        await asyncio.get_running_loop().run_in_executor(None, client.join)
        return closed

    return asyncio.run(main()), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=200, help="bad connections per kind")
    parser.add_argument("--requests", type=int, default=40, help="normal requests per run")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "slow_clients_cpu.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fusionrag-slow-") as tmp:
        flags = ["--served-model-name", "m", "--api-key", KEY, "--timeout-header", str(LIMITS["header"]),
                 "--timeout-body", str(LIMITS["body"]), "--timeout-keep-alive", str(int(LIMITS["keep_alive"])),
                 "--max-connections", "2000"]  # fmt: skip
        proc, port = start_server(Path(tmp), *flags, log=Path(tmp) / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            normal_client(url, 5, [])  # warm-up
            unloaded: list[float] = []
            normal_client(url, args.requests, unloaded)
            rows = []
            for name, (behaviour, limit) in KINDS.items():
                count = 1000 if name.startswith("1,000") else args.connections
                closed, latencies = run_kind(port, url, behaviour, count, args.requests)
                times = [t for t in closed if t is not None]
                rows.append({
                    "kind": name, "connections": count, "closed": len(times), "limit": limit,
                    "limit_s": LIMITS[limit], "closed_after_p50_s": statistics.median(times) if times else None,
                    "closed_after_max_s": max(times) if times else None,
                    "normal_p50_s": percentile(latencies, 0.5), "normal_p99_s": percentile(latencies, 0.99),
                    "p50_ratio": percentile(latencies, 0.5) / percentile(unloaded, 0.5),
                    "p99_ratio": percentile(latencies, 0.99) / percentile(unloaded, 0.99),
                })  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    base = {"normal_p50_s": percentile(unloaded, 0.5), "normal_p99_s": percentile(unloaded, 0.99)}
    print(f"\nunloaded: p50 {base['normal_p50_s'] * 1e3:.0f} ms, p99 {base['normal_p99_s'] * 1e3:.0f} ms "
          f"({args.requests} requests)\n")  # fmt: skip
    print("| bad client | open | closed | closed after p50 / max (limit) | normal p50 / p99 | p99 vs unloaded |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        after = f"{r['closed_after_p50_s']:.1f} / {r['closed_after_max_s']:.1f} s" if r["closed"] else "-"
        latency = f"{r['normal_p50_s'] * 1e3:.0f} / {r['normal_p99_s'] * 1e3:.0f} ms"
        limit = f"{r['limit']} {r['limit_s']:g} s"
        ratio = f"{r['p99_ratio']:.2f}x"
        print(f"| {r['kind']} | {r['connections']} | {r['closed']} | {after} ({limit}) | {latency} | {ratio} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"unloaded": base, "limits": LIMITS, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

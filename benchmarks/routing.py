"""Chunk-aware routing vs round-robin over Ray Serve replicas sharing one Redis tier (issue 20).

python benchmarks/routing.py                       # CPU, 2 replicas of the bundled SmolLM2, 200 requests

Starts a redis-server and a local Ray cluster on loopback, ingests a pool of passages into Redis from
this process (as another machine would), then for each routing policy deploys fresh replicas (empty
memory tiers, each holding at most --hot-chunks chunks) and sends the same --requests chat requests, one
at a time, each with --k passages. Reported per policy and workload: the hot-tier hit rate (reused
chunks served by a replica's memory tier / chunks found; the rest come from Redis), requests per
replica, TTFT p50/p99 and requests/s. Workloads: `sets`: a request is one of --topics retrieval
results (k passages each, fixed), picked Zipf(--zipf): popular questions retrieve the same passages;
`independent`: k passages drawn Zipf one by one. Writes benchmarks/results/routing.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import markdown_table  # noqa: E402
from redis_tier import free_port, start_redis  # noqa: E402

PASSAGE = "Passage {i:03d} of the harbour archive: the keeper of beacon {i} counted {n} ships and {m} gulls at dawn."


def workload(kind: str, pool: int, topics: int, k: int, n: int, zipf: float, seed: int) -> list[list[int]]:
    rnd = random.Random(seed)
    if kind == "sets":
        sets = [rnd.sample(range(pool), k) for _ in range(topics)]
        weights = [1 / (i + 1) ** zipf for i in range(topics)]
        return [sets[rnd.choices(range(topics), weights)[0]] for _ in range(n)]
    weights = [1 / (i + 1) ** zipf for i in range(pool)]
    out = []
    for _ in range(n):
        chosen: list[int] = []
        while len(chosen) < k:
            c = rnd.choices(range(pool), weights)[0]
            chosen += [c] if c not in chosen else []
        out.append(chosen)
    return out


def run_policy(policy: str, requests: list[list[int]], texts: list[str], args, redis_url: str, port: int) -> dict:
    from openai import OpenAI
    from ray import serve

    from fusionrag_integrations.replicas.ray_app import ReplicaSettings, build

    engine = {"kv_backend": redis_url, "cpu_cache_bytes": args.hot_bytes, "persist": False}
    settings = ReplicaSettings(device="cpu", dtype="float32", engine=engine, replicas=args.replicas, routing=policy,
                               torch_threads=1, replica_cpus=0.5)  # fmt: skip
    serve.run(build(settings), name="fusionrag", route_prefix="/")
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=3)
    model = client.models.list().data[0].id
    found = hot = 0
    ttfts, by_replica = [], Counter()
    t0 = time.perf_counter()
    for chunk_ids in requests:
        passages = "\n\n".join(texts[i] for i in chunk_ids)
        question = f"Passages:\n{passages}\n\nWhich beacon keeper counted the most ships?"
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=1
        )
        stats = raw.parse().model_extra["fusionrag"]
        found, hot = found + stats["chunks_found"], hot + stats["chunks_hot"]
        ttfts.append(stats["ttft_ms"])
        by_replica[raw.headers["x-fusionrag-replica"]] += 1
    seconds = time.perf_counter() - t0
    serve.delete("fusionrag")
    q = statistics.quantiles(ttfts, n=100)
    return {
        "policy": policy,
        "requests": len(requests),
        "chunks_found": found,
        "hot_hit_rate": hot / max(found, 1),
        "requests_per_replica": sorted(by_replica.values(), reverse=True),
        "engine_ttft_p50_ms": q[49],
        "engine_ttft_p99_ms": q[98],
        "req_per_s": len(requests) / seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--pool", type=int, default=300, help="passages in the store")
    p.add_argument("--topics", type=int, default=100, help="`sets`: distinct retrieval results")
    p.add_argument("--k", type=int, default=3, help="passages per request")
    p.add_argument("--zipf", type=float, default=0.8)
    p.add_argument("--hot-chunks", type=int, default=20, help="chunks each replica's memory tier holds")
    p.add_argument("--workloads", nargs="+", default=["sets", "independent"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "routing.json"))
    args = p.parse_args()

    import ray
    from ray import serve

    from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path

    texts = [PASSAGE.format(i=i, n=(i * 7) % 97, m=(i * 13) % 89) for i in range(args.pool)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        redis_port = free_port()
        redis_proc = start_redis("redis-server", redis_port, tmp)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        try:
            ingest = FusionEngine.from_pretrained(default_model_path(), device="cpu",
                                                  config=EngineConfig(kv_backend=redis_url, persist=False))  # fmt: skip
            keys = ingest.precompute(texts)
            sizes = [ingest.chunks.get(k).nbytes for k in keys]
            args.hot_bytes = int(args.hot_chunks * statistics.median(sizes))
            del ingest
            port = free_port()
            ray.init(address="local", num_cpus=args.replicas + 1, include_dashboard=False, log_to_driver=False)
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for kind in args.workloads:
                requests = workload(kind, args.pool, args.topics, args.k, args.requests, args.zipf, args.seed)
                for policy in ("round_robin", "chunk"):
                    rows.append({"workload": kind, **run_policy(policy, requests, texts, args, redis_url, port)})
                    print(markdown_table(rows[-1:], list(rows[-1])), flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
            redis_proc.terminate()
    for kind in args.workloads:
        rr, ck = (next(r for r in rows if r["workload"] == kind and r["policy"] == p) for p in ("round_robin", "chunk"))
        print(f"{kind}: chunk-aware hot-tier hit rate {ck['hot_hit_rate']:.3f} vs round-robin "
              f"{rr['hot_hit_rate']:.3f} = {ck['hot_hit_rate'] / max(rr['hot_hit_rate'], 1e-9):.2f}x")  # fmt: skip
    print()
    print(markdown_table(rows, list(rows[0])))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "out"}, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()

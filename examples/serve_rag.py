"""RAG through `fusionrag serve`: the server owns the model and the chunk KV, the application keeps its
vector store and talks OpenAI.

1. start the server (here as a child process; usually `fusionrag serve` in its own terminal);
2. add passages to a FusionRAGChroma store with `server=`: embedded here, KV precomputed there;
3. ask with the plain `openai` client and with a LangChain `ChatOpenAI` chain; the response's
   `usage.prompt_tokens_details.cached_tokens` and its `fusionrag` field say what was reused.

    .venv/bin/python examples/serve_rag.py
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

import httpx
from openai import OpenAI

from fusionrag_integrations.demo_corpus import PASSAGES, QUESTIONS
from fusionrag_integrations.langchain import FusionRAGChroma, MiniLMEmbeddings


def start_server(cache_dir: str | None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "fusionrag_integrations.cli",
        "serve",
        "--port",
        str(port),
        "--served-model-name",
        "smol",
    ]
    server = subprocess.Popen(cmd + (["--cache-dir", cache_dir] if cache_dir else []))
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", help="the server's chunk-KV cache (default: its own default)")
    parser.add_argument("--max-tokens", type=int, default=48, help="the longest answer, in tokens")
    args = parser.parse_args()
    server, url = start_server(args.cache_dir)
    try:
        store = FusionRAGChroma(server=url, embedding_function=MiniLMEmbeddings(), collection_name="space")
        store.add_texts(PASSAGES)
        client = OpenAI(base_url=f"{url}/v1", api_key="none")
        for question in QUESTIONS:
            docs = store.similarity_search(question, k=3)
            passages = "\n\n".join(d.page_content for d in docs)
            messages = [
                {"role": "system", "content": "Answer from the passages."},
                {"role": "user", "content": f"Passages:\n{passages}\n\nQuestion: {question}"},
            ]
            out = client.chat.completions.create(
                model="smol", messages=messages, max_tokens=args.max_tokens, temperature=0
            )
            stats = out.model_extra["fusionrag"]
            print(f"Q: {question}\nA: {out.choices[0].message.content}")
            print(f"   {stats['chunks_reused']} of {stats['chunks_found']} chunks reused, "
                  f"{out.usage.prompt_tokens_details.cached_tokens} of {out.usage.prompt_tokens} prompt tokens cached, "
                  f"TTFT {stats['ttft_ms']:.0f} ms\n")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()

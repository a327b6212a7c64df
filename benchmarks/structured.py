"""Structured output through the three ways users ask for it, on 20 held-out prompts (bundled SmolLM2,
CPU, greedy): the official `openai` client's `chat.completions.parse(response_format=Person)` against a
`fusionrag serve` process on loopback, LangChain's `ChatFusionRAG.with_structured_output(Person)` and
LlamaIndex's `FusionRAGLLM.structured_predict(Person, ...)` in-process. Person is written as a user
writes it (no length bounds). Per client: how many answers came back as a Person, and how many have
the name and the age the prompt gave (the 135M model's extraction, not the grammar's doing).

    python benchmarks/structured.py [--prompts 20] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import start_server  # noqa: E402

from fusionrag_integrations import EngineConfig, FusionEngine, default_model_path  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
NAMES = ["Amara", "Bruno", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kenji", "Lucia",
         "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tamsin"]  # fmt: skip
JOBS = ["baker", "pilot", "nurse", "carpenter", "teacher", "chemist", "violinist", "farmer", "librarian", "surveyor"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Osaka", "Lima", "Krakow", "Tunis", "Quebec", "Perth", "Seville"]


class Person(BaseModel):
    name: str
    age: int


def prompts(n: int, seed: int = 20261207) -> list[tuple[str, str, int]]:
    """(text, name, age): short biographies none of the tests use."""
    rng = random.Random(seed)
    out = []
    for name in rng.sample(NAMES, n) if n <= len(NAMES) else [rng.choice(NAMES) for _ in range(n)]:
        age = rng.randint(19, 88)
        text = f"{name} is a {age}-year-old {rng.choice(JOBS)} who lives in {rng.choice(CITIES)}."
        out.append((f"{text} Extract the person's name and age.", name, age))
    return out


def score(results: list[object], cases: list[tuple[str, str, int]]) -> dict:
    pairs = [(r, name, age) for r, (_, name, age) in zip(results, cases) if isinstance(r, Person)]
    return {
        "prompts": len(cases),
        "person": len(pairs),
        "name_right": sum(r.name == name for r, name, _ in pairs),
        "age_right": sum(r.age == age for r, _, age in pairs),
        "failures": [repr(r)[:200] for r in results if not isinstance(r, Person)],
    }


def attempt(call) -> object:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - a failure to parse is what is counted
        return exc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(RESULTS / "structured_cpu.json"))
    args = parser.parse_args()
    cases = prompts(args.prompts)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        from llama_index.core.prompts import PromptTemplate
        from openai import OpenAI

        from fusionrag_integrations.langchain import ChatFusionRAG
        from fusionrag_integrations.llamaindex import FusionRAGLLM

        proc, port = start_server(Path(tmp) / "server", "--served-model-name", "smol")
        url = f"http://127.0.0.1:{port}"
        try:
            client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)

            def parse(text: str) -> object:
                messages = [{"role": "user", "content": text}]
                out = client.chat.completions.parse(model="smol", messages=messages, response_format=Person,
                                                    max_tokens=args.max_tokens, temperature=0)  # fmt: skip
                return out.choices[0].message.parsed

            rows["openai parse()"] = score([attempt(lambda t=t: parse(t)) for t, _, _ in cases], cases)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        engine = FusionEngine.from_pretrained(default_model_path(), config=EngineConfig(cache_dir=Path(tmp) / "lib"))
        chat = ChatFusionRAG(engine=engine, max_tokens=args.max_tokens, temperature=0.0)
        structured = chat.with_structured_output(Person)
        results = [attempt(lambda t=t: structured.invoke(t)) for t, _, _ in cases]
        rows["LangChain with_structured_output"] = score(results, cases)
        llm = FusionRAGLLM(engine=engine, max_tokens=args.max_tokens, temperature=0.0)
        template = PromptTemplate("{text}")
        results = [attempt(lambda t=t: llm.structured_predict(Person, template, text=t)) for t, _, _ in cases]
        rows["LlamaIndex structured_predict"] = score(results, cases)
    print("| client | prompts | a Person | name right | age right |\n| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['prompts']} | {row['person']} | {row['name_right']} | {row['age_right']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"max_tokens": args.max_tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
